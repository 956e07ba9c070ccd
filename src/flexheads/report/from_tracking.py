"""The report's tables and summary from a tracking server's MLflow runs alone (``flexheads report --from-tracking``).

When several machines (or people) each run part of the matrix against one server, no filesystem holds every
run's files; the server does.  Each run's current MLflow run holds what the tables read of it
(:func:`flexheads.report.publish.log_evaluations`: ``evaluation/<run>.json``, ``evaluation/<table>`` and
``model/train.json``, hashed in the tag ``evaluation_sha256``).  This module picks, for every run of this
params.yaml's matrix, the one current run (``superseded=false``) of its name in its task's experiment, trained
with this params.yaml's settings (tag ``params_hash``), finished and evaluated; downloads those files into the
layout the stages write (``metrics/``, ``models/``), checks them against their hash, and builds the tables with
:func:`flexheads.report.tables.write_tables`, so they are the tables the file-based report makes of the same
files, byte for byte.  A run of the matrix without such an MLflow run stops the report with the list of every
such run and why: a table is never silently smaller.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flexheads.config import Params
from flexheads.errors import DataError
from flexheads.report import building
from flexheads.report.publish import EVALUATION_TAG, evaluation_digest, evaluation_files
from flexheads.report.tables import write_tables

PAGE = 1000  # runs per search request
PUSH_HINT = ("train and evaluate them against this server, then run `flexheads report --log-evaluations` where "
             "they were evaluated")


class MissingRuns(DataError):
    """Runs of the matrix the server has no usable MLflow run for; ``problems`` maps each run name to why."""

    def __init__(self, uri: str, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = [f"{name}: {why}" for name, why in problems.items()]
        super().__init__(f"the report needs every run of the matrix; {uri} lacks {len(problems)} ({PUSH_HINT}):\n  "
                         + "\n  ".join(lines))


def current_runs(params: Params, uri: str) -> dict[str, Any]:
    """Run name → the MLflow run (``mlflow.entities.Run``) behind it, for every run of the matrix and its baselines.

    Raises:
        MissingRuns: naming each run with no current MLflow run, several, one trained with other params than this
            params.yaml's (``params_hash``), one not FINISHED or one whose evaluation was never logged.
    """
    from flexheads.tracking import SUPERSEDED, mlflow_client

    client = mlflow_client(uri)
    found: dict[str, list[Any]] = {}
    for task in params.experiment.tasks:
        experiment = client.get_experiment_by_name(task)
        if experiment is not None:
            for run in _search(client, experiment.experiment_id, f"tags.{SUPERSEDED} = 'false'"):
                found.setdefault(run.info.run_name, []).append(run)
    picked, problems = {}, {}
    for run in params.all_runs():
        candidates = found.get(run.name, [])
        if len(candidates) != 1:
            problems[run.name] = (f"no current run in experiment {run.task}" if not candidates else
                                  f"{len(candidates)} current runs ({', '.join(r.info.run_id for r in candidates)}): "
                                  f"tag all but one {SUPERSEDED}=true")
            continue
        mlflow_run = candidates[0]
        tags, expected = mlflow_run.data.tags, params.run_config(run).hash()
        if tags.get("params_hash") != expected:
            problems[run.name] = (f"run {mlflow_run.info.run_id} was trained with other settings (params_hash "
                                  f"{tags.get('params_hash')}, this params.yaml's: {expected})")
        elif mlflow_run.info.status != "FINISHED":
            problems[run.name] = f"run {mlflow_run.info.run_id} is {mlflow_run.info.status}"
        elif EVALUATION_TAG not in tags:
            problems[run.name] = f"run {mlflow_run.info.run_id} has no evaluation logged"
        else:
            picked[run.name] = mlflow_run
    if problems:
        raise MissingRuns(uri, problems)
    return picked


def _search(client: Any, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of the experiment matching ``filter_string``, page by page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def download_inputs(uri: str, runs: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """The files the tables read of ``runs`` (from :func:`current_runs`), downloaded from the server into
    ``root/metrics/`` and ``root/models/`` as the stages write them; returns the two folders.

    Raises:
        DataError: naming every run whose downloaded files do not hash to its ``evaluation_sha256`` (an upload
            interrupted, or files changed after it).
    """
    from flexheads.tracking import mlflow_client

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two bars per run drown the output
    client = mlflow_client(uri)
    metrics_dir, models_dir, differ = root / "metrics", root / "models", []
    for name, mlflow_run in runs.items():
        run_id = mlflow_run.info.run_id
        (metrics_dir / name).mkdir(parents=True)
        (models_dir / name).mkdir(parents=True)
        evaluation = Path(client.download_artifacts(run_id, "evaluation", str(root / "download" / run_id)))
        for path in evaluation.iterdir():
            target = metrics_dir / path.name if path.name == f"{name}.json" else metrics_dir / name / path.name
            shutil.move(path, target)
        train_json = client.download_artifacts(run_id, "model/train.json", str(root / "download" / run_id))
        shutil.move(train_json, models_dir / name / "train.json")
        files = evaluation_files(metrics_dir / f"{name}.json", models_dir / name / "train.json")
        if not all(p.is_file() for p in files) or evaluation_digest(files) != mlflow_run.data.tags[EVALUATION_TAG]:
            differ.append(f"{name} (run {run_id})")
    shutil.rmtree(root / "download", ignore_errors=True)
    if differ:
        raise DataError(f"{uri}: the evaluation files of {', '.join(differ)} do not match their {EVALUATION_TAG} tag; "
                        "run `flexheads report --log-evaluations` where they were evaluated")
    return metrics_dir, models_dir


def write_tables_from_tracking(params: Params, uri: str, out: Path) -> tuple[list[Path], dict[str, Any]]:
    """Every table of :mod:`flexheads.report.tables` into ``<out>/tables/`` from the server's current runs alone;
    the new folder replaces the old one only once complete.  Returns the written paths and the MLflow runs used
    (run name → run)."""
    runs = current_runs(params, uri)
    with tempfile.TemporaryDirectory() as inputs, building(out, outputs=("tables",)) as build:
        metrics_dir, models_dir = download_inputs(uri, runs, Path(inputs))
        written = write_tables(params, metrics_dir, models_dir, build)
    return [out / p.relative_to(build) for p in written], runs


def commits_used(runs: dict[str, Any]) -> Counter[str]:
    """How many of ``runs`` each git commit (tag ``git_commit``) trained: one line tells a mixed matrix."""
    return Counter(run.data.tags.get("git_commit", "unknown") for run in runs.values())
