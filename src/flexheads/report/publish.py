"""The report as an MLflow run: experiment ``report``, the page, tables and figures as artifacts; and each
evaluation's test metrics and files added to its training's run.

One run per ``flexheads report``, tagged with the params hash and git commit, so the MLflow UI holds the
report next to the train/evaluate runs it summarises.  The files under ``reports/`` stay the truth (the DAG's
outputs); the run is a copy for browsing.  ``mlflow`` is imported only when tracking is enabled (through
``flexheads.tracking``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flexheads.config import Params, rule_name
from flexheads.io import read_json
from flexheads.report.html import report_files

EXPERIMENT = "report"
RUN_ID_FILE = ".mlflow_run_id"  # in the report folder while the run is open; a killed report's run ends KILLED
ARTIFACT_FOLDERS = ("tables", "figures")  # logged under the same names; index.html goes to the root
EVALUATION_TAG = "evaluation_sha256"  # on a training's run: the evaluation files already logged into it


def evaluation_files(metrics_json: Path, train_json: Path) -> list[Path]:
    """What the report's tables read of one run, in the order :func:`evaluation_digest` hashes them:
    ``metrics/<run>.json``, the files of ``metrics/<run>/`` by name, ``models/<run>/train.json``."""
    tables = sorted(p for p in metrics_json.with_suffix("").glob("*") if p.is_file())
    return [metrics_json, *tables, train_json]


def evaluation_digest(files: list[Path]) -> str:
    """SHA-256 over each file's name and bytes (the tag ``evaluation_sha256``)."""
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def log_evaluations(params: Params, metrics_dir: Path, models_dir: Path, *, present_only: bool = False) -> list[str]:
    """Add each run's test metrics and evaluation files to the MLflow run of its training; returns the run names
    logged now.

    The training's run (``mlflow_run_id`` of ``models/<run>/train.json``) gains metrics ``test_<key>`` for every
    number of ``metrics/<run>.json`` at the run's last step, and artifacts ``evaluation/<run>.json`` and
    ``evaluation/<table>`` for the files of ``metrics/<run>/``, and ``model/train.json``: with them the run holds
    everything the report's tables read of it (``flexheads report --from-tracking``).  Done once per evaluation:
    the run's tag ``evaluation_sha256`` (:func:`evaluation_digest`) holds the hash of the files logged, set once all
    are uploaded, and a run whose tag matches is skipped.  MLflow starts once, in this process, instead of in every
    evaluation process (its start-up costs a process ~4 CPU-seconds).  ``present_only``: runs without both JSON
    files here are skipped (a machine that ran part of the matrix); otherwise a missing file raises ``DataError``.
    Nothing is logged, and mlflow is not imported, when tracking is disabled.
    """
    if not params.tracking.enabled:
        return []
    from flexheads.tracking import Tracker, tracking_uri

    uri, logged = tracking_uri(params.tracking.uri), []
    for run in params.all_runs():
        train_json, metrics_json = models_dir / run.name / "train.json", metrics_dir / f"{run.name}.json"
        if present_only and not (train_json.is_file() and metrics_json.is_file()):
            continue
        trained = read_json(train_json)
        if not trained.get("mlflow_run_id"):
            continue
        files = evaluation_files(metrics_json, train_json)
        digest = evaluation_digest(files)
        tracker = Tracker.resume(uri, trained["mlflow_run_id"])
        if tracker.client.get_run(tracker.run_id).data.tags.get(EVALUATION_TAG) == digest:
            continue
        headline = read_json(metrics_json)
        tracker.log_metrics({f"test_{key}": value for key, value in headline.items()
                             if isinstance(value, (int, float)) and not isinstance(value, bool)}, step=trained["steps"])
        for path in files:
            tracker.log_artifact(path, "model" if path == train_json else "evaluation")
        tracker.client.set_tag(tracker.run_id, EVALUATION_TAG, digest)
        logged.append(run.name)
    return logged


def publish_report(params: Params, out_dir: Path) -> str | None:
    """Log ``<out_dir>/tables/*``, ``<out_dir>/figures/*`` and ``<out_dir>/index.html`` as one MLflow run.

    Tags: MLflow's source tags, ``params_hash``, ``git_commit``, ``tasks`` (comma-separated), ``dvc_stage`` and
    ``snakemake_rule``; params: ``runs.<task>``, the number of runs (matrix cells and baselines) the report compares
    for each task.  The run of a report killed mid-upload ends KILLED when the next report starts, and earlier
    report runs are tagged ``superseded``.

    Returns:
        The run id, or None when ``tracking.enabled`` is false (nothing is logged, mlflow is not imported).
    """
    if not params.tracking.enabled:
        return None
    from flexheads.tracking import Tracker, git_commit, source_tags, tracking_uri

    tags = {
        **source_tags("flexheads report"),
        "params_hash": params.hash(),
        "git_commit": git_commit(),
        "tasks": ",".join(params.experiment.tasks),
        "dvc_stage": "report",
        "snakemake_rule": rule_name("report"),
    }
    runs = params.all_runs()
    counts = {f"runs.{task}": sum(r.task == task for r in runs) for task in params.experiment.tasks}
    tracker = Tracker.open(tracking_uri(params.tracking.uri), EXPERIMENT, "report", tags=tags, params=counts,
                           marker=out_dir / RUN_ID_FILE)
    try:
        for folder in ARTIFACT_FOLDERS:
            for path in report_files(out_dir / folder):
                tracker.log_artifact(path, folder)
        index = out_dir / "index.html"
        if index.exists():
            tracker.log_artifact(index)
    except BaseException as err:
        tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    tracker.finish()
    return tracker.run_id
