# Shared definitions: the experiment matrix from params.yaml (validated by flexheads.config) and input helpers.
import shutil
import subprocess

from flexheads.config import load_params

PARAMS = load_params("params.yaml")
RUNS = [run.name for run in PARAMS.all_runs()]  # the matrix, then the baselines
TASKS = list(PARAMS.experiment.tasks)
ENV = "../envs/flexheads.yaml"


def visible_gpus() -> int:
    """GPUs nvidia-smi lists (0 without a driver): each training claims one when there are any."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return sum(line.startswith("GPU ") for line in listing.splitlines())


GPUS_PER_TRAINING = 1 if visible_gpus() else 0


def task_of_run(run: str) -> str:
    return PARAMS.run(run).task


def prepared_h5(wildcards) -> str:
    return f"data/prepared/{task_of_run(wildcards.run)}.h5"


def prepared_stats(wildcards) -> str:
    return f"data/prepared/{task_of_run(wildcards.run)}.stats.json"


wildcard_constraints:
    task="|".join(TASKS),
    run="|".join(RUNS),


onstart:
    # Create the MLflow store and experiments once, before parallel trainings open it.
    shell("flexheads tracking-init")
