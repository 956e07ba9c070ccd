"""A shared MLflow tracking server on PostgreSQL (pipeline/cluster/mlflow-server.sh), as a research group runs it:
the tiny DAG with 8 parallel jobs records every run and every metric row there, its artifacts are served over
HTTP, `flexheads report --from-tracking` rebuilds the report's tables from the server alone, and a stage that
cannot reach a server stops within seconds with one line.

Real PostgreSQL, a real `mlflow server` and the real Snakemake; one DAG run for the whole module.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flexheads.config import load_params
from test_orchestration import REPO, make_project, run

pytest.importorskip("psycopg2", reason="the MLflow server needs psycopg2 to reach PostgreSQL (flexheads[cluster])")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow
SCRIPT = REPO / "pipeline" / "cluster" / "mlflow-server.sh"
ERROR_LINE = re.compile(r"\b(error|exception|traceback)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The tracking URI of a fresh server (PostgreSQL + mlflow server) in a temporary folder, stopped at the end.

    The folder is made by mkdtemp under /tmp, not pytest's tmp_path: run as root, the script hands the database to
    the postgres user, who cannot pass pytest's 0700 folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="flexheads-mlflow-"))
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True)
    try:
        if started.returncode != 0:
            reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"no MLflow server on PostgreSQL here: {reason}")
        yield started.stdout.split("tracking.uri:")[1].strip()
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def on_server(uri: str):
    def edit(raw: dict) -> None:  # 8 matrix cells (+ the MLP baseline): 8 trainings at once under --cores 8
        raw["experiment"].update(tasks=["pose3d"], attention=["standard", "flexible"],
                                 regimes=["noam", "radam", "preln", "tfixup"])
        raw["train"]["pose3d"].update(steps=20, eval_every=10, log_every=5)
        raw["tracking"]["uri"] = uri

    return edit


def environment() -> dict[str, str]:
    """This process's environment without MLFLOW_TRACKING_URI, so params.yaml's tracking.uri is the one used."""
    return {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}


@pytest.fixture(scope="module")
def built(server: str, tmp_path_factory) -> Path:
    """The tiny DAG, its tracking.uri the server, run once by `snakemake --cores 8` up to the report."""
    project = make_project(tmp_path_factory.mktemp("server") / "p", on_server(server))
    run(["snakemake", "--cores", "8"], project, env=environment())
    return project


def current(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name.split("-")[0])
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"attributes.run_name = '{name}' and tags.superseded = 'false'")
    assert len(runs) == 1, f"{name}: {len(runs)} current runs"
    return runs[0]


def test_every_run_and_every_metric_row_reaches_the_server(built, server):
    client = MlflowClient(server)
    for run in load_params(built / "params.yaml").all_runs():
        mlflow_run = current(client, run.name)
        assert mlflow_run.info.status == "FINISHED", run.name
        assert mlflow_run.info.run_id == json.loads((built / "models" / run.name / "train.json").read_text())[
            "mlflow_run_id"]
        history = pd.read_csv(built / "models" / run.name / "history.csv")
        for column in history.columns.drop("step"):
            rows = history[["step", column]].dropna()
            logged = sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, column))
            assert [step for step, _ in logged] == rows["step"].tolist(), (run.name, column)
            assert all(math.isclose(a, b, rel_tol=1e-12) for (_, a), b in zip(logged, rows[column])), (run.name, column)
        test_metrics = {k for k in mlflow_run.data.metrics if k.startswith("test_")}
        assert test_metrics, f"{run.name}: no test metrics on the server"


def test_no_stage_logged_an_error(built):
    logs = sorted((built / "logs").rglob("*.log"))
    assert logs
    errors = [f"{path.name}: {line}" for path in logs for line in path.read_text().splitlines()
              if ERROR_LINE.search(line)]
    assert not errors, "\n".join(errors[:20])


def test_artifacts_are_browsable_over_http(built, server):
    client = MlflowClient(server)
    name = load_params(built / "params.yaml").runs()[0].name
    run_id = current(client, name).info.run_id
    listing = json.loads(_get(f"{server}/api/2.0/mlflow/artifacts/list?"
                              + urllib.parse.urlencode({"run_id": run_id, "path": "evaluation"})))
    assert f"evaluation/{name}.json" in {entry["path"] for entry in listing["files"]}
    served = _get(f"{server}/get-artifact?" + urllib.parse.urlencode({"path": f"evaluation/{name}.json",
                                                                       "run_uuid": run_id}))
    assert served == (built / "metrics" / f"{name}.json").read_bytes()
    report = client.search_runs([client.get_experiment_by_name("report").experiment_id],
                                filter_string="tags.superseded = 'false'")[0]
    page = _get(f"{server}/get-artifact?" + urllib.parse.urlencode({"path": "index.html",
                                                                    "run_uuid": report.info.run_id}))
    assert page == (built / "reports" / "index.html").read_bytes()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def test_report_from_tracking_equals_the_report_from_files(built, server):
    client = MlflowClient(server)
    name = load_params(built / "params.yaml").runs()[0].name
    stale = client.create_run(client.get_experiment_by_name("pose3d").experiment_id, run_name=name,
                              tags={"superseded": "true", "params_hash": "an-older-params.yaml"})
    client.set_terminated(stale.info.run_id)  # an earlier attempt of the same cell: never picked

    out = run(["flexheads", "report", "--from-tracking"], built, env=environment())

    ours, theirs = built / "reports" / "tables", built / "reports-from-tracking" / "tables"
    tables = sorted(p.name for p in ours.iterdir() if not p.name.startswith("."))  # not Snakemake's timestamp
    assert tables and sorted(p.name for p in theirs.iterdir()) == tables
    for name in tables:
        assert (theirs / name).read_bytes() == (ours / name).read_bytes(), name
    assert "from 9 current MLflow runs" in out


def test_report_from_tracking_names_every_run_missing_on_the_server(built):
    raw = yaml.safe_load((built / "params.yaml").read_text())
    raw["experiment"]["regimes"].append("linear_untuned")
    (built / "params-more.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    result = subprocess.run(["flexheads", "report", "--from-tracking", "--params", "params-more.yaml",
                             "--out", "more"], cwd=built, capture_output=True, text=True, env=environment())

    assert result.returncode == 2
    missing = set(re.findall(r"^  (\S+): no current run", result.stderr, re.MULTILINE))
    assert missing == {"pose3d-standard-linear_untuned-0", "pose3d-flexible-linear_untuned-0"}, result.stderr
    assert not (built / "more" / "tables").exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [
    ["flexheads", "tracking-init"],
    ["flexheads", "train", "pose3d-standard-noam-0", "--data", "data/prepared/pose3d.h5", "--out", "unreached"],
])
def test_a_stage_that_cannot_reach_the_server_fails_fast_with_one_line(built, command):
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    result = subprocess.run(command, cwd=built, capture_output=True, text=True,
                            env={**environment(), "MLFLOW_TRACKING_URI": uri, "FLEXHEADS_WARM": "off"})
    seconds = time.perf_counter() - started

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {uri} did not answer ([Errno 111] Connection refused); check that it runs "
        "(pipeline/cluster/mlflow-server.sh status <folder>), params.yaml's tracking.uri or MLFLOW_TRACKING_URI, and "
        "the network or SSH tunnel to it"]
    assert seconds < 60, f"{seconds:.0f} s"  # MLflow's default retries take over four minutes; imports take ~10 s
