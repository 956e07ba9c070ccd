"""The report as an MLflow run, against a real local SQLite store: experiment ``report``, tags, one param per
task, the page, tables and figures as artifacts; nothing at all with tracking disabled."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flexheads.config import Params, params_hash
from flexheads.report.publish import publish_report

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def params_with(tasks: list[str], tracking: dict) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["tasks"] = tasks
    raw["tracking"] = tracking
    return Params.model_validate(raw)


def make_report(root: Path) -> None:
    (root / "tables").mkdir(parents=True)
    (root / "figures").mkdir()
    for name in ("pose3d.md", "pose3d.csv", "summary.md"):
        (root / "tables" / name).write_text("table\n")
    (root / "tables" / ".pose3d.md.tmp123.md").write_text("an interrupted write")  # never published
    for name in ("noam_schedule.png", "noam_schedule.pdf"):
        (root / "figures" / name).write_bytes(b"figure")
    (root / "index.html").write_text("<!DOCTYPE html><title>report</title>")


def test_report_run_holds_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    params = params_with(["pose3d", "cxr"], {"enabled": True, "uri": uri})
    make_report(tmp_path / "reports")

    run_id = publish_report(params, tmp_path / "reports")

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "report"
    assert run.info.status == "FINISHED"
    assert run.data.tags["params_hash"] == params_hash(params.model_dump(mode="json"))
    assert run.data.tags["tasks"] == "pose3d,cxr" and run.data.tags["git_commit"]
    counts = {t: sum(r.task == t for r in params.all_runs()) for t in ("pose3d", "cxr")}
    assert run.data.params == {f"runs.{t}": str(n) for t, n in counts.items()}

    def listed(path: str | None = None) -> list[str]:
        return sorted(a.path for a in client.list_artifacts(run_id, path))

    assert listed() == ["figures", "index.html", "tables"]
    assert listed("tables") == ["tables/pose3d.csv", "tables/pose3d.md", "tables/summary.md"]
    assert listed("figures") == ["figures/noam_schedule.pdf", "figures/noam_schedule.png"]
    local = Path(client.download_artifacts(run_id, "index.html", str(tmp_path / "download")))
    assert local.read_text() == (tmp_path / "reports" / "index.html").read_text()


def test_disabled_tracking_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    params = params_with(["pose3d"], {"enabled": False, "uri": f"sqlite:///{db}"})
    make_report(tmp_path / "reports")
    assert publish_report(params, tmp_path / "reports") is None
    assert not db.exists()
