"""MLflow tracking against a real local SQLite store, including many writers opening a new store at once."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from flexheads.tracking import EXPERIMENT_NOTES, Tracker, ensure_experiments, runs_url, tracking_uri

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

STEPS = 120


def _train_like(uri: str, name: str) -> str:
    tracker = Tracker.open(uri, "pose3d", name, tags={"task": "pose3d"}, params={"model.d_model": 64})
    for start in range(1, STEPS + 1, 25):  # one batch per logging interval, as the training loop does
        tracker.log_rows([{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(start, min(start + 25, STEPS + 1))])
    tracker.finish()
    return tracker.run_id


def test_parallel_writers_on_a_new_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    names = [f"run-{i}" for i in range(4)]
    with mp.get_context("spawn").Pool(len(names)) as pool:
        run_ids = pool.starmap(_train_like, [(uri, n) for n in names])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pose3d")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == names
    assert {r.info.run_id for r in runs} == set(run_ids)
    for run_id in run_ids:
        assert len(client.get_metric_history(run_id, "loss")) == STEPS
        assert client.get_run(run_id).info.status == "FINISHED"
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])


def test_experiments_are_created_once_with_local_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    first = ensure_experiments(uri, ["pose3d", "report"])
    assert ensure_experiments(uri, ["pose3d", "report"]) == first
    location = MlflowClient(uri).get_experiment(first["pose3d"]).artifact_location
    assert location == (tmp_path / "artifacts" / "pose3d").as_uri()


def test_experiments_carry_a_description_and_open_on_their_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("pose2d")  # made before descriptions existed
    client.create_experiment("cxr", tags={"mlflow.note.content": "my own words"})
    ids = ensure_experiments(uri, ["pose3d", "pose2d", "cxr"])
    assert ids["pose2d"] == old
    tags = {name: client.get_experiment(i).tags for name, i in ids.items()}
    assert tags["pose3d"]["mlflow.note.content"] == EXPERIMENT_NOTES["pose3d"]
    assert tags["pose2d"]["mlflow.note.content"] == EXPERIMENT_NOTES["pose2d"]  # added to the older experiment
    assert tags["cxr"]["mlflow.note.content"] == "my own words"  # a description edited in the UI is kept
    assert {t["mlflow.experimentKind"] for t in tags.values()} == {"custom_model_development"}


def test_runs_url_is_the_hash_route_of_the_runs_tab():
    assert runs_url("http://127.0.0.1:5000/", "3") == "http://127.0.0.1:5000/#/experiments/3/runs"


def test_environment_overrides_params(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri("http://tracking:5000") == "http://tracking:5000"
    assert tracking_uri(None).startswith("sqlite:///") and tracking_uri(None).endswith("mlruns/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    assert tracking_uri("http://tracking:5000") == "http://other:5000"


def test_a_run_left_running_by_a_dead_attempt_ends_killed_and_is_superseded(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    marker = tmp_path / "mlflow_run_id"
    dead = Tracker.open(uri, "pose3d", "pose3d-standard-noam-0", tags={}, params={}, marker=marker)
    assert marker.read_text() == dead.run_id  # the process dies here: no finish()

    resumed = Tracker.open(uri, "pose3d", "pose3d-standard-noam-0", tags={}, params={}, marker=marker, resume=True)
    assert resumed.run_id == dead.run_id  # a resumed checkpoint continues its run

    rerun = Tracker.open(uri, "pose3d", "pose3d-standard-noam-0", tags={}, params={}, marker=marker)
    client = MlflowClient(uri)
    assert client.get_run(dead.run_id).info.status == "KILLED"
    assert marker.read_text() == rerun.run_id
    rerun.finish()
    assert not marker.exists()
    assert client.get_run(rerun.run_id).info.status == "FINISHED"

    experiment = client.get_experiment_by_name("pose3d").experiment_id
    current = client.search_runs([experiment], filter_string="tags.superseded = 'false'")
    assert [r.info.run_id for r in current] == [rerun.run_id]
    assert client.get_run(dead.run_id).data.tags["superseded"] == "true"


def test_a_finished_run_is_not_killed_by_a_stale_marker(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    marker = tmp_path / "mlflow_run_id"
    done = Tracker.open(uri, "report", "report", tags={}, params={}, marker=marker)
    done.finish()
    marker.write_text(done.run_id)  # e.g. a marker restored by hand
    Tracker.open(uri, "report", "report", tags={}, params={}, marker=marker).finish()
    assert MlflowClient(uri).get_run(done.run_id).info.status == "FINISHED"


def test_leftovers_of_a_dead_attempt_beside_a_complete_result_are_cleared(tmp_path, monkeypatch):
    from pathlib import Path

    from flexheads.config import load_params
    from flexheads.stages import clear_abandoned_attempts

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    restored, in_progress = (tmp_path / "models" / run.name for run in params.runs()[:2])
    for folder in (restored, in_progress):
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"resume state")
        dead = Tracker.open(uri, "pose3d", folder.name, tags={}, params={}, marker=folder / "mlflow_run_id")
    for name in ("model.pt", "train.json"):  # e.g. restored by `dvc repro` from its run cache
        (restored / name).write_text("complete")

    assert clear_abandoned_attempts(params, tmp_path / "models") == [restored]
    assert sorted(p.name for p in restored.iterdir()) == ["model.pt", "train.json"]
    assert sorted(p.name for p in in_progress.iterdir()) == ["checkpoint.pt", "mlflow_run_id"]  # may still resume
    client = MlflowClient(uri)
    assert client.get_run(dead.run_id).info.status == "RUNNING"  # in_progress's run
    statuses = {r.info.run_name: r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("pose3d").experiment_id])}
    assert statuses == {restored.name: "KILLED", in_progress.name: "RUNNING"}


def test_a_server_that_cannot_be_reached_fails_within_seconds_with_one_line(monkeypatch):
    import os
    import socket
    import time

    from flexheads.tracking import SERVER_RETRIES, TrackingUnreachable

    for key in SERVER_RETRIES:  # a server's client sets them for its process: restored after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.perf_counter()
    with pytest.raises(TrackingUnreachable) as caught:
        ensure_experiments(uri, ["pose3d"])
    assert time.perf_counter() - started < 15  # a loaded machine; MLflow's own retries: over four minutes
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server {uri} did not answer ([Errno 111] Connection refused)")
    assert "\n" not in message
    assert {key: os.environ.get(key) for key in SERVER_RETRIES} == SERVER_RETRIES  # not the probe's (no retries)


def _evaluated_run(params, run, uri, root, *, params_hash=None) -> None:
    """A finished MLflow run of ``run`` and the files its train and evaluate stages would write under ``root``."""
    import json

    tracker = Tracker.open(uri, run.task, run.name, tags={"params_hash": params_hash or params.run_config(run).hash()},
                           params={})
    tracker.finish()
    (root / "models" / run.name).mkdir(parents=True)
    (root / "metrics" / run.name).mkdir(parents=True)
    (root / "models" / run.name / "train.json").write_text(json.dumps({"mlflow_run_id": tracker.run_id, "steps": 20}))
    (root / "metrics" / f"{run.name}.json").write_text(json.dumps({"run": run.name, "mpjpe": 41.5}))
    (root / "metrics" / run.name / "per_joint.csv").write_text("joint,mpjpe\nhip,12.0\n")


def test_the_report_from_tracking_takes_current_evaluated_runs_and_names_every_other(tmp_path, monkeypatch):
    from pathlib import Path

    import yaml

    from flexheads.config import Params
    from flexheads.report.from_tracking import MissingRuns, current_runs, download_inputs
    from flexheads.report.publish import log_evaluations

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["experiment"].update(tasks=["pose3d"], attention=["standard"], regimes=["noam", "radam", "preln"])
    raw["tracking"]["uri"] = uri
    params = Params.model_validate(raw)
    noam, radam, preln, baseline = params.all_runs()
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    _evaluated_run(params, noam, uri, here)
    _evaluated_run(params, radam, uri, elsewhere)  # evaluated on another machine that has not logged it
    _evaluated_run(params, baseline, uri, here, params_hash="other")

    assert log_evaluations(params, here / "metrics", here / "models", present_only=True) == [noam.name, baseline.name]
    with pytest.raises(MissingRuns) as caught:
        current_runs(params, uri)
    assert set(caught.value.problems) == {radam.name, preln.name, baseline.name}
    assert "has no evaluation logged" in caught.value.problems[radam.name]
    assert "no current run" in caught.value.problems[preln.name]
    assert "trained with other settings" in caught.value.problems[baseline.name]

    client = MlflowClient(uri)
    picked = {noam.name: client.get_run(json.loads((here / "models" / noam.name / "train.json").read_text())[
        "mlflow_run_id"])}
    metrics_dir, models_dir = download_inputs(uri, picked, tmp_path / "downloaded")
    for local, downloaded in [(here / "metrics", metrics_dir), (here / "models", models_dir)]:
        expected = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file() and noam.name in str(p))
        assert sorted(p.relative_to(downloaded) for p in downloaded.rglob("*") if p.is_file()) == expected
        assert all((downloaded / p).read_bytes() == (local / p).read_bytes() for p in expected)
