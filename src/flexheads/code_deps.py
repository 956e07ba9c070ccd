"""The flexheads modules each pipeline stage runs: the code dependencies of ``dvc.yaml``.

A stage's code is every flexheads module its process can load: the executable (``__main__.py``, ``warm.py``),
``cli.py`` with its top-level imports, the imports inside the stage's CLI command, the modules the task registry
loads by name (the stage's own task's ``flexheads.tasks.<task>`` and, to validate params.yaml, every built-in
task's ``flexheads.tasks.settings.<task>``),
and from there every import statement of every module reached, including imports inside functions, so a code path
the synthetic default does not take (a real-data download) still counts, and every package ``__init__`` on the way.

DVC cannot template a per-task list of files into ``deps:``, so each stage kind and task gets a folder of relative
symlinks, ``pipeline/code/<kind>-<task>/`` (``pipeline/code/report/`` for the report), mirroring
``src/flexheads/``.  ``dvc.yaml`` names that folder as one dependency and DVC hashes the files the links point to,
so an edit of a module makes stale exactly the stages whose process loads it.  ``flexheads code-deps`` rewrites
the folders after imports change; ``flexheads code-deps --check`` (and a test) fails while they are out of date.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
from pathlib import Path

from flexheads.tasks import BUILTIN_TASKS

PACKAGE = "flexheads"
SOURCE_ROOT = Path(__file__).resolve().parent  # src/flexheads
CODE_DIR = Path("pipeline/code")
TASK_STAGES = ("download", "prepare", "train", "evaluate")  # CLI commands that run one task's module
REPORT_STAGE = "report"  # runs every task's module (their report hooks)


def stage_code_dirs() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Folder name under ``pipeline/code`` → (CLI command, task modules it loads by name)."""
    dirs = {f"{kind}-{task}": (kind, (task,)) for kind in TASK_STAGES for task in BUILTIN_TASKS}
    dirs[REPORT_STAGE] = (REPORT_STAGE, BUILTIN_TASKS)
    return dirs


def stage_modules(command: str, tasks: tuple[str, ...]) -> set[str]:
    """Dotted names of every flexheads module the process of ``flexheads <command>`` can load."""
    cli = ast.parse(module_file("flexheads.cli").read_text())
    function = next((node for node in cli.body if isinstance(node, ast.FunctionDef) and node.name == command), None)
    if function is None:
        raise ValueError(f"flexheads.cli has no command function '{command}'")
    roots = _imports(cli.body, "flexheads.cli", nested=False) | _imports([function], "flexheads.cli")
    roots |= {f"flexheads.tasks.{task}" for task in tasks}
    roots |= {f"flexheads.tasks.settings.{task}" for task in BUILTIN_TASKS}
    executable = {"flexheads.__main__", "flexheads.warm"}  # run the command here or in a warm server's child
    return _closure(roots) | {"flexheads.cli"} | executable  # cli's other commands' imports are not this stage's


def stage_files(command: str, tasks: tuple[str, ...]) -> list[Path]:
    """The source files of ``stage_modules``, relative to ``src/flexheads``, sorted."""
    return sorted(module_file(name).relative_to(SOURCE_ROOT) for name in stage_modules(command, tasks))


def code_hash(command: str, task: str) -> str:
    """SHA-256 over the path and bytes of every source file ``flexheads <command>`` runs for ``task``: the version
    of the code behind a stage's result (a training checkpoint resumes only under the same)."""
    digest = hashlib.sha256()
    for rel in stage_files(command, (task,)):
        digest.update(f"\0{rel.as_posix()}\0".encode())
        digest.update((SOURCE_ROOT / rel).read_bytes())
    return digest.hexdigest()


def write_code_dirs(project: Path) -> list[Path]:
    """(Re)write every ``pipeline/code/<stage>/`` folder of ``project`` as relative links into ``src/flexheads``."""
    written = []
    for name, (command, tasks) in stage_code_dirs().items():
        folder = project / CODE_DIR / name
        shutil.rmtree(folder, ignore_errors=True)
        for rel in stage_files(command, tasks):
            link = folder / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            target = project / "src" / PACKAGE / rel
            link.symlink_to(os.path.relpath(target, link.parent))
        written.append(folder)
    return written


def stale_code_dirs(project: Path) -> dict[str, str]:
    """Folder → what is wrong with it, for every ``pipeline/code`` folder that does not match the imports."""
    problems = {}
    for name, (command, tasks) in stage_code_dirs().items():
        folder = project / CODE_DIR / name
        expected = {rel.as_posix() for rel in stage_files(command, tasks)}
        links = folder.rglob("*") if folder.is_dir() else []
        found = {p.relative_to(folder).as_posix() for p in links if p.is_symlink()}
        broken = {rel for rel in found & expected
                  if (folder / rel).resolve() != (project / "src" / PACKAGE / rel).resolve()}
        if expected != found or broken:
            missing, extra = sorted(expected - found), sorted(found - expected)
            problems[str(CODE_DIR / name)] = "; ".join(filter(None, [
                f"missing {missing}" if missing else "", f"not imported {extra}" if extra else "",
                f"wrong target {sorted(broken)}" if broken else ""]))
    return problems


def _closure(roots: set[str]) -> set[str]:
    """Every module reachable from ``roots`` through import statements, with the packages containing them."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        for module in _with_parents(name):
            if module in seen or not _exists(module):  # a namespace package (no __init__.py) runs no code
                continue
            seen.add(module)
            tree = ast.parse(module_file(module).read_text())
            todo.extend(_imports(tree.body, module))
    return seen


def _imports(nodes: list[ast.stmt], module: str, nested: bool = True) -> set[str]:
    """Flexheads modules imported by ``nodes`` (walked into functions and classes when ``nested``)."""
    statements = [n for node in nodes for n in (ast.walk(node) if nested else [node])]
    found = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if _is_ours(alias.name)}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            if not _is_ours(base):
                continue
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if _exists(f"{base}.{alias.name}")}
    return found


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _is_ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _exists(name: str) -> bool:
    try:
        module_file(name)
    except FileNotFoundError:
        return False
    return True


def module_file(name: str) -> Path:
    """``flexheads.nn.attention`` → ``src/flexheads/nn/attention.py`` (a package → its ``__init__.py``)."""
    base = SOURCE_ROOT.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no source file for module {name}")
