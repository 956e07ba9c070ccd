# flexheads pipeline for Snakemake: the same stages, commands and outputs as dvc.yaml
# (tests/test_orchestration.py checks both DAGs agree). Settings live in params.yaml.
#   snakemake --cores 8                 # run everything up to the report
#   snakemake --cores 8 --use-conda     # the same inside pipeline/envs/flexheads.yaml
#   snakemake -n                        # what would run
# After a Snakemake run, `dvc commit -f` records the outputs in dvc.lock so `dvc repro` agrees.

configfile: "params.yaml"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/report.smk"


rule all:
    input:
        "reports/tables",
        "reports/figures",
        "reports/index.html",
