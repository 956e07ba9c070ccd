# The stages of dvc.yaml as DVC resolves them, DVC's verdict on which are stale, and what each rule claims.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.resources import Resource, Resources

from flexheads.config import load_params
from flexheads import warm
from flexheads.dag import is_folder, read_stages, record_finished, settle, stage_inputs, start_recording

if config:
    raise WorkflowError(
        f"--config / configfile values are not used ({', '.join(map(str, config))}): params.yaml is the single "
        "source of truth for both front doors. Edit params.yaml, or try a variation with "
        "`dvc exp run -S key=value`."
    )

PARAMS = load_params("params.yaml")  # validated up front: a typo fails here, naming the key
STAGES = read_stages(Path("."))
ALL_OUTPUTS = [path for stage in STAGES for path in stage.outs]
ENV = "../envs/flexheads.yaml"
RUNS_ON_GPU = ("train", "evaluate")  # stage kinds that use the GPU when there is one
WARM = []  # the warm server of this run (onstart), stopped when the run ends


def record(when: str) -> None:
    """Commit the stages Snakemake's jobs finished to dvc.lock, or say why not (dag.record_finished)."""
    dropped = record_finished(Path("."), STAGES)
    if dropped:
        print(f"flexheads ({when}): {dropped}", file=sys.stderr)


def stale_markers() -> dict:
    """Stage name → its marker: the main process records what a crashed run finished, then asks DVC (dag.settle);
    a job re-parsing the workflow only names them."""
    if workflow.is_main_process:
        record("stages finished before Snakemake last stopped")
        return settle(Path("."), STAGES)
    return {stage.name: stage.marker for stage in STAGES}


MARKERS = stale_markers()


def gpus_granted() -> int:
    """GPUs the run may use: `--resources gpu=N` or the profile's `resources:` (0 by default)."""
    return int(workflow.global_resources.get("gpu").value or 0)


def processes(stage) -> int:
    """Processes of a job: `train.<task>.processes` for a training (its outputs lie under models/<run>/), else 1."""
    if stage.kind != "train":
        return 1
    return PARAMS.run_config(PARAMS.run(Path(stage.outs[0]).parts[1])).train.processes


def gpu_claim(stage) -> int:
    """When the run has GPUs, a training claims one per process and an evaluation one, so jobs take turns."""
    return processes(stage) if stage.kind in RUNS_ON_GPU and gpus_granted() > 0 else 0


def kind_resources(stage) -> dict:
    """What the profile's `set-resources:` gives the stage's kind (`train:`, `evaluate:`, `prepare:`, `download:`,
    `report:`): rules are named per stage (`train__pose3d_standard_noam_0`), a profile sizes them per kind. Each value
    is evaluated as Snakemake evaluates `set-resources` for a rule it names (numbers, sizes, strings, expressions)."""
    given = Resources.from_mapping(workflow.resource_settings.overwrite_resources.get(stage.kind, {}))
    if "gpu" in given:
        raise WorkflowError(f"set-resources: {stage.kind}: gpu is not a profile setting: the pipeline claims GPUs "
                            "(train.<task>.processes per training, 1 per evaluation) once a run is granted some "
                            "with `--resources gpu=N`")
    return {name: profile_value(resource) for name, resource in given.items()}


def profile_value(resource: Resource):
    """A profile's resource as a rule's resource value: itself, or a function Snakemake calls for each job."""
    if not resource.is_evaluable():
        return resource.value

    def evaluated(wildcards, input, attempt, threads, rulename, async_run):
        return resource.evaluate(wildcards, input=input, attempt=attempt, threads=threads, rulename=rulename,
                                 async_run=async_run).value

    return evaluated


def job_threads(stage) -> int:
    """train/evaluate use `threads` CPU threads per process (params.yaml; their results depend on it bit for bit)."""
    return PARAMS.threads * processes(stage) if stage.kind in RUNS_ON_GPU else 1




def rule_inputs(stage) -> list:
    """DVC's dependencies and the stage's marker. Source dependencies (code links) are `ancient`: DVC's marker
    judges them by content; outputs of other stages order the jobs and pass reruns downstream."""
    inputs = [path if path in ALL_OUTPUTS else ancient(path) for path in stage_inputs(stage, STAGES)]
    return inputs + [MARKERS[stage.name]]


REPORTED = {  # the report stage's outputs in `snakemake --report`
    "reports/tables": dict(patterns=["{table}.csv"], category="Tables", caption="../report/tables.rst",
                           labels={"table": "{table}"}),
    "reports/figures": dict(patterns=["{figure}.png"], category="Figures", caption="../report/figures.rst",
                            labels={"figure": "{figure}"}),
    "reports/index.html": dict(category="Report page", caption="../report/index.rst"),
}


def rule_outputs(stage) -> list:
    """DVC's outputs; folders as `directory()`; the report's annotated for `snakemake --report`."""
    outputs = []
    for path in stage.outs:
        output = directory(path) if is_folder(path) else path
        outputs.append(report(output, **REPORTED[path]) if path in REPORTED else output)
    return outputs


onstart:
    # Stamp the sources the finished stages will be recorded against (dag.start_recording); create the MLflow store
    # and experiments once, before parallel trainings open it; then, when the jobs run on this machine, a warm
    # process that has imported torch and MLflow forks their `flexheads` commands (src/flexheads/warm.py). Not
    # under a cluster executor: a job on another node cannot reach the server's socket, and one on this node would
    # run its command in the server's process, outside the job's Slurm allocation.
    start_recording(Path("."), STAGES)
    shell("flexheads tracking-init")
    if workflow.local_exec:
        WARM.append(warm.start())


def end_of_run() -> None:
    try:
        record("end of run")
    finally:
        warm.stop(WARM.pop() if WARM else None)


onsuccess:
    end_of_run()


onerror:
    end_of_run()
