rule report:
    input:
        expand("metrics/{run}.json", run=RUNS),
        expand("models/{run}/train.json", run=RUNS),
    output:
        directory("reports/tables"),
        directory("reports/figures"),
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "flexheads report --metrics-dir metrics --models-dir models --out reports > {log} 2>&1"
