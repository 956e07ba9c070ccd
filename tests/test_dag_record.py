"""The record both front doors share: the stages Snakemake's jobs finished are committed to dvc.lock in one go,
exactly those, and only while nothing DVC records beside the outputs (params.yaml, dvc.yaml, source dependencies)
has changed since their run started. A real DVC project of three shell stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dvc.exceptions import DvcException
from dvc.repo import Repo

from flexheads.dag import (read_stages, record_finished, record_stages, source_stamp, stale_stages,
                           start_recording)

DVC_YAML = """\
stages:
  first:
    cmd: cp code/make.txt first.txt
    deps:
      - code
    params:
      - size
    outs:
      - first.txt
  second:
    cmd: cp first.txt second.txt
    deps:
      - first.txt
    outs:
      - second.txt
  third:
    cmd: cp code/make.txt third.txt
    deps:
      - code
    outs:
      - third.txt
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three stages whose outputs exist, as a Snakemake run leaves them before the record; none in dvc.lock. The
    working folder is the project's, as for the Snakefile and DVC."""
    monkeypatch.chdir(tmp_path)
    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("size: 1\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "make.txt").write_text("made\n")
    for name in ("first", "second", "third"):
        (tmp_path / f"{name}.txt").write_text("made\n")
    return tmp_path


def test_record_commits_exactly_the_named_stages_in_one_write(project: Path) -> None:
    assert stale_stages(project) == {"first", "second", "third"}
    record_stages(project, ["first", "second"])
    assert stale_stages(project) == {"third"}
    lock = (project / "dvc.lock").read_text()
    assert "first:" in lock and "second:" in lock and "third:" not in lock


def test_record_names_an_unknown_stage(project: Path) -> None:
    with pytest.raises(DvcException, match="no stage named fourth"):
        record_stages(project, ["first", "fourth"])
    assert not (project / "dvc.lock").exists()  # nothing recorded when one name is wrong


def test_the_source_stamp_sees_params_dvc_yaml_and_code_but_not_outputs(project: Path) -> None:
    stages = read_stages(project)
    stamp = source_stamp(project, stages)
    (project / "first.txt").write_text("rewritten by its stage\n")
    assert source_stamp(project, stages) == stamp
    for source in ("params.yaml", "dvc.yaml", "code/make.txt"):
        os.utime(project / source, ns=(1, 1))
        assert source_stamp(project, stages) != stamp, source
        stamp = source_stamp(project, stages)


def finish(project: Path, *names: str) -> None:
    """What a Snakemake job does when its command succeeded."""
    for stage in read_stages(project):
        if stage.name in names:
            (project / stage.finished).touch()


def test_the_stages_a_run_finished_are_recorded_when_it_ends(project: Path) -> None:
    stages = read_stages(project)
    start_recording(project, stages)
    assert record_finished(project, stages) is None and not (project / "dvc.lock").exists()  # nothing finished
    finish(project, "first", "third")
    assert record_finished(project, stages) is None
    assert stale_stages(project) == {"second"}
    assert not any(stage.finished.exists() for stage in stages)  # marks cleared


def test_after_an_edit_during_the_run_nothing_is_recorded_and_the_user_is_told(project: Path) -> None:
    stages = read_stages(project)
    start_recording(project, stages)
    finish(project, "first")
    (project / "params.yaml").write_text("size: 2\n")
    assert "params.yaml, dvc.yaml or the code changed" in record_finished(project, stages)
    assert stale_stages(project) == {"first", "second", "third"}
    assert not (project / stages[0].finished).exists()


def test_marks_left_by_a_killed_run_are_recorded_by_the_next_one_if_nothing_changed(project: Path) -> None:
    stages = read_stages(project)
    start_recording(project, stages)
    finish(project, "first", "second")  # ... and the run is killed: no record
    assert stale_stages(project) == {"first", "second", "third"}
    assert record_finished(project, stages) is None  # the next run's parse
    assert stale_stages(project) == {"third"}
