"""Every stage depends on every flexheads module its process loads: pipeline/code/ matches the imports, and each
DVC stage names the folder of its own command and task.  (The slow orchestration test also checks the modules
the stages really loaded while running.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flexheads.code_deps import CODE_DIR, stage_code_dirs, stage_files, stale_code_dirs
from flexheads.dag import read_stages
from flexheads.tasks import BUILTIN_TASKS as TASKS

REPO = Path(__file__).resolve().parents[1]


def test_code_links_match_the_imports():
    assert stale_code_dirs(REPO) == {}, "run `flexheads code-deps` and commit pipeline/code"


def test_every_link_points_at_its_module():
    for name in stage_code_dirs():
        for link in (REPO / CODE_DIR / name).rglob("*.py"):
            source = REPO / "src/flexheads" / link.relative_to(REPO / CODE_DIR / name)
            assert link.is_symlink() and link.resolve() == source


def test_each_stage_depends_on_the_code_of_its_command_and_task():
    for stage in read_stages(REPO):
        command, target = re.match(r"flexheads (\S+) ?(\S*)", stage.cmd).groups()
        task = next((t for t in TASKS if target == t or target.startswith(f"{t}-")), None)
        folder = f"{command}-{task}" if task else command
        code = [dep for dep in stage.deps if dep.startswith(str(CODE_DIR))]
        assert code == [f"{CODE_DIR}/{folder}"], stage.name


@pytest.mark.parametrize(("command", "task", "modules"), [
    # the gaps the issue found: evaluate lacked explain/h36m/stages/config, train lacked config/stages/io
    ("evaluate", "cxr", ["explain.py", "stages.py", "config.py", "cli.py"]),
    ("evaluate", "pose3d", ["data/h36m.py", "stages.py", "config.py", "metrics/pose3d.py"]),
    ("train", "pose3d", ["config.py", "stages.py", "io.py", "train.py", "optim/schedules.py", "nn/attention.py",
                         "tracking.py", "models/baselines.py", "__init__.py"]),
    ("download", "pose2d", ["data/synthetic_coco/files.py", "data/coco.py", "data/download.py", "tasks/pose2d.py"]),
])
def test_stage_code_includes(command, task, modules):
    files = {p.as_posix() for p in stage_files(command, (task,))}
    assert set(modules) <= files


def test_report_code_includes_every_task_module():
    files = {p.as_posix() for p in stage_files("report", TASKS)}
    assert {f"tasks/{task}.py" for task in TASKS} | {"report/tables.py", "optim/schedules.py"} <= files


def test_stage_code_excludes_what_the_stage_never_loads():
    download = {p.as_posix() for p in stage_files("download", ("pose3d",))}
    assert not download & {"train.py", "stages.py", "optim/schedules.py", "tracking.py", "data/coco.py"}
    train = {p.as_posix() for p in stage_files("train", ("pose3d",))}
    assert not train & {"models/vit.py", "explain.py", "data/cxr.py"}
    assert not any(f.startswith("report/") for f in train)
    assert {f"tasks/settings/{task}.py" for task in TASKS} <= train  # validating params.yaml loads them all
    assert not train & {"tasks/pose2d.py", "tasks/cxr.py"}


def test_check_reports_a_missing_link(tmp_path):
    import shutil

    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / CODE_DIR, tmp_path / CODE_DIR, symlinks=True)
    (tmp_path / CODE_DIR / "train-pose3d/optim/schedules.py").unlink()
    assert stale_code_dirs(tmp_path) == {f"{CODE_DIR}/train-pose3d": "missing ['optim/schedules.py']"}
