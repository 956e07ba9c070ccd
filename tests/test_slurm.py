"""The Slurm profile on a real Slurm: the tiny DAG, every stage an `sbatch` job, gives a local run's metrics.

A one-node cluster of pipeline/cluster/local-slurm.sh (munged, MariaDB + slurmdbd, slurmctld, slurmd) runs the jobs
the executor plugin submits; each job re-runs Snakemake on the node, which runs the stage's `flexheads` command
inside the job's allocation. Needs root and the cluster's Debian packages (`local-slurm.sh install`); skipped
otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_orchestration import REPO, make_project, run, snakemake_plan, stale_stages

from flexheads.dag import TIMESTAMP, read_stages

CLUSTER = REPO / "pipeline/cluster/local-slurm.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
RUNTIME = {"download": 10, "prepare": 11, "train": 12, "evaluate": 13, "report": 14}  # minutes: tell kinds apart


def one_run(raw: dict) -> None:
    """pose3d, one attention × regime, no baseline: download, prepare, train, evaluate, report."""
    raw["experiment"].update(tasks=["pose3d"], attention=["standard"], regimes=["noam"])
    raw["train"]["pose3d"].update(steps=20, eval_every=10, log_every=10)
    raw["baselines"] = {}


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[None]:
    """A local cluster: the one running (`.ci/run` starts one), else one started in a fresh folder and stopped."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (pipeline/cluster/local-slurm.sh)")
    missing = [name for name in DAEMONS if not shutil.which(name)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): pipeline/cluster/local-slurm.sh install")
    if running_cluster():
        yield
        return
    state = Path(tempfile.mkdtemp(prefix="flexheads-slurm-"))
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, check=False)
    try:
        if started.returncode != 0:
            pytest.skip(f"the local Slurm cluster did not start: {(started.stderr or started.stdout).strip()}")
        yield
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, check=True)
        shutil.rmtree(state)


def running_cluster() -> bool:
    """Whether a cluster of local-slurm.sh runs: /etc/slurm/slurm.conf links into its folder, every daemon is up."""
    conf = Path("/etc/slurm/slurm.conf")
    if not conf.is_symlink():
        return False
    state = conf.resolve().parent.parent
    status = subprocess.run(["bash", str(CLUSTER), "status", str(state)], capture_output=True, check=False)
    return status.returncode == 0


def cluster_profile(folder: Path) -> Path:
    """A profile laid over pipeline/profiles/slurm for this small node: its resources and a quick first status
    check (the jobs take seconds, not hours)."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "slurm-init-seconds-before-status-checks": 2,
        "set-resources": {kind: {"mem_mb": 1000, "runtime": minutes, "cpus_per_task": 1}
                          for kind, minutes in RUNTIME.items()},
    }))
    return folder


def slurm_jobs(run_id: str) -> dict[str, tuple[str, str]]:
    """Rule → (state, time limit) of each job Slurm's accounting holds for the Snakemake run ``run_id``."""
    table = subprocess.run(["sacct", "-X", "-n", "-P", "--name", run_id, "--format=Comment,State,Timelimit"],
                           capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in table.splitlines() if line]
    return {comment.removeprefix("rule_"): (state, limit) for comment, state, limit in rows}


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != TIMESTAMP}


@pytest.mark.slow
def test_every_stage_runs_as_an_sbatch_job_and_gives_the_local_runs_metrics(slurm_cluster, tmp_path):
    local, cluster = make_project(tmp_path / "local", one_run), make_project(tmp_path / "cluster", one_run)
    # the local run goes alongside: the Slurm run mostly waits for its jobs' start-up and its status checks
    local_run = subprocess.Popen(["snakemake", "--cores", "2"], cwd=local, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    env = {**os.environ, "SBATCH_PARTITION": "local", "SBATCH_ACCOUNT": "flexheads"}  # what a user sets
    log = run(["snakemake", "--profile", "pipeline/profiles/slurm", "--profile", str(cluster_profile(tmp_path / "p"))],
              cluster, env=env)
    local_log = local_run.communicate()[0]
    assert local_run.returncode == 0, local_log[-3000:]

    stages = read_stages(cluster)
    jobs = slurm_jobs(re.search(r"SLURM run ID: (\S+)", log)[1])
    assert set(jobs) == {stage.rule_name for stage in stages}, log[-3000:]
    for stage in stages:  # each job sized by the profile's entry for its kind (common.smk: kind_resources)
        assert jobs[stage.rule_name] == ("COMPLETED", f"00:{RUNTIME[stage.kind]}:00"), stage.name
    assert "warm server" not in log  # the commands ran in the jobs, not forked on the submit host

    assert files_under(cluster / "metrics") == files_under(local / "metrics")
    assert stale_stages(cluster) == set() and snakemake_plan(cluster) == set()
