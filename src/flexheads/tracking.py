"""MLflow as the record and the browser of every run (never the only copy of a number the DAG needs).

The default store is an embedded SQLite file, ``mlruns/mlflow.db``, with artifacts under
``mlruns/artifacts/``: no server.  ``tracking.uri`` in params.yaml or ``MLFLOW_TRACKING_URI`` switches to
a shared server.  Several training processes open the store at once under ``snakemake --cores N``;
creating a new SQLite store concurrently crashes in MLflow's schema migration, so store and experiments
are created under a file lock before anything else touches them, and runs are created with an explicit
``experiment_id`` (no ``set_experiment`` race).  Metrics go in batches, one call per logging interval.

A tracking server (``http://``/``https://``) is asked once per process, with one short request, whether it answers
(:func:`check_server`): a training or ``flexheads tracking-init`` that cannot reach it stops within seconds with
one line naming the URI and what to check, instead of MLflow's default of retrying for minutes.  Later calls retry
a few times (``SERVER_RETRIES``, ~30 s; each ``MLFLOW_HTTP_REQUEST_*`` variable set in the environment wins), so a
server that restarts briefly costs nothing and one that is gone fails the stage with the same kind of line
(:class:`TrackingUnreachable`).  Nothing is buffered for later: a run that cannot be recorded fails, and its
checkpoint resumes it (and its MLflow run) once the server is back.

Runs carry MLflow's standard source tags (``source_tags``) and experiments a one-line description
(``EXPERIMENT_NOTES``), so the UI shows what each is.  ``mlflow`` is imported only here, and only when tracking
is enabled, so a bare GPU training step runs without it (``tracking.enabled: false``).
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

from flexheads.errors import UserError
from flexheads.io import write_text

STORE_DIR = Path("mlruns")
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS = 100  # ... and of params per call
MAX_SEARCH = 1000  # earlier runs of one name looked at when a new one supersedes them
SUPERSEDED = "superseded"  # run tag: "true" once a later run of the same name has started
EXPERIMENT_NOTES = {  # MLflow's experiment description (tag mlflow.note.content), set when the experiment is made
    "pose3d": "3D human pose lifting (Human3.6M layout): one run per attention × regime × seed",
    "pose2d": "2D human pose estimation (COCO person keypoints): one run per attention × regime × seed",
    "cxr": "Chest X-ray findings (ChestX-ray14 + COVID-19): one run per attention × regime × seed",
    "report": "The comparison report (tables, figures, index.html): one run per `flexheads report`",
}
SERVER_SCHEMES = ("http://", "https://")
PROBE_TIMEOUT_S = 10  # the first request to a server: how long a server that drops packets keeps a stage waiting
SERVER_RETRIES = {  # every later request: retries 0 + 2 + 4 + 8 + 16 s apart (urllib3), then the stage fails
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",  # MLflow's default, 7 with factor 2, retries for over four minutes
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",  # per request; an upload of model.pt under load needs more than a few s
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


class TrackingUnreachable(UserError):
    """The tracking server did not answer; the message names its URI and what to check."""


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (HTTP) rather than a local store."""
    return uri.startswith(SERVER_SCHEMES)


@functools.cache  # once per process and server: a server that answered once is not asked again
def check_server(uri: str) -> None:
    """Raise :class:`TrackingUnreachable` unless the server at ``uri`` answers one request within
    ``PROBE_TIMEOUT_S`` seconds, without retries, with the credentials of ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``) if set."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_S)}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)  # MLflow reads them at each request; the client takes no per-call setting
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as err:
        raise TrackingUnreachable(_unreachable(uri, err)) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _unreachable(uri: str, err: Exception) -> str:
    """One line: the server, why it did not answer, what to check."""
    text = str(err.__cause__ or err.__context__ or err)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        why = errno.group(0)
    elif re.search(r"time(d )?out", text, re.IGNORECASE):
        why = "timed out"
    elif re.search(r"\b40[13]\b", text):
        why = "refused the credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    else:
        why = " ".join(text.split())[:200]
    return (f"MLflow tracking server {uri} did not answer ({why}); check that it runs "
            "(pipeline/cluster/mlflow-server.sh status <folder>), params.yaml's tracking.uri or MLFLOW_TRACKING_URI, "
            "and the network or SSH tunnel to it")


class _ServerClient:
    """An ``MlflowClient`` of a tracking server whose calls that cannot reach it (connection refused or reset,
    timeouts, a proxy's 5xx after the retries) raise :class:`TrackingUnreachable` instead of a traceback."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self._uri = uri
        self._client = MlflowClient(tracking_uri=uri)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            import requests
            from mlflow.exceptions import MlflowException

            try:
                return attribute(*args, **kwargs)
            except MlflowException as err:
                if isinstance(err.__cause__ or err.__context__, requests.exceptions.RequestException):
                    raise TrackingUnreachable(_unreachable(self._uri, err)) from None
                raise

        return call


class Tracker:
    """A thin wrapper over ``MlflowClient`` for one run; create with ``Tracker.open`` or ``Tracker.resume``.

    A run opened with a ``marker`` file keeps its id there until :meth:`finish`: a marker left behind means the
    process died with the run RUNNING, and the next attempt of the same stage ends it (:meth:`open`).
    """

    def __init__(self, client: Any, run_id: str, marker: Path | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.marker = marker

    @classmethod
    def open(
        cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any], *,
        marker: Path | None = None, resume: bool = False,
    ) -> Tracker:
        """The MLflow run of one attempt of a stage.

        With ``resume`` and a ``marker``, the run named there continues (a training resumed from its checkpoint).
        Otherwise the marker's run, left RUNNING by an attempt that died, ends KILLED; a new run starts with
        ``tags`` and ``params``, tagged ``superseded=false``, and every earlier run of the same name in the
        experiment is tagged ``superseded=true`` (the UI's filter ``tags.superseded = 'false'`` shows the runs
        behind the current files); its id goes into ``marker``.
        """
        if marker is not None and marker.exists():
            run_id = marker.read_text().strip()
            if resume:
                tracker = cls(mlflow_client(uri), run_id, marker)
                tracker.client.update_run(run_id, status="RUNNING")
                return tracker
            end_if_running(uri, run_id, "KILLED")
            marker.unlink()
        experiment_id = ensure_experiments(uri, [experiment])[experiment]  # first: creates the store under a lock
        client = mlflow_client(uri)
        run = client.create_run(experiment_id, run_name=run_name, tags={**tags, SUPERSEDED: "false"})
        tracker = cls(client, run.info.run_id, marker)
        if marker is not None:
            write_text(marker, tracker.run_id)
        tracker.log_params(params)
        _supersede(client, experiment_id, run_name, keep=tracker.run_id)
        return tracker

    @classmethod
    def resume(cls, uri: str, run_id: str) -> Tracker:
        """A handle on an existing run (evaluation adds its test metrics to the training's run)."""
        return cls(mlflow_client(uri), run_id)

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

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED) and drop its marker."""
        self.client.set_terminated(self.run_id, status=status)
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)


def end_if_running(uri: str, run_id: str, status: str) -> None:
    """End run ``run_id`` with ``status`` if it is still RUNNING (its process died); a deleted run is left alone."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:  # removed from the store since
        return
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status=status)


def _supersede(client: Any, experiment_id: str, run_name: str, keep: str) -> None:
    """Tag every run named ``run_name`` in the experiment except ``keep`` as superseded."""
    from mlflow.entities import RunTag

    for run in client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                                  max_results=MAX_SEARCH):
        if run.info.run_id != keep and run.data.tags.get(SUPERSEDED) != "true":
            client.log_batch(run.info.run_id, tags=[RunTag(SUPERSEDED, "true")])


def ensure_experiments(uri: str, names: Iterable[str]) -> dict[str, str]:
    """Create the store (local SQLite) and the named experiments once, under a file lock; return their ids.

    Each experiment gets its ``EXPERIMENT_NOTES`` description and ``EXPERIMENT_KIND``; an experiment made
    before either existed gets the missing tags (a description edited in the UI is kept).
    """
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE  # also the key of an experiment's description

    ids: dict[str, str] = {}
    with _store_lock(uri):
        client = mlflow_client(uri)
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


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; for a server, one that answered :func:`check_server` and whose failures to
    reach it raise :class:`TrackingUnreachable` after ``SERVER_RETRIES``."""
    if not is_server(uri):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)
    for key, value in SERVER_RETRIES.items():
        os.environ.setdefault(key, value)
    check_server(uri)
    return _ServerClient(uri)


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
