rule download:
    output:
        directory("data/raw/{task}"),
    log:
        "logs/download/{task}.log",
    conda:
        ENV
    shell:
        "flexheads download {wildcards.task} --out {output} > {log} 2>&1"


rule prepare:
    input:
        "data/raw/{task}",
    output:
        h5="data/prepared/{task}.h5",
        stats="data/prepared/{task}.stats.json",
    log:
        "logs/prepare/{task}.log",
    conda:
        ENV
    shell:
        "flexheads prepare {wildcards.task} --raw {input} --out {output.h5} --stats {output.stats} > {log} 2>&1"
