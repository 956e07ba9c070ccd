# One rule per DVC stage. The command goes through params (a `shell:` string set inside a loop would be bound
# late, to the last stage); after it the job marks its stage finished, and when Snakemake ends the finished stages
# are committed to dvc.lock, the record both doors share (common.smk, onsuccess/onerror).
for stage in STAGES:

    rule:
        name:
            stage.rule_name
        input:
            rule_inputs(stage),
        output:
            rule_outputs(stage),
        params:
            cmd=stage.cmd,
            finished=stage.finished,
        log:
            stage.log,
        benchmark:
            stage.benchmark
        threads: job_threads(stage)
        resources:
            gpu=gpu_claim(stage),
            **kind_resources(stage),
        conda:
            ENV
        shell:
            "{params.cmd} > {log} 2>&1 && touch {params.finished}"
