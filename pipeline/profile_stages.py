"""Where the default pipeline's CPU-seconds go: each stage of chosen runs, run by hand through the CLI.

Runs ``flexheads download``/``prepare`` for every task of the runs, then ``flexheads train`` and ``evaluate`` of
each run, one process at a time, in the project folder given (the paths of dvc.yaml), and prints per stage the
process's CPU seconds (user + sys of the child, from ``getrusage(RUSAGE_CHILDREN)`` deltas) and wall seconds,
then the CPU-seconds of a bare ``import`` of what each stage kind loads (the fixed cost every process pays).
With ``--cprofile DIR`` each stage also writes ``DIR/<stage>.prof`` (read with ``python -m pstats``).

    python pipeline/profile_stages.py --project . pose3d-standard-noam-0 cxr-flexible-radam-0
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPORTS = {  # stage kind → the modules its process imports before it starts work
    "cli": "import flexheads.cli",
    "train/evaluate": "import flexheads.cli, flexheads.stages",
    "train + tracking": "import flexheads.cli, flexheads.stages, flexheads.tracking",
    "report": "import flexheads.cli, flexheads.report.build",
}


def measured(command: list[str], cwd: Path, profile: Path | None) -> dict[str, float]:
    """CPU seconds (user + sys) and wall seconds of ``command`` run to completion in ``cwd``."""
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "flexheads.cli", *command[1:]]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": round(cpu, 2), "wall_s": round(time.perf_counter() - started, 2)}


def stage_commands(run: str) -> dict[str, list[str]]:
    task = run.split("-")[0]
    data, stats = f"data/prepared/{task}.h5", f"data/prepared/{task}.stats.json"
    return {
        f"train {run}": ["flexheads", "train", run, "--data", data, "--out", f"models/{run}", "--no-progress"],
        f"evaluate {run}": ["flexheads", "evaluate", run, "--data", data, "--stats", stats, "--model",
                            f"models/{run}", "--out", f"metrics/{run}.json"],
    }


def data_commands(task: str) -> dict[str, list[str]]:
    return {
        f"download {task}": ["flexheads", "download", task, "--out", f"data/raw/{task}"],
        f"prepare {task}": ["flexheads", "prepare", task, "--raw", f"data/raw/{task}", "--out",
                            f"data/prepared/{task}.h5", "--stats", f"data/prepared/{task}.stats.json"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run names, e.g. pose3d-standard-noam-0")
    parser.add_argument("--project", type=Path, default=Path("."), help="the project folder (params.yaml)")
    parser.add_argument("--skip-data", action="store_true", help="reuse data/prepared as it is")
    parser.add_argument("--cprofile", type=Path, help="write one cProfile file per stage into this folder")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    commands: dict[str, list[str]] = {}
    if not args.skip_data:
        for task in dict.fromkeys(run.split("-")[0] for run in args.runs):
            commands |= data_commands(task)
    for run in args.runs:
        commands |= stage_commands(run)
    if args.cprofile:
        args.cprofile.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, command in commands.items():
        profile = args.cprofile / f"{name.replace(' ', '_')}.prof" if args.cprofile else None
        figures[name] = measured(command, args.project, profile)
        print(f"{name:<45} {figures[name]['cpu_s']:8.2f} CPU-s {figures[name]['wall_s']:8.2f} wall-s", flush=True)
    for kind, statement in IMPORTS.items():
        figures[f"import {kind}"] = measured([sys.executable, "-c", statement], args.project, None)
        print(f"{'import ' + kind:<45} {figures['import ' + kind]['cpu_s']:8.2f} CPU-s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
