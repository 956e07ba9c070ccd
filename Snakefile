# flexheads pipeline for Snakemake. The DAG is dvc.yaml's: one rule per stage DVC resolves from it (same command,
# files and params scopes), and DVC's dvc.lock decides what is stale for both front doors (src/flexheads/dag.py).
#   snakemake --cores 8                 # run everything up to the report
#   snakemake --cores 8 --use-conda     # the same inside pipeline/envs/flexheads.yaml
#   snakemake -n                        # what would run: the stages `dvc status` lists and what follows them
#   snakemake --report report.html      # the tables and figures in Snakemake's report
# Settings live in params.yaml; `--config` is refused.


include: "pipeline/rules/common.smk"
include: "pipeline/rules/stages.smk"


report: "pipeline/report/workflow.rst"


rule all:
    default_target: True
    input:
        ALL_OUTPUTS,
