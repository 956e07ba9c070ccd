"""The report as an MLflow run: experiment ``report``, the page, tables and figures as artifacts.

One run per ``flexheads report``, tagged with the params hash and git commit, so the MLflow UI holds the
report next to the train/evaluate runs it summarises.  The files under ``reports/`` stay the truth (the DAG's
outputs); the run is a copy for browsing.  ``mlflow`` is imported only when tracking is enabled (through
``flexheads.tracking``).
"""

from __future__ import annotations

from pathlib import Path

from flexheads.config import Params, rule_name
from flexheads.report.html import report_files

EXPERIMENT = "report"
RUN_ID_FILE = ".mlflow_run_id"  # in the report folder while the run is open; a killed report's run ends KILLED
ARTIFACT_FOLDERS = ("tables", "figures")  # logged under the same names; index.html goes to the root


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
