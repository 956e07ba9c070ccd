"""The pipeline DAG as DVC resolves it from ``dvc.yaml``, for the Snakefile: one rule per stage, and DVC's verdict.

``dvc.yaml`` (a matrix over params.yaml) is the one description of the DAG: stages, commands, dependencies, outputs
and the params keys each stage reads.  The Snakefile builds one rule per resolved stage from ``read_stages`` with
the same command and files, so the two front doors cannot drift apart.

Staleness is decided once, by DVC, for both doors.  ``dvc.lock`` records what produced each output (dependency
hashes, params values, command); every Snakemake job ends with ``dvc commit`` of its stage, so the lock stays the
record whichever door ran the stage.  When Snakemake parses the workflow, ``settle`` asks DVC which stages are out
of date and gives each rule a marker input that is new exactly when DVC says so (code and params reach a rule only
through it: its source dependencies are ``ancient``).  For the stages DVC finds up to date it also brings output
timestamps in order where ``dvc repro`` left an output older than its inputs (an upstream stage rewrote identical
bytes, and DVC, comparing hashes, rightly skipped the stage).  So ``snakemake -n`` plans the stages ``dvc status``
lists plus everything downstream of them: what ``dvc repro`` may rerun.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path

from flexheads.config import rule_name

MARKER_DIR = Path(".snakemake/flexheads/stale")  # one file per stage; new content and mtime: DVC says stale
TIMESTAMP = ".snakemake_timestamp"  # Snakemake's timestamp of a folder output (ignored by DVC and git)


@dataclass(frozen=True)
class Stage:
    """One resolved DVC stage: ``name`` as DVC spells it (``train@pose3d-standard-noam-0``)."""

    name: str
    cmd: str
    deps: tuple[str, ...]  # files and folders, relative to the project root
    outs: tuple[str, ...]

    @property
    def rule_name(self) -> str:
        """A Snakemake rule name: ``train@pose3d-standard-noam-0`` → ``train__pose3d_standard_noam_0``."""
        return rule_name(self.name)

    @property
    def kind(self) -> str:
        """``train`` for ``train@…`` and ``train_baseline@…``."""
        return self.name.partition("@")[0].removesuffix("_baseline")

    @property
    def slug(self) -> str:
        """Path-safe name for logs and benchmarks: ``train/pose3d-standard-noam-0``."""
        kind, _, key = self.name.partition("@")
        return f"{kind}/{key}" if key else kind

    @property
    def log(self) -> str:
        return f"logs/{self.slug}.log"

    @property
    def marker(self) -> Path:
        """The file whose content and timestamp carry DVC's verdict to Snakemake (``settle``)."""
        return MARKER_DIR / self.rule_name

    @property
    def benchmark(self) -> str:
        """Snakemake's benchmark table; Snakemake dates a job's outputs by it too."""
        return f"benchmarks/{self.slug}.tsv"


def is_folder(path: str) -> bool:
    """Outputs named without a suffix are folders (``data/raw/pose3d``, ``metrics/<run>``, ``reports/figures``)."""
    return not Path(path).suffix


def read_stages(root: Path) -> list[Stage]:
    """Every stage of ``root/dvc.yaml`` as DVC resolves it, in DVC's order."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [Stage(name=stage.name, cmd=" ".join(stage.cmd.split()),
                      deps=tuple(str(dep.def_path) for dep in stage.deps if not _is_params(dep)),
                      outs=tuple(str(out.def_path) for out in stage.outs))
                for stage in repo.index.stages]


def stage_inputs(stage: Stage, stages: list[Stage]) -> list[str]:
    """The files Snakemake must wait for: each dependency, or, for a folder holding other stages' outputs (the
    report's ``metrics`` and ``models``), those outputs, so the report waits for every run."""
    produced = [out for other in stages for out in other.outs]
    inputs = []
    for dep in stage.deps:
        folder = posixpath.normpath(dep) + "/"  # DVC's paths are relative and POSIX: a prefix test is `in parents`
        inside = [out for out in produced if posixpath.normpath(out).startswith(folder)]
        inputs.extend(inside if dep not in produced and inside else [dep])
    return inputs


def stale_stages(root: Path) -> set[str]:
    """Names of the stages ``dvc status`` lists (changed dependencies, params, command or outputs; never run)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {_stage_name(key) for key in repo.status()}


def settle(root: Path, stages: list[Stage]) -> dict[str, Path]:
    """Ask DVC what is stale, order the timestamps of what is not, and return each stage's marker file."""
    stale = stale_stages(root)
    produced = {out for stage in stages for out in stage.outs}
    for stage in topological_order(stages):
        if stage.name in stale:
            continue
        inputs = [root / path for path in stage_inputs(stage, stages) if path in produced]
        outputs = [root / path for path in (*stage.outs, stage.benchmark)]
        newest_input = max(map(_snakemake_mtime, inputs), default=0.0)
        if any(_snakemake_mtime(out) < newest_input for out in outputs):
            now = time.time()
            for out in outputs:
                _set_snakemake_mtime(out, now)
    return mark_stale(root, stages, stale)


def topological_order(stages: list[Stage]) -> list[Stage]:
    """Stages ordered so that every stage comes after the stages whose outputs it reads."""
    producer = {out: stage.name for stage in stages for out in stage.outs}
    upstream = {stage.name: {producer[p] for p in stage_inputs(stage, stages) if p in producer} for stage in stages}
    ordered: list[Stage] = []
    done: set[str] = set()
    while len(ordered) < len(stages):
        ready = [s for s in stages if s.name not in done and upstream[s.name] <= done]
        if not ready:
            raise ValueError(f"dvc.yaml has a cycle among {sorted(set(upstream) - done)}")
        ordered += ready
        done |= {s.name for s in ready}
    return ordered


def mark_stale(root: Path, stages: list[Stage], stale: set[str]) -> dict[str, Path]:
    """Stage name → its marker file: rewritten now for a stale stage, dated the epoch otherwise.

    A stale stage's marker gets new content too: Snakemake ignores a newer input whose checksum it has seen."""
    (root / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    for stage in stages:
        marker = root / stage.marker
        if stage.name in stale:
            marker.write_text(f"stale since {time.time_ns()}\n")
        else:
            marker.touch()
            os.utime(marker, (0, 0))
    return {stage.name: stage.marker for stage in stages}


def _snakemake_mtime(path: Path) -> float:
    """The timestamp Snakemake compares: a folder's ``.snakemake_timestamp`` when it has one (0 when missing)."""
    stamp = path / TIMESTAMP
    target = stamp if path.is_dir() and stamp.exists() else path
    return target.stat().st_mtime if target.exists() else 0.0


def _set_snakemake_mtime(path: Path, when: float) -> None:
    if not path.exists():
        return
    target = path / TIMESTAMP if path.is_dir() else path
    target.touch()
    os.utime(target, (when, when))


def _stage_name(status_key: str) -> str:
    """``dvc.yaml:train@x`` (as ``repo.status`` may key it) → ``train@x``."""
    return status_key.rpartition(":")[2]


def _is_params(dep: object) -> bool:
    from dvc.dependency.param import ParamsDependency

    return isinstance(dep, ParamsDependency)
