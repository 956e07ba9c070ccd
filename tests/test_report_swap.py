"""The report is built in a hidden folder beside the old one and swapped in: a report that fails (or is killed)
midway leaves the previous complete report byte for byte, and no build folder survives the next run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flexheads.cli import app
from flexheads.data.cxr import LABELS
from flexheads.report import OUTPUTS, building

from conftest import auroc_samples

REPO = Path(__file__).resolve().parents[1]
RUNS = ["cxr-standard-noam-0", "cxr-standard-radam-0"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def write_complete(build: Path, text: str) -> None:
    """Every output of a report, each holding ``text``."""
    for name in OUTPUTS:
        if name.endswith(".html"):
            (build / name).write_text(text)
        else:
            (build / name).mkdir()
            (build / name / "a.txt").write_text(text)


# --- building(): the swap on its own ---------------------------------------------------------------------


@pytest.fixture
def old_report(tmp_path: Path) -> Path:
    """A complete report folder, every output holding "old"."""
    out = tmp_path / "reports"
    with building(out) as build:
        write_complete(build, "old")
    return out


def test_a_complete_build_replaces_every_output(old_report: Path) -> None:
    out = old_report
    (out / "tables" / "gone.md").write_text("a table the new report no longer has")
    (out / "notes.txt").write_text("not a report output")

    with building(out) as build:
        assert build.parent == out and build.name.startswith(".building-") and not any(build.iterdir())
        write_complete(build, "new")

    assert files(out) == {**{f"{name}/a.txt": b"new" for name in OUTPUTS if name != "index.html"},
                          "index.html": b"new", "notes.txt": b"not a report output"}
    assert hidden(out) == []


def test_a_failed_build_leaves_the_old_report_and_no_build_folder(old_report: Path) -> None:
    out, before = old_report, files(old_report)

    with pytest.raises(OSError, match="disk full"), building(out) as build:
        (build / "tables").mkdir()
        (build / "tables" / "a.txt").write_text("new")
        raise OSError("disk full")

    assert files(out) == before
    assert hidden(out) == []


def test_an_incomplete_build_is_not_swapped_in(old_report: Path) -> None:
    out, before = old_report, files(old_report)

    with pytest.raises(RuntimeError, match=r"lacks \['plots', 'index.html'\]"), building(out) as build:
        for name in ("tables", "figures"):
            (build / name).mkdir()

    assert files(out) == before
    assert hidden(out) == []


def test_a_build_folder_left_by_a_kill_is_removed_by_the_next_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    stale = out / ".building-killed"
    (stale / "tables").mkdir(parents=True)
    (stale / "tables" / "half.md").write_text("written before SIGKILL")

    with building(out) as build:
        assert not stale.exists()
        write_complete(build, "new")

    assert hidden(out) == []
    assert (out / "index.html").read_text() == "new"


# --- `flexheads report`: real tables, page and plots ---------------------------------------------------------


def write_params(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], attention=["standard"], regimes=["noam", "radam"], seeds=[0])
    raw["baselines"] = {}
    raw["tracking"]["enabled"] = False
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_run(root: Path, run: str, auroc: float) -> None:
    """The metrics and train files the report's tables read for a cxr ``run``."""
    task, attention, regime, _ = run.split("-")
    metrics = {"run": run, "task": task, "model": "transformer", "attention": attention, "regime": regime,
               "mean_auroc": auroc, "mean_average_precision": 0.2, "mean_f1": 0.1,
               "auroc_covid19": 0.5, "pointing_game": 0.1, "cam_iou": 0.05, "pointing_game_uniform": 0.03}
    (root / "metrics" / run).mkdir(parents=True, exist_ok=True)
    (root / "metrics" / f"{run}.json").write_text(json.dumps(metrics))
    pd.DataFrame({"finding": LABELS, "auroc": auroc}).to_csv(root / "metrics" / run / "per_class.csv", index=False)
    np.savez(root / "metrics" / run / "samples.npz", **auroc_samples(auroc))
    (root / "models" / run).mkdir(parents=True, exist_ok=True)
    (root / "models" / run / "train.json").write_text(json.dumps(
        {"n_params": 1000, "wall_time_s": 12.5, "cpu_time_s": 10.25, "steps_per_s": 48.0, "final_loss": 0.3,
         "mlflow_run_id": f"id-{run}"}))


def fake_figures(params: object, metrics_dir: Path, models_dir: Path, out_dir: Path) -> list[Path]:
    """Stands in for write_figures (tested in test_figures.py): the curves PNG that plots/ copies."""
    path = out_dir / "figures" / "cxr_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG curves of " + (metrics_dir / f"{RUNS[0]}.json").read_bytes())
    return [path]


def report(root: Path) -> list[str]:
    """Run ``flexheads report`` over ``root``; returns the paths it printed."""
    result = CliRunner().invoke(app, ["report", "--params", str(root / "params.yaml"), "--metrics-dir",
                                      str(root / "metrics"), "--models-dir", str(root / "models"),
                                      "--out", str(root / "reports")])
    if result.exception:
        raise result.exception
    return result.output.splitlines()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("flexheads.report.figures.write_figures", fake_figures)
    write_params(tmp_path)
    for run, auroc in zip(RUNS, (0.71, 0.83)):
        write_run(tmp_path, run, auroc)
    return tmp_path


def test_report_prints_the_final_paths_and_leaves_no_build_folder(project: Path) -> None:
    printed = report(project)
    out = project / "reports"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert str(out / "tables" / "cxr.md") in printed and printed[-1] == str(out / "index.html")
    assert all(Path(line).is_file() for line in printed)
    assert (out / "plots" / "cxr_curves.png").read_bytes() == (out / "figures" / "cxr_curves.png").read_bytes()


def test_a_report_failing_midway_keeps_the_previous_report(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report(project)
    out = project / "reports"
    before = files(out)
    write_run(project, RUNS[0], 0.99)  # the next report's tables and figures differ

    def broken_plots(*args: object) -> list[Path]:
        raise RuntimeError("killed while copying the plots")

    monkeypatch.setattr("flexheads.report.figures.write_dvc_plots", broken_plots)
    with pytest.raises(RuntimeError, match="killed while copying the plots"):
        report(project)

    assert files(out) == before
    assert hidden(out) == []


def test_a_stale_build_folder_is_removed_by_the_next_report(project: Path) -> None:
    stale = project / "reports" / ".building-x1y2"
    (stale / "figures").mkdir(parents=True)
    (stale / "figures" / "half.png").write_bytes(b"written before SIGKILL")

    report(project)

    assert hidden(project / "reports") == []
    assert (project / "reports" / "index.html").is_file()
