# One rule per DVC stage. The command goes through params (a `shell:` string set inside a loop would be bound
# late, to the last stage); after it, `dvc commit` records the stage in dvc.lock, the record both doors share.
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
            record=record_command(stage),
        log:
            stage.log,
        benchmark:
            stage.benchmark
        threads: job_threads(stage)
        resources:
            gpu=gpu_claim(stage),
        conda:
            ENV
        shell:
            "{params.cmd} > {log} 2>&1 && {params.record} >> {log} 2>&1"
