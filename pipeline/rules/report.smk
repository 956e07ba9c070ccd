rule report:
    input:
        expand("metrics/{run}.json", run=RUNS),
        expand("metrics/{run}", run=RUNS),
        expand("models/{run}/{file}", run=RUNS, file=["train.json", "history.csv", "grad_histograms.json"]),
    output:
        directory("reports/tables"),
        directory("reports/figures"),
        "reports/index.html",
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "flexheads report --metrics-dir metrics --models-dir models --out reports > {log} 2>&1"
