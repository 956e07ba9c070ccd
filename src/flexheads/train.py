"""The training loop every task reuses: seeded, resumable, atomic checkpoints, bf16 autocast on CUDA.

A task supplies ``batch_at(step)`` (the batch for a step, a pure function of the seed and the step, so a
resumed run sees exactly the batches an uninterrupted one would) and ``loss_fn(model, batch)``.  The loop
owns the step counter and sets each step's learning rate from the regime's schedule.  It records per-step
loss, learning rate and gradient norm, histograms of ``log10|grad|`` at ``grad_snapshot_steps`` for the
thesis's figure 3.16, and, given a task's ``validate``, a held-out metric every ``eval_every`` steps (the
validation curves).  On CPU the same config gives bit-identical results, interrupted or not, validated or not.
Progress shows as a tqdm bar on a terminal and, when stderr is a log file (Snakemake, DVC), as one
:func:`progress_line` every ``log_every`` steps and at the last step.

Speed (``train.<task>`` keys, all off by default; at their defaults CPU results are bit-identical to a loop
without them):

* host syncs: a step's loss and gradient norm stay tensors on the device and are read in one transfer every
  ``sync_every`` steps (see :func:`fit`: every step on CPU, where a read costs nothing, every ``log_every`` steps
  elsewhere) and at every log, validation, checkpoint and last step; the NaN/inf check runs on what is read;
* ``loader_workers``: batches made by background processes (:mod:`flexheads.data.loader`), pinned on CUDA and
  copied with ``non_blocking=True``;
* ``compile``: the training step's ``loss_fn`` (and through it the model's forward) runs under
  ``torch.compile``; the model itself is never wrapped, so validation, evaluation and every saved state dict
  use the eager module and its own keys (no ``_orig_mod.`` prefix);
* ``fused_optimizer``: :func:`flexheads.optim.optimizers.build_optimizer`'s ``fused``;
* ``channels_last``: read by the pose2d task (its CNN trunk); the loop does nothing with it.

Several processes (``processes``): under ``torchrun`` each rank trains on its share of every batch and
``DistributedDataParallel`` averages the gradients (:mod:`flexheads.distributed`); rank 0 alone validates and
checkpoints, and a checkpoint resumes with any number of processes.

Timings: ``wall_time_s`` and ``cpu_time_s`` (``time.process_time``: CPU seconds of every thread of the training
process, not of loader workers) run from the start of each process's loop to its last checkpoint, summed over
resumes; ``steps_per_s`` is the throughput of the process that wrote the last checkpoint (:class:`TrainResult`).
On a shared machine wall time mostly measures waiting for a core, CPU time what the training cost.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from flexheads.config import RunConfig
from flexheads.data.loader import map_tensors, step_batches
from flexheads.distributed import World, data_parallel, mean_over_ranks, shard
from flexheads.errors import DataError, TrainingDiverged
from flexheads.io import load_torch, save_torch
from flexheads.optim.optimizers import build_optimizer
from flexheads.optim.schedules import lr_at

Batch = Any
CHECKPOINT = "checkpoint.pt"
GRAD_BINS = torch.linspace(-12.0, 2.0, 71)  # log10 |grad| bin edges of the gradient histograms
FINGERPRINT_PARTS = {"run_config": "run config", "data": "prepared data", "code": "training code"}


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``wall_time_s``/``cpu_time_s``: wall-clock and CPU seconds (``time.process_time()``, all threads of the
    training process; loader worker processes not included) from the start of each training process's loop to its
    last checkpoint, summed over the processes of a resumed run (a killed process's time after its last
    checkpoint is lost with it).  ``steps_per_s``: optimiser steps per wall-clock second of the process that
    wrote the last checkpoint, ``(its last step - the step it resumed from) / (seconds from its loop's start to
    that checkpoint)``: validation, checkpoint writes and, with ``compile``, compilation included; a rerun of a
    finished run trains nothing and reports the value its checkpoint holds.
    """

    steps: int
    final_loss: float
    wall_time_s: float
    history: list[dict[str, float]]  # one row per step: step, loss, lr, grad_norm (+ the metric at validation steps)
    grad_histograms: dict[int, list[int]]  # step -> counts over GRAD_BINS
    cpu_time_s: float = math.nan
    steps_per_s: float = math.nan


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cpu``/``cuda`` force one."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and make its kernels deterministic.

    ``torch.use_deterministic_algorithms`` also sets ``torch._inductor.config.deterministic``, and importing the
    compiler stack for that costs every process ~2.5 CPU-seconds; the kernels' switch is set here without it, and
    :func:`fit` sets the compiler's only when ``train.<task>.compile`` brings the compiler in.
    """
    torch.manual_seed(seed)
    torch._C._set_deterministic_algorithms(True, warn_only=True)


def grad_histogram(model: nn.Module) -> list[int]:
    """Counts of ``log10|g|`` over ``GRAD_BINS`` for every gradient entry of the model (zeros and non-finite
    entries excluded: the step diverged and the loop raises once it reads its gradient norm)."""
    grads = torch.cat([p.grad.detach().flatten().float().cpu() for p in model.parameters() if p.grad is not None])
    magnitudes = grads.abs()
    logs = torch.log10(magnitudes[(magnitudes > 0) & torch.isfinite(magnitudes)]).clamp(GRAD_BINS[0], GRAD_BINS[-1])
    return torch.histogram(logs, bins=GRAD_BINS).hist.long().tolist()


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    batch_at: Callable[[int], Batch],
    config: RunConfig,
    out_dir: Path,
    *,
    device: torch.device,
    log: Callable[[list[dict[str, float]]], None] | None = None,
    validate: Callable[[nn.Module, torch.device], float] | None = None,
    validate_key: str = "val",
    progress: bool = True,  # a bar when stderr is a terminal, else progress lines; False silences both
    fingerprint: Mapping[str, str] | None = None,
    autocast: bool | None = None,
    sync_every: int | None = None,
    world: World = World(),
) -> TrainResult:
    """Train ``model`` for ``config.train.steps`` steps, resuming from ``out_dir/checkpoint.pt`` if it was written
    under the same ``fingerprint`` (see :func:`checkpoint_matches`).

    Args:
        batch_at: step (1-based) → batch of CPU tensors (moved to ``device`` here); served by
            :func:`flexheads.data.loader.step_batches` with ``config.train.loader_workers`` workers.
        log: called with the buffered per-step rows every ``log_every`` steps, at the end and before raising
            ``TrainingDiverged`` (MLflow).  Every step is logged at least once; a resumed run re-sends the
            rows after the last ``log_every`` boundary before its checkpoint (same values, same steps).
        validate: ``(model, device) -> metric`` on held-out data, called after the optimiser step of every
            ``eval_every``-th step and of the last step (never when ``eval_every`` is 0) by :func:`validated`,
            which leaves training bit-identical; the value goes into that step's history row as
            ``validate_key``, and rows of other steps lack the key.  It gets the eager model, never a compiled one.
        fingerprint: hashes of what determines the run, keys from ``FINGERPRINT_PARTS`` (run config, prepared
            data, training code); default ``{"run_config": config.resume_hash()}``.
        progress: on a terminal a tqdm bar showing loss and lr (updated at every read, see ``sync_every``);
            otherwise (stderr redirected to a log, as under Snakemake and DVC) a :func:`progress_line` on stderr
            at every ``log`` step.
        autocast: run ``loss_fn`` (forward and loss) under bfloat16 autocast on ``device``; None (default): on
            CUDA only, full precision elsewhere.  The backward, the optimiser and validation never run under it.
        sync_every: read the device's loss and gradient-norm tensors (one ``.tolist()``, the only host sync of
            a step) every ``sync_every`` steps and at every log, validation, checkpoint and last step; None
            (default): 1 on CPU, where reading costs nothing, ``log_every`` on other devices.
        world: this process's rank among ``torchrun``'s (:mod:`flexheads.distributed`): each rank trains on its
            share of every batch under ``DistributedDataParallel``; the loss read is the mean over the ranks; only
            rank 0 validates (pass ``validate`` there), takes gradient histograms and writes the checkpoint.
    Raises:
        TrainingDiverged: a NaN/inf loss or gradient norm was read (naming the first such step), or a checkpoint
            would hold a non-finite tensor; no checkpoint is written after it, so the last (all-finite)
            checkpoint stays on disk.  Reading every step (CPU) the bad step's optimiser step is not taken; with
            ``sync_every > 1`` the steps from the bad one to the read were taken on the device before the read
            saw it, and the message says so (they are discarded with everything after the last checkpoint).
    """
    settings, regime = config.train, config.regime
    model.to(device)
    lr = regime.lr * settings.lr_scale
    optimizer = build_optimizer(model.parameters(), regime.optimizer, lr=lr, betas=regime.betas,
                                weight_decay=regime.weight_decay, fused=settings.fused_optimizer)
    lr_of_step = lr_at(regime.schedule, lr=lr, warmup=regime.warmup, beta2=regime.betas[1],
                       d_model=config.model.d_model)
    checkpoint = out_dir / CHECKPOINT
    state = _resume_state(checkpoint, model, optimizer, device, fingerprint or {"run_config": config.resume_hash()})
    parameters = [p for p in model.parameters() if p.requires_grad]
    clip = regime.grad_clip if regime.grad_clip > 0 else math.inf
    autocast = device.type == "cuda" if autocast is None else autocast
    sync_every = sync_every or (1 if device.type == "cpu" else settings.log_every)
    if settings.compile:
        torch.use_deterministic_algorithms(True, warn_only=True)  # the compiler's switch too (seed_everything)
    step_loss = torch.compile(loss_fn) if settings.compile else loss_fn  # the model stays the eager module
    step_loss = data_parallel(model, step_loss, world, device)
    # Rows after the last log boundary before the checkpoint may never have reached ``log`` (the run stopped
    # before the next boundary): send them again, so every step is logged at least once across resumes.
    last_logged = state["step"] - state["step"] % settings.log_every
    unlogged: list[dict[str, float]] = [row for row in state["history"] if row["step"] > last_logged]

    model.train()
    bar = tqdm(range(state["step"] + 1, settings.steps + 1), desc=config.run.name, disable=None if progress else True,
               initial=state["step"], total=settings.steps, leave=False)
    # tqdm hides the bar when stderr is not a terminal (disable=None): lines take its place, never both
    print_lines = progress and bar.disable
    batches = step_batches(batch_at, state["step"] + 1, settings.steps, workers=settings.loader_workers,
                           pin_memory=device.type == "cuda")
    pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # (step, lr, loss, grad norm) not read yet
    first_step, process_start, cpu_start = state["step"], time.perf_counter(), time.process_time()
    started, cpu_started = process_start - state["wall_time_s"], cpu_start - state["cpu_time_s"]
    try:
        for step in bar:
            lr = lr_of_step(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(shard(next(batches), world), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = step_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step in settings.grad_snapshot_steps and world.is_main:
                state["grad_histograms"][step] = grad_histogram(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
            pending.append((step, lr, loss.detach(), grad_norm.detach()))

            # every rank reads at the same steps (a read averages the loss over the ranks), validating or not
            validation_step = settings.eval_every > 0 and (step % settings.eval_every == 0 or step == settings.steps)
            logging = step % settings.log_every == 0 or step == settings.steps
            checkpointing = step % settings.checkpoint_every == 0 or step == settings.steps
            if step % sync_every == 0 or validation_step or logging or checkpointing:
                rows = _read(pending, world)  # before this step's optimiser step: a bad read step is never taken
                pending = []
                bad = next((i for i, row in enumerate(rows)
                            if _non_finite(loss=row["loss"], gradient_norm=row["grad_norm"])), None)
                if bad is not None:
                    unlogged += rows[:bad]
                    if log is not None and unlogged:
                        log(unlogged)  # the steps leading up to a divergence are the ones a stability study needs
                    raise _divergence(config.run.name, _diverged_at(rows[bad], step, device), checkpoint,
                                      state["step"])
                state["history"] += rows
                unlogged += rows
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", lr=f"{lr:.2e}")
            optimizer.step()

            if validation_step and validate is not None:
                state["history"][-1][validate_key] = validated(model, validate, device)
            if logging:
                if log is not None:
                    log(unlogged)
                    unlogged = []
                if print_lines:
                    line = progress_line(config.run.name, step, settings.steps, state["history"][-1]["loss"], lr,
                                         elapsed_s=time.perf_counter() - process_start, steps_done=step - first_step)
                    print(line, file=sys.stderr, flush=True)
            if checkpointing:
                _require_finite(config.run.name, model, optimizer, step, checkpoint, state["step"])
                now = time.perf_counter()
                state.update(step=step, wall_time_s=now - started, cpu_time_s=time.process_time() - cpu_started,
                             steps_per_s=(step - first_step) / (now - process_start))
                if world.is_main:
                    _save_checkpoint(checkpoint, model, optimizer, state)
    finally:
        batches.close()  # stops loader workers, if any
        bar.close()

    history = state["history"]
    return TrainResult(
        steps=settings.steps,
        final_loss=history[-1]["loss"] if history else math.nan,
        wall_time_s=state["wall_time_s"],
        history=history,
        grad_histograms=state["grad_histograms"],
        cpu_time_s=state["cpu_time_s"],
        steps_per_s=state["steps_per_s"],
    )


def _read(pending: list[tuple[int, float, torch.Tensor, torch.Tensor]], world: World) -> list[dict[str, float]]:
    """History rows of the pending steps, their loss and gradient-norm tensors read in one transfer; with several
    ranks the losses are averaged over them (the gradient norm, taken after DDP's averaging, is the same on all).

    Stacking promotes to the widest dtype (exactly), so each value is the Python float ``.item()`` would give.
    """
    if not pending:
        return []
    pairs = torch.stack([torch.stack([loss.reshape(()), norm]) for _, _, loss, norm in pending])  # (steps, 2)
    if world.size > 1:
        pairs = torch.stack([mean_over_ranks(pairs[:, 0], world), pairs[:, 1]], dim=1)
    values = pairs.flatten().tolist()
    return [{"step": step, "loss": values[2 * i], "lr": lr, "grad_norm": values[2 * i + 1]}
            for i, (step, lr, _, _) in enumerate(pending)]


def _diverged_at(row: dict[str, float], read_step: int, device: torch.device) -> str:
    """What went wrong at ``row``'s step and which optimiser steps were taken, read at ``read_step``."""
    problem = _non_finite(loss=row["loss"], gradient_norm=row["grad_norm"])
    bad = int(row["step"])
    said = f"{problem} at step {bad} (lr {row['lr']:.3g})"
    if bad == read_step:
        return f"{said}, so that step was not taken"
    taken = f"step {bad} was" if bad == read_step - 1 else f"steps {bad} to {read_step - 1} were"
    return (f"{said}, seen at step {read_step} (on {device.type} losses are read every few steps, not after each), "
            f"so {taken} taken and are discarded")


def progress_line(name: str, step: int, total: int, loss: float, lr: float, *, elapsed_s: float,
                  steps_done: int) -> str:
    """``pose3d-standard-noam-0 step 25/400 loss 0.8123 lr 1.2e-04 elapsed 0:00:07 eta 0:01:45``.

    Args:
        elapsed_s: seconds this process has trained for, so a resumed run's times are its own.
        steps_done: steps this process ran in ``elapsed_s`` (``step`` minus the resumed step); the ETA assumes
            the ``total - step`` steps left take as long each.
    """
    eta_s = elapsed_s / steps_done * (total - step)
    return (f"{name} step {step}/{total} loss {loss:.4f} lr {lr:.1e} "
            f"elapsed {_clock(elapsed_s)} eta {_clock(eta_s)}")


def _clock(seconds: float) -> str:
    """``h:mm:ss``, hours unbounded."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def validated(model: nn.Module, validate: Callable[[nn.Module, torch.device], float], device: torch.device) -> float:
    """``validate(model, device)`` under ``torch.no_grad()`` with the model in eval mode (no dropout, BatchNorm's
    running statistics used and left alone), back in train mode afterwards, and the RNG states of the CPU and of
    ``device`` restored: whatever ``validate`` does, the training run continues exactly as without it."""
    rng_devices = [] if device.type == "cpu" else [device]  # the CPU generator is always forked
    with torch.random.fork_rng(devices=rng_devices, device_type=device.type), torch.no_grad():
        model.eval()
        value = float(validate(model, device))
    model.train()
    return value


def checkpoint_matches(path: Path, fingerprint: Mapping[str, str]) -> bool:
    """Whether ``path`` holds a checkpoint written under ``fingerprint``.

    A checkpoint written under another fingerprint (another run config, other prepared data, other training code)
    or an unreadable one is deleted, and one line on stderr says why: it can never be resumed.
    """
    if not path.exists():
        return False
    try:
        written_under = load_torch(path, "a checkpoint").get("fingerprint", {})
    except DataError as err:
        reason = str(err)
    else:
        differ = [FINGERPRINT_PARTS.get(key, key) for key in fingerprint if written_under.get(key) != fingerprint[key]]
        if not differ:
            return True
        reason = f"{path}: written for other " + " and ".join(differ)
    print(f"{reason}; deleted, training starts from step 0", file=sys.stderr, flush=True)
    path.unlink()
    return False


def _fresh_state(fingerprint: Mapping[str, str]) -> dict[str, Any]:
    return {"fingerprint": dict(fingerprint), "step": 0, "wall_time_s": 0.0, "cpu_time_s": 0.0,
            "steps_per_s": math.nan, "history": [], "grad_histograms": {}}


def _resume_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
    fingerprint: Mapping[str, str],
) -> dict[str, Any]:
    """The checkpoint's state if it was written under this very fingerprint; a fresh start otherwise."""
    if not checkpoint_matches(path, fingerprint):
        return _fresh_state(fingerprint)
    payload = load_torch(path, "a checkpoint", map_location=device)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng_cpu"].cpu())
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng_cuda"]])
    fresh = _fresh_state(fingerprint)
    return {key: payload.get(key, default) for key, default in fresh.items()}  # keys a checkpoint may predate


def _non_finite(**values: float) -> str | None:
    """``"gradient norm is nan"`` for the first of ``values`` that is NaN or infinite; None if all are finite."""
    return next((f"{key.replace('_', ' ')} is {value}" for key, value in values.items() if not math.isfinite(value)),
                None)


def _divergence(name: str, problem: str, checkpoint: Path, last_saved: int) -> TrainingDiverged:
    kept = (f"the last good checkpoint (step {last_saved}) is kept at {checkpoint}" if last_saved
            else "no checkpoint was written yet")
    return TrainingDiverged(f"{name}: {problem}; {kept}. Lower the regime's lr or add warmup.")


def _require_finite(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, checkpoint: Path,
                    last_saved: int) -> None:
    """Raise ``TrainingDiverged`` rather than checkpoint a non-finite weight or optimiser state (an overflow)."""
    optimizer_state = [(f"optimizer state {key}", value) for state in optimizer.state.values()
                       for key, value in state.items()]
    tensors = [*model.state_dict().items(), *optimizer_state]
    bad = next((key for key, t in tensors if torch.is_tensor(t) and t.is_floating_point()
                and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise _divergence(name, f"{bad} holds NaN or infinite values after step {step}, so it was not checkpointed",
                          checkpoint, last_saved)


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Model, optimiser, RNG state, step, history: everything a resume needs, written atomically."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **state,
    }
    save_torch(path, payload)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` (a tensor or a tuple, list or dict of them) on ``device``, copied asynchronously from pinned memory."""
    return map_tensors(batch, lambda tensor: tensor.to(device, non_blocking=True))
