"""Snakemake and DVC are two doors onto one DAG: the same stages and commands, the same staleness after any edit,
the same numbers, and neither upsets the other.

These run the real `snakemake`, `dvc` and MLflow on copies of the project with tiny params.yaml files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from dvc.utils.serialize import modify_yaml

from flexheads.code_deps import CODE_DIR, SOURCE_ROOT, module_file
from flexheads.config import load_params
from flexheads.dag import TIMESTAMP, read_stages, stage_inputs, stale_stages
from flexheads.report.figures import figure_plan
from conftest import tiny_heads
from ssh_server import loopback_sshd

REPO = Path(__file__).resolve().parents[1]
NAMESPACE_PACKAGES = {"flexheads.models"}  # folders without __init__.py: no code runs when they load
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "pipeline", "src", ".dvcignore", ".gitignore"]


def tiny_params(raw: dict) -> None:
    """Every task at a size that trains in seconds."""
    raw["experiment"].update(attention=["standard", "flexible_matched"], regimes=["noam", "tfixup"])
    raw["data"]["pose3d"]["synthetic"]["frames_per_sequence"] = 30
    raw["model"]["pose3d"].update(d_model=16, n_layers=1, d_ff=32)
    raw["heads"]["pose3d"] = tiny_heads(2, 16, 1)
    raw["train"]["pose3d"].update(steps=20, batch_size=32, checkpoint_every=10, log_every=5)
    raw["data"]["pose2d"]["synthetic"].update(n_train_images=6, n_val_images=4, image_size=[160, 120])
    raw["model"]["pose2d"].update(d_model=16, n_layers=1, d_ff=32)
    raw["heads"]["pose2d"] = tiny_heads(2, 16, 1)
    raw["train"]["pose2d"].update(steps=4, batch_size=8, checkpoint_every=2, log_every=2, eval_batch_size=16)
    raw["data"]["cxr"].update(image_size=32)
    raw["data"]["cxr"]["synthetic"].update(n_patients=30, n_covid_images=8, image_size=64)
    raw["model"]["cxr"].update(d_model=16, n_layers=1, d_ff=32)
    raw["heads"]["cxr"] = tiny_heads(2, 16, 1)
    raw["train"]["cxr"].update(steps=4, batch_size=16, checkpoint_every=2, log_every=2, eval_batch_size=64)


def make_project(dest: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A git + DVC project at ``dest`` with the repo's pipeline files and a tiny params.yaml, committed."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():  # symlinks=True: pipeline/code must keep linking into this copy's src/
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    (dest / "profiles").symlink_to("pipeline/profiles")
    with modify_yaml(dest / "params.yaml") as raw:  # DVC's round trip: comments and layout stay as in the repo
        tiny_params(raw)
        if edit:
            edit(raw)
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    commit(dest, "project")
    return dest


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, "--allow-empty"], project)


def snakemake_jobs(project: Path) -> dict[str, tuple[str, set[str]]]:
    """Rule name → (shell command, outputs) of every job of a forced Snakemake dry run."""
    text = run(["snakemake", "--dry-run", "--forceall", "--cores", "1"], project)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        shell = re.search(r"^Shell command: (.*)$", block, re.M) or re.search(r"^\s{4}(flexheads .*)$", block, re.M)
        if rule and rule.group(1) != "all" and shell:
            outputs = set(re.search(r"output: (.*)", block).group(1).split(", "))
            jobs[rule.group(1)] = (" ".join(shell.group(1).split()), outputs)
    return jobs


def snakemake_plan(project: Path) -> set[str]:
    """DVC names of the stages `snakemake -n` (default profile, no flags) would run."""
    rules = set(re.findall(r"^(?:local)?rule (\w+):", run(["snakemake", "-n"], project), re.M)) - {"all"}
    names = {stage.rule_name: stage.name for stage in read_stages(project)}
    return {names[rule] for rule in rules}


def downstream(project: Path, names: set[str]) -> set[str]:
    """``names`` and every stage that reads, directly or not, an output of one of them."""
    stages = read_stages(project)
    producer = {out: stage.name for stage in stages for out in stage.outs}
    reached = set(names)
    changed = True
    while changed:
        changed = False
        for stage in stages:
            if stage.name not in reached and any(producer.get(p) in reached for p in stage_inputs(stage, stages)):
                reached.add(stage.name)
                changed = True
    return reached


def dvc_plan(project: Path) -> set[str]:
    """The stages `dvc status` lists and everything downstream of them: what `dvc repro` may rerun."""
    return downstream(project, stale_stages(project))


def metrics_of(project: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((project / "metrics").glob("*.json"))}


def test_snakemake_builds_one_rule_per_dvc_stage_with_its_command_and_outputs(tmp_path):
    project = make_project(tmp_path / "p")
    stages = read_stages(project)
    jobs = snakemake_jobs(project)
    assert set(jobs) == {stage.rule_name for stage in stages}
    for stage in stages:
        shell, outputs = jobs[stage.rule_name]
        assert shell.startswith(stage.cmd + " > ") and shell.endswith(f" && touch {stage.finished}")
        assert outputs == set(stage.outs), stage.name
    runs = {r.name for r in load_params(project / "params.yaml").all_runs()}
    trained = {s.name.split("@")[1] for s in stages if s.kind == "train"}
    assert trained == runs - {"pose3d-martinez_mlp"} | {"martinez_mlp"}


def test_snakemake_refuses_config_overrides(tmp_path):
    project = make_project(tmp_path / "p")
    result = subprocess.run(["snakemake", "-n", "--config", "threads=4"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    assert "params.yaml is the single source of truth" in result.stdout + result.stderr


def test_dvc_exp_run_set_param_rewrites_one_line_of_params_yaml(tmp_path):
    """`dvc exp run -S` writes params.yaml through DVC's override code: only the value changes."""
    from dvc.utils.hydra import apply_overrides

    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", ["regimes.noam.lr=0.3"])
    before, after = (REPO / "params.yaml").read_text().splitlines(), (tmp_path / "params.yaml").read_text().splitlines()
    assert len(before) == len(after)
    assert [(a.split("#")[0].rstrip(), b.split("#")[0].rstrip()) for a, b in zip(before, after) if a != b] == [
        ("    lr: 0.34", "    lr: 0.3")]  # the value changes; the comment after it stays


def test_snakemake_lint_is_clean(tmp_path):
    project = make_project(tmp_path / "p")
    assert "Congratulations, your workflow is in a good condition!" in run(["snakemake", "--lint"], project)


# --- one task, two regimes: every kind of edit makes both doors plan the same stages ----------------------------

def pose3d_only(raw: dict) -> None:
    raw["experiment"].update(tasks=["pose3d"], attention=["standard", "flexible"], regimes=["noam", "radam"])
    raw["train"]["pose3d"].update(steps=30, eval_every=10, log_every=10)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny DAG run once by Snakemake, each stage's imports traced into its log (each command in its own
    process: a warm server's child has imported before it starts), then committed."""
    project = make_project(tmp_path_factory.mktemp("dag") / "p", pose3d_only)
    run(["snakemake", "--cores", "2"], project,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "FLEXHEADS_WARM": "off"})
    commit(project, "built")
    return project


def in_params(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        raw = yaml.safe_load((project / "params.yaml").read_text())
        edit(raw)
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return apply


def comment_in(module: str) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        with open(project / "src/flexheads" / module, "a") as f:
            f.write("# an edit that changes no behaviour still changes the code a stage ran\n")
    return apply


RUNS = [f"pose3d-{a}-{r}-0" for a in ("standard", "flexible") for r in ("noam", "radam")]
TRAIN = {f"train@{run}" for run in RUNS} | {"train_baseline@martinez_mlp"}
EVALUATE = {f"evaluate@{run}" for run in RUNS} | {"evaluate_baseline@martinez_mlp"}
EVERYTHING = {"download@pose3d"}  # with everything downstream
EDITS = {  # edit → the stages it changes directly (the plan adds what lies downstream of them)
    "regimes.radam.lr": (in_params(lambda p: p["regimes"]["radam"].update(lr=1e-3)),
                         {"train@pose3d-standard-radam-0", "train@pose3d-flexible-radam-0",
                          "train_baseline@martinez_mlp"}),  # the baseline trains with radam
    "regimes.noam.warmup": (in_params(lambda p: p["regimes"]["noam"].update(warmup=50)),
                            {"train@pose3d-standard-noam-0", "train@pose3d-flexible-noam-0", "report"}),
    "model.pose3d.n_layers": (in_params(lambda p: p["model"]["pose3d"].update(n_layers=2)), TRAIN),
    "heads.pose3d.flexible": (in_params(lambda p: p["heads"]["pose3d"]["flexible"].update(d_head=8)),
                              {"train@pose3d-flexible-noam-0", "train@pose3d-flexible-radam-0"}),
    "train.pose3d.steps": (in_params(lambda p: p["train"]["pose3d"].update(steps=40)), TRAIN),
    "train.pose3d.eval_batch_size": (in_params(lambda p: p["train"]["pose3d"].update(eval_batch_size=1000)),
                                     TRAIN | EVALUATE),
    "data.pose3d.synthetic.seed": (in_params(lambda p: p["data"]["pose3d"]["synthetic"].update(seed=1)),
                                   EVERYTHING),
    "threads": (in_params(lambda p: p.update(threads=2)), TRAIN | EVALUATE),
    "experiment.seeds": (in_params(lambda p: p["experiment"].update(seeds=[0, 1])),
                         {f"{kind}@pose3d-{a}-{r}-1" for kind in ("train", "evaluate")
                          for a in ("standard", "flexible") for r in ("noam", "radam")} | {"report"}),
    "experiment.regimes": (in_params(lambda p: p["experiment"].update(regimes=["noam", "radam", "preln"])),
                           {f"{kind}@pose3d-{a}-preln-0" for kind in ("train", "evaluate")
                            for a in ("standard", "flexible")} | {"report"}),
    "nn/attention.py": (comment_in("nn/attention.py"), EVERYTHING),  # tasks.pose3d loads the models
    "optim/schedules.py": (comment_in("optim/schedules.py"), TRAIN | EVALUATE | {"report"}),
    "models/lifter.py": (comment_in("models/lifter.py"), EVERYTHING),
    "metrics/pose3d.py": (comment_in("metrics/pose3d.py"), EVERYTHING),
    "data/h36m.py": (comment_in("data/h36m.py"), EVERYTHING),
    "tasks/pose3d.py": (comment_in("tasks/pose3d.py"), EVERYTHING),
    "train.py": (comment_in("train.py"), TRAIN | EVALUATE | {"report"}),
    "stages.py": (comment_in("stages.py"), TRAIN | EVALUATE | {"report"}),
    "config.py": (comment_in("config.py"), EVERYTHING),
    "explain.py": (comment_in("explain.py"), {"report"}),  # cxr's Grad-CAM: in this DAG only the report loads it
    "report/tables.py": (comment_in("report/tables.py"), {"report"}),
    "models/vit.py": (comment_in("models/vit.py"), {"report"}),
}


@pytest.mark.slow
def test_after_snakemake_both_doors_have_nothing_to_do(built):
    assert stale_stages(built) == set()
    assert snakemake_plan(built) == set()


@pytest.mark.slow
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_makes_both_doors_plan_exactly_the_stages_it_can_change(built, edit):
    apply, direct = EDITS[edit]
    apply(built)
    try:
        expected = downstream(built, direct)
        assert dvc_plan(built) == expected
        assert snakemake_plan(built) == expected
    finally:
        run(["git", "checkout", "-q", "--", "params.yaml", "src"], built)
    assert snakemake_plan(built) == set() and stale_stages(built) == set()


@pytest.mark.slow
def test_every_module_a_stage_loaded_is_one_of_its_dependencies(built):
    """The imports each stage really made while Snakemake ran it (PYTHONPROFILEIMPORTTIME in its log) are all in
    the code folder dvc.yaml names for it."""
    for stage in read_stages(built):
        log = (built / stage.log).read_text()
        loaded = set(re.findall(r"^import time:.*\|\s*(flexheads(?:\.\w+)*)\s*$", log, re.M))
        assert "flexheads.cli" in loaded, stage.name
        code = next(Path(dep) for dep in stage.deps if dep.startswith(str(CODE_DIR)))
        declared = {p.relative_to(built / code).as_posix() for p in (built / code).rglob("*.py")}
        for module in loaded - NAMESPACE_PACKAGES:
            assert module_file(module).relative_to(SOURCE_ROOT).as_posix() in declared, (stage.name, module)


@pytest.mark.slow
def test_dvc_metrics_and_offline_plots(built, tmp_path):
    shown = run(["dvc", "metrics", "show"], built)
    assert "pose3d-standard-noam-0.json" in shown and "train.json" in shown and "failed" not in shown.lower()
    assert "failed" not in run(["dvc", "metrics", "diff", "HEAD"], built).lower()
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], built)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "pose3d_curves.png" in page and "<img" in page and "<script src=\"http" not in page


def assert_a_remote_round_trip(built: Path, tmp_path: Path, url: str, local: dict[str, str] | None = None,
                               env: dict[str, str] | None = None) -> None:
    """From a copy of ``built``, `dvc remote add -d shared <url>` (its ``local`` settings by `dvc remote modify
    --local`) and `dvc push`; a fresh `git clone` (settings made again: .dvc/config.local is not in git) and `dvc pull`
    has every output, byte for byte, and neither front door has anything to do (README: Sharing results through a
    DVC remote). ``env``: of the push and pull."""
    local = local or {}
    done = tmp_path / "done"
    shutil.copytree(built, done, symlinks=True)
    run(["dvc", "remote", "add", "-d", "shared", url], done)
    for key, value in local.items():
        run(["dvc", "remote", "modify", "--local", "shared", key, value], done)
    run(["dvc", "push"], done, env)
    commit(done, "remote")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(done), str(clone)], tmp_path)
    assert not (clone / ".dvc/config.local").exists()
    assert not any(value in (clone / ".dvc/config").read_text() for value in local.values())
    for key, value in local.items():
        run(["dvc", "remote", "modify", "--local", "shared", key, value], clone)
    run(["dvc", "pull"], clone, env)
    outputs = [out for stage in read_stages(done) for out in stage.outs]
    for out in outputs:
        files = sorted(p for p in (done / out).rglob("*") if p.is_file()) if (done / out).is_dir() else [done / out]
        for file in (f for f in files if f.name != TIMESTAMP):  # Snakemake's own stamp, ignored by DVC and git
            assert (clone / file.relative_to(done)).read_bytes() == file.read_bytes(), file
    assert stale_stages(clone) == set()
    assert snakemake_plan(clone) == set()


@pytest.mark.slow
def test_a_dvc_remote_gives_a_fresh_clone_every_output_and_nothing_to_run(built, tmp_path):
    """A shared-folder remote: what a cluster mounts on every node."""
    assert_a_remote_round_trip(built, tmp_path, str(tmp_path / "remote"))


@pytest.mark.slow
def test_a_dvc_remote_over_ssh_gives_a_fresh_clone_every_output_and_nothing_to_run(built, tmp_path):
    """The same over SSH to a loopback sshd, logging in with the key named in .dvc/config.local and nothing else
    (an empty HOME, no agent)."""
    with loopback_sshd(tmp_path / "sshd") as sshd:
        assert_a_remote_round_trip(built, tmp_path, sshd.url(tmp_path / "remote"), {"keyfile": str(sshd.client_key)},
                                   sshd.client_env())


@pytest.mark.slow
def test_each_door_reruns_what_the_other_would_and_leaves_it_clean(built):
    """Snakemake reruns an edit, then DVC is clean; DVC reruns the next edit, then Snakemake has nothing to do."""
    comment_in("optim/schedules.py")(built)
    log = run(["snakemake", "--cores", "2"], built)
    ran = {stage.name for stage in read_stages(built) if re.search(rf"^(?:local)?rule {stage.rule_name}:", log, re.M)}
    assert ran == TRAIN | EVALUATE | {"report"}
    assert stale_stages(built) == set() and snakemake_plan(built) == set()

    in_params(lambda p: p["regimes"]["radam"].update(lr=2e-3))(built)
    log = run(["dvc", "repro"], built)
    assert set(re.findall(r"Running stage '([^']+)'", log)) == downstream(built, EDITS["regimes.radam.lr"][1])
    assert stale_stages(built) == set() and snakemake_plan(built) == set()
    commit(built, "edits")


@pytest.mark.slow
def test_dvc_exp_run_changes_one_line_and_leaves_snakemake_nothing_to_do(built):
    from dvc.utils.hydra import apply_overrides

    apply_overrides(built / "params.yaml", ["regimes.noam.lr=0.5"])  # the tests' edits wrote flow-style lists
    commit(built, "params.yaml as DVC writes it")
    before = (built / "params.yaml").read_text().splitlines()
    git_identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t"}
    run(["dvc", "exp", "run", "-S", "regimes.noam.lr=0.3"], built, env={**os.environ, **git_identity})
    after = (built / "params.yaml").read_text().splitlines()
    assert len(before) == len(after) and [(a.split("#")[0].rstrip(), b.split("#")[0].rstrip())
                                          for a, b in zip(before, after) if a != b] == [("    lr: 0.5", "    lr: 0.3")]
    assert snakemake_plan(built) == set()


# --- all three tasks: the same numbers from both doors -----------------------------------------------------------

@pytest.mark.slow
def test_snakemake_and_dvc_produce_identical_metrics_and_mlflow_runs(tmp_path):
    smk = make_project(tmp_path / "smk")
    log = run(["snakemake", "--cores", "2"], smk)
    forked = re.search(r"flexheads warm server: (\d+) command\(s\) forked(.*)", log)  # Snakemake's jobs ran warm
    assert forked and int(forked[1]) >= len(metrics_of(smk)) and "cold" not in forked[2], log[-2000:]
    dvc = make_project(tmp_path / "dvc")
    run(["dvc", "repro"], dvc)

    params = load_params(smk / "params.yaml")
    assert {m["task"] for m in metrics_of(smk).values()} == {"pose3d", "pose2d", "cxr"}
    assert metrics_of(smk) == metrics_of(dvc)
    figures = [spec.name for spec in figure_plan(params, smk / "metrics", smk / "models")]
    assert {"positional_encoding", "pose3d_attention", "pose2d_skeletons", "cxr_gradcam"} <= set(figures)
    for project in (smk, dvc):
        for task in params.experiment.tasks:
            table = (project / f"reports/tables/{task}.md").read_text()
            assert all(f"| {r.attention} | {r.regime} |" in table for r in params.runs() if r.task == task)
        assert (project / "reports/tables/summary.md").stat().st_size > 0
        for name in figures:  # every figure of the report, drawn from the DAG's outputs
            assert all((project / f"reports/figures/{name}{suffix}").stat().st_size > 0 for suffix in (".png", ".pdf"))
        page = (project / "reports/index.html").read_text()
        assert page.count("<img") >= len(figures) and "<table" in page
        assert stale_stages(project) == set() and snakemake_plan(project) == set()

    # Snakemake's report holds the report stage's tables and figures
    run(["snakemake", "--report", "report.zip"], smk)
    listing = run(["python", "-m", "zipfile", "-l", "report.zip"], smk)
    assert "summary.csv" in listing and "pose3d_curves.png" in listing and "index.html" in listing

    # parallel Snakemake trainings all reached the SQLite store, each as one run with tags and metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smk / 'mlruns/mlflow.db'}")
    main_metric = {"pose3d": "test_mpjpe", "pose2d": "test_AP", "cxr": "test_mean_auroc"}
    for task in params.experiment.tasks:
        mlflow_runs = client.search_runs([client.get_experiment_by_name(task).experiment_id])
        expected = sorted(r.name for r in params.all_runs() if r.task == task)
        assert sorted(r.info.run_name for r in mlflow_runs) == expected
        steps = getattr(params.train, task).steps
        for r in mlflow_runs:
            assert r.info.status == "FINISHED"
            assert {"task", "attention", "regime", "seed", "git_commit", "params_hash"} <= set(r.data.tags)
            assert main_metric[task] in r.data.metrics
            assert len(client.get_metric_history(r.info.run_id, "loss")) == steps
    report_runs = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    assert len(report_runs) == 1 and report_runs[0].info.status == "FINISHED"
    assert "index.html" in {a.path for a in client.list_artifacts(report_runs[0].info.run_id)}
