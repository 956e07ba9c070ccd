rule train:
    input:
        h5=prepared_h5,
    output:
        model="models/{run}/model.pt",
        history="models/{run}/history.csv",
        grads="models/{run}/grad_histograms.json",
        summary="models/{run}/train.json",
    params:
        out="models/{run}",
    log:
        "logs/train/{run}.log",
    threads: PARAMS.threads
    resources:
        gpu=GPUS_PER_TRAINING,
    conda:
        ENV
    shell:
        "flexheads train {wildcards.run} --data {input.h5} --out {params.out} > {log} 2>&1"


rule evaluate:
    input:
        h5=prepared_h5,
        stats=prepared_stats,
        model="models/{run}/model.pt",
        summary="models/{run}/train.json",
    output:
        metrics="metrics/{run}.json",
        tables=directory("metrics/{run}"),
    params:
        model_dir="models/{run}",
    log:
        "logs/evaluate/{run}.log",
    threads: PARAMS.threads
    conda:
        ENV
    shell:
        "flexheads evaluate {wildcards.run} --data {input.h5} --stats {input.stats} --model {params.model_dir}"
        " --out {output.metrics} > {log} 2>&1"

