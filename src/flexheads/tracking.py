"""MLflow as the record and the browser of every run (never the only copy of a number the DAG needs).

The default store is an embedded SQLite file, ``mlruns/mlflow.db``, with artifacts under
``mlruns/artifacts/``: no server.  ``tracking.uri`` in params.yaml or ``MLFLOW_TRACKING_URI`` switches to
a shared server.  Several training processes open the store at once under ``snakemake --cores N``;
creating a new SQLite store concurrently crashes in MLflow's schema migration, so store and experiments
are created under a file lock before anything else touches them, and runs are created with an explicit
``experiment_id`` (no ``set_experiment`` race).  Metrics go in batches, one call per logging interval.

Runs carry MLflow's standard source tags (``source_tags``) and experiments a one-line description
(``EXPERIMENT_NOTES``), so the UI shows what each is.  ``mlflow`` is imported only here, and only when tracking
is enabled, so a bare GPU training step runs without it (``tracking.enabled: false``).
"""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

STORE_DIR = Path("mlruns")
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS = 100  # ... and of params per call
EXPERIMENT_NOTES = {  # MLflow's experiment description (tag mlflow.note.content), set when the experiment is made
    "pose3d": "3D human pose lifting (Human3.6M layout): one run per attention × regime × seed",
    "pose2d": "2D human pose estimation (COCO person keypoints): one run per attention × regime × seed",
    "cxr": "Chest X-ray findings (ChestX-ray14 + COVID-19): one run per attention × regime × seed",
    "report": "The comparison report (tables, figures, index.html): one run per `flexheads report`",
}
# MLflow 3's UI asks for (or guesses) the kind of an experiment without one; this kind opens it on its runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else params' ``tracking.uri``, else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def git_commit() -> str:
    """The current commit hash (with ``-dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def source_tags(command: str) -> dict[str, str]:
    """MLflow's standard run tags: the command that made the run, ``LOCAL``, the user and the git commit (the
    latter two left out when unknown)."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    tags = {MLFLOW_SOURCE_NAME: command, MLFLOW_SOURCE_TYPE: "LOCAL"}
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        pass
    commit = git_commit().removesuffix("-dirty")  # the UI links a bare hash; the git_commit tag keeps -dirty
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def runs_url(ui: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI at ``ui`` (e.g. ``http://127.0.0.1:5000``).

    MLflow 3's UI is a hash-routed single page app; ``/experiments/:experimentId/runs`` is its runs tab, whatever
    the experiment's kind (a bare experiment page may open on a GenAI overview that shows no runs).
    """
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"


class Tracker:
    """A thin wrapper over ``MlflowClient`` for one run; create with ``Tracker.start`` or ``Tracker.resume``."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> Tracker:
        experiment_id = ensure_experiments(uri, [experiment])[experiment]  # first: creates the store under a lock
        client = _client(uri)
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        tracker = cls(client, run.info.run_id)
        tracker.log_params(params)
        return tracker

    @classmethod
    def resume(cls, uri: str, run_id: str) -> Tracker:
        return cls(_client(uri), run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS])

    def log_rows(self, rows: Iterable[Mapping[str, float]], step_key: str = "step") -> None:
        """Log per-step rows ``{"step": 10, "loss": ..., "lr": ...}`` in as few calls as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(row[step_key]))
            for row in rows
            for key, value in row.items()
            if key != step_key
        ]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_rows([{"step": step, **metrics}])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def ensure_experiments(uri: str, names: Iterable[str]) -> dict[str, str]:
    """Create the store (local SQLite) and the named experiments once, under a file lock; return their ids.

    Each experiment gets its ``EXPERIMENT_NOTES`` description and ``EXPERIMENT_KIND``; an experiment made
    before either existed gets the missing tags (a description edited in the UI is kept).
    """
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE  # also the key of an experiment's description

    ids: dict[str, str] = {}
    with _store_lock(uri):
        client = _client(uri)
        for name in names:
            note = {MLFLOW_RUN_NOTE: EXPERIMENT_NOTES[name]} if name in EXPERIMENT_NOTES else {}
            tags = {**EXPERIMENT_KIND, **note}
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                ids[name] = client.create_experiment(name, artifact_location=_artifact_location(uri, name), tags=tags)
                continue
            ids[name] = experiment.experiment_id
            for key, value in tags.items():
                if key not in experiment.tags:
                    client.set_experiment_tag(experiment.experiment_id, key, value)
    return ids


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` store, None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _store_lock(uri: str) -> FileLock:
    db = _sqlite_file(uri)
    if db is None:
        return FileLock(str(Path.home() / ".flexheads-mlflow.lock"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock")


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Local stores keep artifacts beside the database; a server decides for itself (None)."""
    db = _sqlite_file(uri)
    return (db.parent / "artifacts" / experiment).resolve().as_uri() if db else None
