"""Where the default pipeline's CPU-seconds go: chosen stages of dvc.yaml, run by hand one at a time.

Runs each named stage's command as DVC resolves it (``flexheads.dag.read_stages``: the same command, paths and
params as ``dvc repro`` and Snakemake), in order, in the project folder, and prints its CPU seconds (user + sys of
the child, from ``getrusage(RUSAGE_CHILDREN)`` deltas) and wall seconds; then the CPU-seconds of a bare ``import``
of what each kind of stage loads, the fixed cost every process pays.  With ``--cprofile DIR`` each stage also
writes ``DIR/<stage>.prof`` (read it with ``python -m pstats``).  Stages run whatever their state: name the ones
upstream first (``download@pose3d prepare@pose3d train@pose3d-standard-noam-0 ...``).

    python pipeline/profile_stages.py download@pose3d prepare@pose3d train@pose3d-standard-noam-0 \\
        evaluate@pose3d-standard-noam-0
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from flexheads.dag import read_stages

IMPORTS = {  # kind of stage → the modules its process imports before it starts work
    "cli": "import flexheads.cli",
    "train/evaluate": "import flexheads.cli, flexheads.stages",
    "train with MLflow": "import flexheads.cli, flexheads.stages, mlflow",
    "report": "import flexheads.cli, flexheads.report.tables, flexheads.report.figures",
}


def measured(command: list[str], cwd: Path) -> dict[str, float]:
    """CPU seconds (user + sys) and wall seconds of ``command`` run to completion in ``cwd``."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": round(cpu, 2), "wall_s": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+", help="DVC stage names, e.g. train@pose3d-standard-noam-0")
    parser.add_argument("--project", type=Path, default=Path("."), help="the project folder (dvc.yaml)")
    parser.add_argument("--cprofile", type=Path, help="write one cProfile file per stage into this folder")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    commands = {stage.name: shlex.split(stage.cmd) for stage in read_stages(args.project)}
    unknown = [name for name in args.stages if name not in commands]
    if unknown:
        parser.error(f"not stages of {args.project / 'dvc.yaml'}: {', '.join(unknown)}")
    if args.cprofile:
        args.cprofile.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name in args.stages:
        command = commands[name]
        if args.cprofile:  # `flexheads ...` → the same command under cProfile
            profile = args.cprofile.resolve() / f"{name.replace('@', '_')}.prof"
            command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "flexheads.cli", *command[1:]]
        figures[name] = measured(command, args.project)
        print(f"{name:<45} {figures[name]['cpu_s']:8.2f} CPU-s {figures[name]['wall_s']:8.2f} wall-s", flush=True)
    for kind, statement in IMPORTS.items():
        figures[f"import {kind}"] = measured([sys.executable, "-c", statement], args.project)
        print(f"{'import ' + kind:<45} {figures['import ' + kind]['cpu_s']:8.2f} CPU-s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
