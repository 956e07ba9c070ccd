"""``flexheads``: the command line over the library; Snakemake rules and DVC stages call these commands.

Every path is an option, so the orchestrators name inputs and outputs in one place.  A user's mistake
(bad params.yaml, missing or malformed data, a diverged training) ends with a one-paragraph message and exit
code 2, not a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import typer

from flexheads.errors import DataError, UserError

app = typer.Typer(help="flexheads: data → prepare → train → evaluate → report for the flexible-heads study.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="The params.yaml to read.")
DeviceOption = typer.Option("auto", help="auto (CUDA when present), cpu or cuda.")
RUN_HELP = ("Run name <task>-<attention>-<regime>-<seed>, e.g. pose3d-flexible-preln-0, or a baseline "
            "<task>-<baseline> (see `flexheads runs`).")


def load_params(path: Path) -> Any:
    """``flexheads.config.load_params(path)``, imported on first use: `flexheads --help` needs no schema."""
    from flexheads.config import load_params as load

    return load(path)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report a user's mistake or a data problem (params, missing/malformed/corrupt files, failed downloads, a
    diverged training, a model of another run) as one message and exit code 2; a bug keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def runs(params: Path = ParamsOption) -> None:
    """List the runs of the experiment matrix (<task>-<attention>-<regime>-<seed>), then the baselines
    (<task>-<baseline>), one per line."""
    for run in load_params(params).all_runs():
        typer.echo(run.name)


@app.command()
@user_errors
def download(
    task: str = typer.Argument(..., help="Task whose dataset to fetch or generate, e.g. pose3d."),
    params: Path = ParamsOption,
    out: Path = typer.Option(..., help="Folder for the raw files, e.g. data/raw/pose3d."),
) -> None:
    """Fetch (real data, checksummed) or generate (synthetic default) a task's raw dataset."""
    from flexheads.tasks import get_task

    data = load_params(params).task_data(task)
    files = get_task(task).download(data, out)
    for kind, path in files.items():
        typer.echo(f"{kind}: {path}")


@app.command()
@user_errors
def prepare(
    task: str = typer.Argument(..., help="Task to prepare, e.g. pose3d."),
    params: Path = ParamsOption,
    raw: Path = typer.Option(..., help="Folder written by `flexheads download`."),
    out: Path = typer.Option(..., help="Prepared HDF5 file, e.g. data/prepared/pose3d.h5."),
    stats: Path = typer.Option(..., help="JSON sidecar of statistics, e.g. data/prepared/pose3d.stats.json."),
) -> None:
    """Normalise a raw dataset into one HDF5 file with train/test splits and a statistics sidecar."""
    from flexheads.tasks import get_task

    data = load_params(params).task_data(task)
    summary = get_task(task).prepare(data, raw, out, stats)
    for split, info in summary["splits"].items():
        typer.echo(f"{split}: {info['rows']} rows")


@app.command()
@user_errors
def train(
    run: str = typer.Argument(..., help=RUN_HELP),
    params: Path = ParamsOption,
    data: Path = typer.Option(..., help="Prepared HDF5 file of the run's task."),
    out: Path = typer.Option(..., help="Run folder, e.g. models/<run>."),
    device: str = DeviceOption,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train one run (resuming from its checkpoint if interrupted); logs to MLflow.  With
    ``train.<task>.processes: N > 1`` it runs as N data-parallel processes under torchrun."""
    from flexheads.distributed import relaunch
    from flexheads.stages import train_run

    loaded = load_params(params)
    relaunch(loaded.run_config(loaded.run(run)).train.processes)  # returns at once in torchrun's processes
    summary = train_run(loaded, run, data, out, device=device, progress=progress)
    if summary is None:  # a rank other than 0: rank 0 reports
        return
    typer.echo(f"{run}: final loss {summary['final_loss']:.4f} after {summary['steps']} steps "
               f"in {summary['wall_time_s']:.1f} s ({summary['n_params']} parameters)")


@app.command()
@user_errors
def evaluate(
    run: str = typer.Argument(..., help=RUN_HELP),
    params: Path = ParamsOption,
    data: Path = typer.Option(..., help="Prepared HDF5 file of the run's task."),
    stats: Path = typer.Option(..., help="Statistics sidecar written by prepare."),
    model: Path = typer.Option(..., help="Run folder written by train."),
    out: Path = typer.Option(..., help="Metrics JSON, e.g. metrics/<run>.json; tables go beside it."),
    device: str = DeviceOption,
) -> None:
    """Evaluate a trained run on the test split: metrics JSON + per-action/per-joint tables."""
    from flexheads.stages import evaluate_run

    metrics = evaluate_run(load_params(params), run, data, stats, model, out, device=device)
    typer.echo(f"{run}: {metrics['main_metric']} = {metrics[metrics['main_metric']]}")


@app.command()
@user_errors
def report(
    params: Path = ParamsOption,
    metrics_dir: Path = typer.Option(Path("metrics"), help="Folder of evaluate outputs."),
    models_dir: Path = typer.Option(Path("models"), help="Folder of train outputs."),
    out: Path | None = typer.Option(None, help="Report folder (tables/ and figures/ inside); default reports, with "
                                                "--from-tracking reports-from-tracking (never the DAG's reports/ "
                                                "unless named)."),
    from_tracking: bool = typer.Option(False, "--from-tracking", help="Build the tables and summary from the "
                                       "tracking server's current MLflow runs of this params.yaml's matrix alone "
                                       "(no metrics/ or models/ needed) into <out>/tables."),
    log_evaluations_only: bool = typer.Option(False, "--log-evaluations", help="Only add the test metrics and "
                                              "evaluation files of the runs evaluated here to their MLflow runs "
                                              "(a machine that ran part of the matrix); build nothing."),
) -> None:
    """Build the comparison tables, figures and index.html from the outputs of every run in the matrix, then log
    them as a run of the MLflow experiment `report` (unless tracking is disabled).  --from-tracking builds the
    tables alone from the tracking server; --log-evaluations only sends this machine's evaluations to it."""
    from flexheads.report.publish import log_evaluations

    p = load_params(params)
    if from_tracking or log_evaluations_only:
        if from_tracking and log_evaluations_only:
            raise UserError("--from-tracking reads the tracking server and --log-evaluations writes it: pass one")
        if not p.tracking.enabled:
            raise UserError(f"{params}: tracking.enabled is false; --from-tracking and --log-evaluations need it")
    if log_evaluations_only:
        logged = log_evaluations(p, metrics_dir, models_dir, present_only=True)
        typer.echo(f"MLflow: test metrics and evaluation files added to the training runs of {len(logged)} run(s)"
                   + (f": {', '.join(logged)}" if logged else " (all evaluations here were logged already)"))
        return
    if from_tracking:
        from flexheads.report.from_tracking import commits_used, write_tables_from_tracking
        from flexheads.tracking import tracking_uri

        uri = tracking_uri(p.tracking.uri)
        written, runs = write_tables_from_tracking(p, uri, out or Path("reports-from-tracking"))
        for path in written:
            typer.echo(str(path))
        commits = ", ".join(f"{commit} ({n})" for commit, n in commits_used(runs).most_common())
        typer.echo(f"from {len(runs)} current MLflow runs of {uri}, trained at git commit {commits}")
        return
    from flexheads.report import building
    from flexheads.report.figures import write_dvc_plots, write_figures
    from flexheads.report.html import write_index
    from flexheads.report.publish import publish_report
    from flexheads.report.tables import write_tables
    from flexheads.stages import clear_abandoned_attempts

    out = out or Path("reports")
    for folder in clear_abandoned_attempts(p, models_dir):
        typer.echo(f"{folder}: removed the checkpoint and MLflow run id of a training attempt that died", err=True)
    with building(out) as build:  # swapped into out only once complete: a failed report keeps the old one
        written = [*write_tables(p, metrics_dir, models_dir, build), *write_figures(p, metrics_dir, models_dir, build),
                   *write_dvc_plots(p, build / "figures", build / "plots"), write_index(p, params, build)]
    for path in written:
        typer.echo(str(out / path.relative_to(build)))
    logged = log_evaluations(p, metrics_dir, models_dir)
    if logged:
        typer.echo(f"MLflow: test metrics and evaluation files added to the training runs of {len(logged)} run(s)")
    run_id = publish_report(p, out)
    if run_id is not None:
        typer.echo(f"MLflow run {run_id} (experiment report)")


@app.command()
@user_errors
def compare(
    params: Path = ParamsOption,
    metrics_dir: Path = typer.Option(Path("metrics"), help="Folder of evaluate outputs (<run>.json, <run>/)."),
) -> None:
    """Print the summary per task and regime (main metric of each head configuration, their differences with 95%
    bootstrap intervals, each regime against the best) as a Markdown table, from the matrix's evaluation files
    alone (metrics/<run>.json and metrics/<run>/samples.npz)."""
    from flexheads.report.inputs import MissingInputs
    from flexheads.report.tables import summary_markdown

    try:
        typer.echo(summary_markdown(load_params(params), metrics_dir), nl=False)
    except MissingInputs as err:
        raise DataError("missing metrics files (run `flexheads evaluate` for them first): "
                        + ", ".join(str(path) for path in err.missing)) from None


@app.command()
@user_errors
def bench(
    params: Path = ParamsOption,
    thesis_params: Path = typer.Option(Path("params/thesis.yaml"), help="The params of the thesis size."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda (bf16 autocast)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer rounds and tiny data; on CPU small thesis-size "
                                                       "batches and no torch.compile (a couple of minutes)."),
    out: Path = typer.Option(Path("reports/bench"), help="Folder of <device>.json and <device>.md."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads; 0: every core this process may use."),
) -> None:
    """Time training steps side by side: every task's model at params.yaml's size and a thesis size with standard
    and flexible heads, the ViT against timm's, flexible heads at equal attention FLOPs, the data stall of the real
    input pipeline, eager against torch.compile; writes <out>/<device>.json and .md."""
    from flexheads.bench import run_bench

    result = run_bench(load_params(params), load_params(thesis_params), device=device, quick=quick, out=out,
                       threads=threads or None, progress=lambda line: typer.echo(line, err=True))
    device_type = result["environment"]["device"]
    for task, sizes in result["tasks"].items():
        for size, group in sizes.items():
            ratios = ", ".join(f"{key} {value:.2f}" for key, value in group.items() if key.endswith("_ratio"))
            typer.echo(f"{task} {size}: standard {group['throughput']['standard']['samples_per_s']:.1f} samples/s, "
                       f"{ratios}, data_stall_fraction {group['data']['data_stall_fraction']:.3f}")
    typer.echo(f"{out / device_type}.json, {out / device_type}.md ({result['wall_time_s']:.0f} s)")


@app.command("tracking-init")
@user_errors
def tracking_init(params: Path = ParamsOption) -> None:
    """Create the MLflow store and one experiment per task before parallel jobs start."""
    from flexheads.tracking import ensure_experiments, tracking_uri

    p = load_params(params)
    if not p.tracking.enabled:
        typer.echo("tracking disabled in params.yaml (tracking.enabled: false)")
        return
    uri = tracking_uri(p.tracking.uri)
    ids = ensure_experiments(uri, [*p.experiment.tasks, "report"])
    typer.echo(f"{uri}: " + ", ".join(f"{name}={i}" for name, i in ids.items()))


@app.command()
@user_errors
def ui(
    params: Path = ParamsOption,
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the UI to your network."),
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
) -> None:
    """Open the MLflow UI on the project's tracking store (http://127.0.0.1:5000 by default), after printing the
    link to each experiment's runs table; a tracking server is its own UI: only the links are printed."""
    from flexheads.tracking import ensure_experiments, is_server, runs_url, tracking_uri

    p = load_params(params)
    uri = tracking_uri(p.tracking.uri)
    address = uri if is_server(uri) else f"http://{host}:{port}"
    typer.echo(f"MLflow UI for {uri} at {address}; the runs of each experiment:")
    for name, experiment_id in ensure_experiments(uri, [*p.experiment.tasks, "report"]).items():
        typer.echo(f"  {name}: {runs_url(address, experiment_id)}")
    if is_server(uri):
        return
    sys.exit(subprocess.call(["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]))


@app.command("code-deps")
def code_deps(
    check: bool = typer.Option(False, "--check", help="Only report folders that do not match the imports (exit 1)."),
    project: Path = typer.Option(Path("."), help="Project root (holds pipeline/code and src/flexheads)."),
) -> None:
    """Rewrite pipeline/code/<stage>-<task>/: links to the flexheads modules each stage loads (its dvc.yaml deps)."""
    from flexheads.code_deps import stale_code_dirs, write_code_dirs

    if check:
        problems = stale_code_dirs(project)
        for folder, problem in problems.items():
            typer.secho(f"{folder}: {problem}", fg=typer.colors.RED, err=True)
        if problems:
            typer.echo("run `flexheads code-deps` to rewrite them", err=True)
            raise typer.Exit(1)
        return
    for folder in write_code_dirs(project):
        typer.echo(str(folder))


if __name__ == "__main__":
    app()
