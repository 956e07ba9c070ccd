"""The pipeline DAG as DVC resolves it from ``dvc.yaml``, for the Snakefile: one rule per stage, and DVC's verdict.

``dvc.yaml`` (a matrix over params.yaml) is the one description of the DAG: stages, commands, dependencies, outputs
and the params keys each stage reads.  The Snakefile builds one rule per resolved stage from ``read_stages`` with
the same command and files, so the two front doors cannot drift apart.

Staleness is decided once, by DVC, for both doors.  ``dvc.lock`` records what produced each output (dependency
hashes, params values, command), whichever door ran the stage.  Snakemake's jobs end by marking their stage
finished; ``record_finished`` commits the marked stages to ``dvc.lock`` in one ``dvc commit`` when Snakemake ends,
done or failed, and, after a crash, when it next parses the workflow (a ``dvc commit`` per job re-read and rewrote
the whole lock file: 2.8–4.0 CPU-s each on the default DAG).  It records them only while params.yaml, dvc.yaml and the
source dependencies are as they were when their run started (``source_stamp``); otherwise it drops the marks, DVC
finds those stages stale, and both doors rerun them: nothing is recorded as made from inputs it did not see.

When Snakemake parses the workflow, ``settle`` asks DVC which stages are out of date and gives each rule a marker
input that is new exactly when DVC says so (code and params reach a rule only through it: its source dependencies
are ``ancient``).  For the stages DVC finds up to date it also brings output timestamps in order where ``dvc repro``
left an output older than its inputs (an upstream stage rewrote identical bytes, and DVC, comparing hashes, rightly
skipped the stage).  So ``snakemake -n`` plans the stages ``dvc status`` lists plus everything downstream of them:
what ``dvc repro`` may rerun.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flexheads.config import rule_name

MARKER_DIR = Path(".snakemake/flexheads/stale")  # one file per stage; new content and mtime: DVC says stale
FINISHED_DIR = Path(".snakemake/flexheads/finished")  # one empty file per stage a job finished, until recorded
SOURCES_AT_START = FINISHED_DIR / ".sources"  # source_stamp when the marks' run started
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
    def finished(self) -> Path:
        """The file a Snakemake job creates when its command succeeded: the stage awaits ``record_finished``."""
        return FINISHED_DIR / self.rule_name

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


def start_recording(root: Path, stages: list[Stage]) -> None:
    """At the start of a Snakemake run: an empty folder for the jobs' finished marks, and the sources' stamp."""
    (root / FINISHED_DIR).mkdir(parents=True, exist_ok=True)
    _clear_marks(root)
    (root / SOURCES_AT_START).write_text(source_stamp(root, stages))


def record_finished(root: Path, stages: list[Stage]) -> str | None:
    """Commit the stages marked finished to dvc.lock (``record_stages``) if the sources are as they were when their
    run started, and clear the marks; return what the user must know (marks dropped), else None."""
    finished = [stage.name for stage in stages if (root / stage.finished).exists()]
    if not finished:
        return None
    started = root / SOURCES_AT_START
    unchanged = started.exists() and started.read_text() == source_stamp(root, stages)
    if unchanged:
        record_stages(root, finished)
    _clear_marks(root)
    return None if unchanged else (
        f"params.yaml, dvc.yaml or the code changed since Snakemake started: the {len(finished)} stage(s) it "
        "finished are not recorded in dvc.lock, so both front doors will run them again.")


def source_stamp(root: Path, stages: list[Stage]) -> str:
    """A digest of what DVC records beside the outputs and no stage writes: params.yaml, dvc.yaml and every file of
    a dependency no stage produces (the code links, external data), by path, size and modification time."""
    produced = [posixpath.normpath(out) for stage in stages for out in stage.outs]

    def overlaps(dep: str) -> bool:  # the dependency is an output, inside one, or a folder holding one
        dep = posixpath.normpath(dep)
        return any(dep == out or dep.startswith(out + "/") or out.startswith(dep + "/") for out in produced)

    sources = {"params.yaml", "dvc.yaml"} | {dep for stage in stages for dep in stage.deps if not overlaps(dep)}
    digest = hashlib.sha256()
    for source in sorted(sources):
        path = root / source
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            stat = file.stat() if file.exists() else None
            digest.update(f"{file.relative_to(root)}\0{stat and (stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def record_stages(root: Path, names: Sequence[str]) -> None:
    """``dvc commit --force --no-relink`` of exactly the named stages, in one go: DVC's lock taken once (waiting
    for it), each stage's dependencies and outputs hashed, and each dvc.yaml's lock file rewritten once."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    with Repo(str(root), _wait_for_lock=True) as repo, lock_repo(repo):
        by_name = {stage.name: stage for stage in repo.index.stages}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise DvcException(f"no stage named {', '.join(unknown)} in {root / 'dvc.yaml'}")
        lock_files: dict[str, tuple[object, list]] = {}
        for stage in map(by_name.get, names):
            stage.save()
            stage.commit(relink=False)
            lock_files.setdefault(stage.dvcfile.path, (stage.dvcfile, []))[1].append(stage)
        for dvcfile, written in lock_files.values():
            dvcfile.dump_stages(written, update_pipeline=False)


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


def _clear_marks(root: Path) -> None:
    """Remove the finished marks and the sources' stamp (``start_recording``)."""
    for mark in (root / FINISHED_DIR).iterdir():
        mark.unlink()


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
