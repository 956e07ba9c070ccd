"""The whole bench: for each task and size, one interleaved timing of every candidate, then JSON and Markdown.

Per task and size ("default": params.yaml's model; "thesis": params/thesis.yaml's,
:func:`flexheads.bench.models.thesis_size`) the candidates are the ``standard``, ``flexible`` and
``flexible_equal_flops`` models (:mod:`flexheads.bench.models`), for cxr the timm twin of the standard ViT, and
where the plan says so the standard model's loss under ``torch.compile``: each trains on one fixed batch already
on the device, so the ratios compare like with like.  One more candidate, ``FED`` (not in the throughput table),
trains the standard model on each step's batch from the real input pipeline (phases ``data`` and ``step``,
:mod:`flexheads.bench.data`): its data phase evicts the step's working set from the caches, so timing the
standard model only this way biased every ratio against it.  Every candidate
trains with the bench's regime (:func:`bench_regime`) and optimiser at the same batch size.

    samples/s = batch size / median seconds of the "step" phase (forward + backward + optimiser step)
    <a>_vs_<b>_ratio = samples/s of a / samples/s of b    (e.g. vit_thesis_vs_timm_ratio: project ViT ÷ timm)
    data_stall_fraction = t_data / (t_data + t_step)     (FED's "data" and "step" medians)

Results go to ``<out>/<device>.json`` and ``<out>/<device>.md`` (device ``cpu`` or ``cuda``), both atomically.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from flexheads.bench.data import (
    FULL_COUNTS, QUICK_COUNTS, FedStep, batch_source, data_settings, loader_name, prepared_data, stall_fraction,
)
from flexheads.bench.markdown import markdown
from flexheads.bench.models import (
    Size, parameter_count, size_of, timm_twin, timm_vit_class, tokens, training_step, variants,
)
from flexheads.bench.timing import Timing, interleaved
from flexheads.config import Params
from flexheads.errors import UserError
from flexheads.io import write_json, write_text
from flexheads.nn import attention_flops
from flexheads.tasks import BUILTIN_TASKS, get_task
from flexheads.train import pick_device, to_device

SIZES = ("default", "thesis")
FED = "standard_fed"  # the standard model on batches from the real input pipeline: the data-stall candidate
FORMULAS = {
    "samples_per_s": "batch_size / median seconds of the step phase (forward + backward + optimiser step)",
    "ratio": "<a>_vs_<b>_ratio = samples/s of a / samples/s of b",
    "data_stall_fraction": "t_data / (t_data + t_step): median data phase (next batch on the device) and median "
                           "step of the standard model fed by the real input pipeline",
    "attention_flops_per_layer": "8 N d I + 4 N^2 I per sample, forward (N tokens, d d_model, I heads x d_head)",
}


@dataclass(frozen=True)
class Rounds:
    """The interleaved schedule of one size (:func:`flexheads.bench.timing.interleaved`)."""

    warmup: int
    repeats: int
    steps: int  # consecutive steps per candidate and round


@dataclass(frozen=True)
class Plan:
    """What one bench run measures and how long it times it."""

    tasks: tuple[str, ...]
    sizes: tuple[str, ...]  # of SIZES
    rounds: Mapping[str, Rounds]  # size → schedule
    thesis_batch: Mapping[str, int]  # task → batch size at the thesis size (the default size: params.yaml's)
    data_counts: Mapping[str, Mapping[str, Any]]  # task → data.<task>.synthetic overrides
    compile_sizes: tuple[str, ...]  # sizes at which torch.compile is timed
    compile_skipped: str  # why it is not timed at the other sizes


QUICK_ROUNDS = {"default": Rounds(warmup=1, repeats=5, steps=2), "thesis": Rounds(warmup=1, repeats=3, steps=1)}
FULL_ROUNDS = {"default": Rounds(warmup=3, repeats=7, steps=5), "thesis": Rounds(warmup=2, repeats=5, steps=3)}
THESIS_BATCH = {
    "cuda": {"pose3d": 256, "pose2d": 32, "cxr": 128},
    "cpu": {"pose3d": 64, "pose2d": 4, "cxr": 4},
    "cpu_quick": {"pose3d": 32, "pose2d": 2, "cxr": 2},  # a ViT-S/16 step of 2 images: ~1 s on 2 idle cores
}


def default_plan(device_type: str, quick: bool, tasks: tuple[str, ...] = BUILTIN_TASKS) -> Plan:
    """The plan of ``flexheads bench`` for ``tasks`` (``run_bench``: params.yaml's built-in ones): full, or
    ``quick`` (fewer rounds, tiny data; on CPU thesis batches of a few samples and no torch.compile, which takes
    minutes per model on a few cores)."""
    if not quick:
        return Plan(tasks, SIZES, FULL_ROUNDS, THESIS_BATCH[device_type], FULL_COUNTS, SIZES, "")
    if device_type == "cpu":
        return Plan(tasks, SIZES, QUICK_ROUNDS, THESIS_BATCH["cpu_quick"], QUICK_COUNTS, (),
                    "skipped under --quick on CPU: inductor compiles a model's forward and backward for minutes on "
                    "a few cores")
    return Plan(tasks, SIZES, QUICK_ROUNDS, THESIS_BATCH[device_type], QUICK_COUNTS, ("thesis",),
                "skipped under --quick: timed at the thesis sizes only")


def bench_regime(params: Params) -> str:
    """The regime every candidate trains with: the first of params.yaml's regimes with Pre-LN (the placement of
    timm's ViT, so the timm comparison is like for like), else the experiment's first regime."""
    return next((name for name, regime in params.regimes.items() if regime.norm == "pre"),
                params.experiment.regimes[0])


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextmanager
def device_settings(device: torch.device, threads: int) -> Iterator[dict[str, Any]]:
    """torch's thread count and, on CUDA, TF32 matmuls and cuDNN autotuning for the bench; restored afterwards.
    Yields the settings, for the JSON."""
    saved_threads = torch.get_num_threads()
    saved_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                   torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    settings: dict[str, Any] = {"threads": threads, "mkl_cbwr": os.environ.get("MKL_CBWR", "")}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        settings |= {"autocast": "bfloat16", "allow_tf32": True, "cudnn_benchmark": True}
    try:
        yield settings
    finally:
        torch.set_num_threads(saved_threads)
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved_flags


def _sync_of(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _first_compiled_step(step: Callable[[Any], None], batch: Any, sync: Callable[[], None]) -> float | str:
    """Seconds of the first step of a ``torch.compile`` candidate (compilation included), or why it failed."""
    start = time.perf_counter()
    try:
        step(batch)
        sync()
    except Exception as err:  # noqa: BLE001  (any backend failure: compile is an optional measurement)
        lines = str(err).strip().splitlines()
        return f"torch.compile failed: {type(err).__name__}: {lines[0] if lines else ''}"
    return time.perf_counter() - start


def measure_group(params: Params, task: str, size: Size, size_name: str, h5: Path, plan: Plan, regime: str,
                  device: torch.device, timm_vit: type | str) -> dict[str, Any]:
    """Time every candidate of ``task`` at ``size`` (named ``size_name``) on the prepared file ``h5`` (module
    docstring)."""
    hooks, rounds = get_task(task), plan.rounds[size_name]
    batch_size = plan.thesis_batch[task] if size_name == "thesis" else getattr(params.train, task).batch_size
    configs = variants(params, task, regime, size, batch_size)
    standard = configs["standard"]
    batch_at, loss_fn = hooks.training_batches(h5, standard)
    fixed = to_device(batch_at(1), device)
    sync = _sync_of(device)
    torch.manual_seed(0)
    models = {name: hooks.build_model(config, h5).to(device) for name, config in configs.items()}
    heads = {name: config.head_shape for name, config in configs.items()}
    steps = {name: training_step(model, loss_fn, configs[name], device) for name, model in models.items()}
    skipped: dict[str, str] = {}
    if "flexible_equal_flops" not in configs:
        skipped["flexible_equal_flops"] = f"no other head count divides d_model {standard.model.d_model}"
    if task == "cxr" and isinstance(timm_vit, str):
        skipped["timm"] = timm_vit
    elif task == "cxr":
        try:
            twin = timm_twin(models["standard"], timm_vit).to(device)
        except ValueError as err:  # dims timm's ViT cannot take (an MLP width that mlp_ratio does not give)
            skipped["timm"] = str(err)
        else:
            models["timm"], heads["timm"] = twin, heads["standard"]
            steps["timm"] = training_step(twin, loss_fn, standard, device)
    first_compiled: float | str = plan.compile_skipped
    if size_name in plan.compile_sizes:
        compiled = training_step(hooks.build_model(standard, h5).to(device), loss_fn, standard, device,
                                 compile_loss=True)
        first_compiled = _first_compiled_step(compiled, fixed, sync)
        if not isinstance(first_compiled, str):
            steps["compiled"] = compiled
    if isinstance(first_compiled, str):
        skipped["compile"] = first_compiled

    workers = standard.train.loader_workers
    source = batch_source(batch_at, (rounds.warmup + rounds.repeats) * rounds.steps, workers, device)
    fed = FedStep(source, steps["standard"])
    candidates = {**{name: {"step": functools.partial(step, fixed)} for name, step in steps.items()},
                  FED: {"data": fed.data, "step": fed.step}}
    try:
        timings = interleaved(candidates, warmup=rounds.warmup, repeats=rounds.repeats, steps=rounds.steps, sync=sync)
    finally:
        source.close()

    n_tokens, m = tokens(models["standard"]), standard.model
    group: dict[str, Any] = {
        "label": size.label,
        "batch_size": batch_size,
        "model": {"d_model": m.d_model, "n_layers": m.n_layers, "d_ff": m.d_ff, "tokens": n_tokens,
                  **({"overrides": _jsonable(size.model)} if size.model else {})},
        "throughput": {name: _throughput(timings[name]["step"], batch_size, model, heads[name], n_tokens, m.d_model)
                       for name, model in models.items()},
    }
    speed = {name: entry["samples_per_s"] for name, entry in group["throughput"].items()}
    for name in ("flexible", "flexible_equal_flops"):
        if name in speed:
            group[f"{name}_vs_standard_ratio"] = speed[name] / speed["standard"]
    if "timm" in speed:
        group[f"vit_{size.tag}_vs_timm_ratio"] = speed["standard"] / speed["timm"]
    t_data, t_step = timings[FED]["data"], timings[FED]["step"]
    group["data"] = {"loader": loader_name(workers), "data_s": t_data.to_dict(), "step_s_median": t_step.median,
                     "data_stall_fraction": stall_fraction(t_data.median, t_step.median),
                     **({"data_overrides": _jsonable(size.data)} if size.data else {})}
    if "compiled" in timings:
        compiled = timings["compiled"]["step"]
        group["compile"] = {"first_step_s": first_compiled, "step_s": compiled.to_dict(),
                            "samples_per_s": batch_size / compiled.median,
                            "compiled_vs_eager_ratio": batch_size / compiled.median / speed["standard"]}
    if skipped:
        group["skipped"] = skipped
    return group


def _throughput(step: Timing, batch_size: int, model: torch.nn.Module, heads: tuple[int, int], n_tokens: int,
                d_model: int) -> dict[str, Any]:
    """One candidate's entry: its heads, size, attention FLOPs, step times and samples/s."""
    n_heads, d_head = heads
    return {"n_heads": n_heads, "d_head": d_head, "parameters": parameter_count(model),
            "attention_flops_per_layer": attention_flops(n_tokens, d_model, n_heads * d_head),
            "step_s": step.to_dict(), "samples_per_s": batch_size / step.median}


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def run_bench(params: Params, thesis: Params, *, device: str = "auto", quick: bool = False,
              out: Path = Path("reports/bench"), threads: int | None = None, plan: Plan | None = None,
              progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the bench (module docstring) and write ``<out>/<device>.json`` and ``.md``; returns the JSON's dict.

    Args:
        thesis: the params of the thesis size (``params/thesis.yaml``): each task's ``model.<task>`` and input size.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: torch CPU threads (default: every core this process may use).
        plan: what to measure (default :func:`default_plan` of the device and ``quick``).
        progress: called with one line as each task and size starts.
    Raises:
        UserError: ``device`` is ``cuda`` and no CUDA device is present.
    """
    resolved = pick_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    plan = plan or default_plan(resolved.type, quick, tasks=tuple(t for t in params.experiment.tasks
                                                                  if t in thesis.experiment.tasks))
    cores = len(os.sched_getaffinity(0))
    threads = threads or cores
    load = os.getloadavg()[0]
    if load >= cores / 2:
        progress(f"bench: load average {load:.1f} on {cores} cores: other processes will slow the timings and scatter "
                 "the repeats (torch's threads wait for each other); an idle machine gives the figures to quote")
    regime = bench_regime(params)
    timm_vit = timm_vit_class()
    started = time.perf_counter()
    with device_settings(resolved, threads) as settings, tempfile.TemporaryDirectory(prefix="flexheads-bench-") as tmp:
        environment = {"device": resolved.type, "device_name": device_name(resolved), "torch": torch.__version__,
                       "timm": None if isinstance(timm_vit, str) else importlib.metadata.version("timm"),
                       "python": platform.python_version(), "quick": quick, **settings,
                       "load_average_start": list(os.getloadavg())}
        results: dict[str, Any] = {}
        prepared: dict[str, Path] = {}
        for task in plan.tasks:
            for size_name in plan.sizes:
                size = size_of(task, size_name, thesis)
                data = data_settings(params, task, plan.data_counts[task], size.data)
                key = data.model_dump_json()
                if key not in prepared:
                    progress(f"bench: {task} {size_name}: preparing synthetic data")
                    prepared[key] = prepared_data(task, data, Path(tmp) / f"{task}-{len(prepared)}")
                progress(f"bench: {task} {size_name}: timing ({size.label})")
                results.setdefault(task, {})[size_name] = measure_group(params, task, size, size_name,
                                                                        prepared[key], plan, regime, resolved,
                                                                        timm_vit)
    where: dict[tuple[str, str], list[str]] = {}  # (what, why) → the task sizes it was skipped at
    for task, sizes in results.items():
        for size_name, group in sizes.items():
            for name, reason in group.get("skipped", {}).items():
                where.setdefault((name, reason), []).append(f"{task} {size_name}")
    skipped = [f"{name} ({', '.join(groups)}): {reason}" for (name, reason), groups in where.items()]
    environment["load_average_end"] = list(os.getloadavg())
    result = {
        "environment": environment,
        "regime": {"name": regime, **params.regimes[regime].model_dump(mode="json", include={"norm", "optimizer"})},
        "plan": {"tasks": list(plan.tasks), "sizes": list(plan.sizes),
                 "rounds": {size: asdict(plan.rounds[size]) for size in plan.sizes}},
        "formulas": FORMULAS,
        "skipped": skipped,
        "tasks": results,
        "wall_time_s": time.perf_counter() - started,
    }
    out = Path(out)
    write_json(out / f"{resolved.type}.json", result)
    write_text(out / f"{resolved.type}.md", markdown(result))
    return result
