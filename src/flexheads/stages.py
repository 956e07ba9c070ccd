"""Stage workers shared by every task: train one run, evaluate one run.

Each takes its input and output paths as arguments (the CLI fills them in from Snakemake or DVC) and
writes every output atomically.  Outputs of ``train_run`` under ``models/<run>/``:

* ``model.pt``: weights + model config + run config (load with ``weights_only=True``);
* ``train.json``: MLflow run id, parameter count, final loss, timings, and the run's fingerprint: params hash,
  prepared data's content hash (``data_sha256``), training code's hash (``code_sha256``).  Timings
  (:class:`flexheads.train.TrainResult` defines them): ``wall_time_s`` (wall-clock seconds of training, summed over
  resumes; on a shared machine mostly waiting for a core), ``cpu_time_s`` (CPU seconds the training process used,
  likewise summed) and ``steps_per_s`` (optimiser steps per wall-clock second of the process that trained last);
* ``history.csv``: per-step loss, lr, grad norm (training curves), and ``val_<main metric>`` (e.g. ``val_mpjpe``)
  every ``train.<task>.eval_every`` steps and at the last step, the task's ``validation`` subset (validation
  curves; empty cells at the other steps, no column with ``eval_every: 0``);
* ``grad_histograms.json``: log10|grad| histograms at the snapshot steps (figure 3.16).

``checkpoint.pt`` (and ``mlflow_run_id``, with tracking) live there while a run is in progress and are removed
once ``model.pt`` is written; a checkpoint resumes only under the same fingerprint.  ``evaluate_run`` refuses a
model folder whose run, params or prepared data are not the ones it evaluates.  With tracking enabled the MLflow
run also holds the run config and the heads actually built (``head_params``) as params, MLflow's source tags, the
DVC stage and Snakemake rule (``stage_tags``), the curves, the timings (metrics ``train_wall_time_s``,
``train_cpu_time_s``, ``train_steps_per_s``), and ``model.pt`` as artifact ``model/model.pt``; the report stage adds the
test metrics and the evaluation files (:func:`flexheads.report.publish.log_evaluations`), so an evaluation process
never pays MLflow's start-up.
Outputs of ``evaluate_run``: ``metrics/<run>.json`` (headline metrics on the test split, and for a transformer
``attention_flops``, forward attention FLOPs per sample: :func:`model_attention_flops`) and under
``metrics/<run>/`` the task's tables (the task's ``evaluate`` docstring has their contracts):

* ``<table>.csv``: breakdowns (per action, per joint, per class, ...);
* ``attention.npz``: one fixed test input's attention maps per layer and head, its token names and the input
  (every transformer run; not the MLP baseline);
* ``examples.npz``: predictions and ground truth of fixed test samples (pose3d and pose2d runs);
* ``gradcam.npz``: Grad-CAM maps of test lesions (cxr on data with lesion masks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from flexheads.code_deps import code_hash
from flexheads.config import Params, Run, RunConfig, flatten, rule_name
from flexheads.data.prepared import prepared_hash
from flexheads.distributed import World, barrier, process_group, world
from flexheads.errors import DataError, WrongModel
from flexheads.io import atomic_path, load_torch, read_json, save_torch, write_json
from flexheads.nn import MultiHeadAttention, attention_flops
from flexheads.tasks import get_task
from flexheads.tracking import TrackingUnreachable
from flexheads.train import CHECKPOINT, GRAD_BINS, checkpoint_matches, fit, pick_device, seed_everything

RUN_ID_FILE = "mlflow_run_id"


def train_run(params: Params, run_name: str, data_h5: Path, out_dir: Path, device: str = "auto",
              progress: bool = True) -> dict[str, Any] | None:
    """Train one matrix cell and write its ``models/<run>/`` outputs; returns the ``train.json`` summary.

    A checkpoint in ``out_dir`` resumes only under the same fingerprint (run config but for ``train.processes``,
    the prepared data's content hash, the training code's hash); with tracking, so does the MLflow run named in
    ``out_dir/mlflow_run_id``.  Under ``torchrun`` every rank trains and only rank 0 tracks, writes the outputs
    and returns the summary (the other ranks return None; :mod:`flexheads.distributed`).
    """
    run = params.run(run_name)
    config = params.run_config(run)
    task = get_task(run.task)
    fingerprint = {"run_config": config.resume_hash(), "data": prepared_hash(data_h5, run.task),
                   "code": code_hash("train", run.task)}
    torch.set_num_threads(params.threads)
    seed_everything(config.seed)
    model = task.build_model(config, data_h5)
    batch_at, loss_fn = task.training_batches(data_h5, config)
    current = world()
    validate = task.validation(data_h5, config) if config.train.eval_every and current.is_main else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with process_group(current, pick_device(device)) as device_used:
        resumes = _checkpoint_resumes(out_dir / CHECKPOINT, fingerprint, current)
        tracker = _tracker(params, config, model, out_dir, resumes) if current.is_main else None
        try:
            result = fit(model, loss_fn, batch_at, config, out_dir, device=device_used,
                         log=tracker.log_rows if tracker else None, validate=validate,
                         validate_key=f"val_{task.MAIN_METRIC}", progress=progress and current.is_main,
                         fingerprint=fingerprint, world=current)
        except BaseException as err:
            if tracker and not isinstance(err, TrackingUnreachable):  # a server that is gone cannot end the run
                tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
    if not current.is_main:
        return None

    n_params = sum(p.numel() for p in model.parameters())
    save_model(out_dir / "model.pt", model, config)
    with atomic_path(out_dir / "history.csv") as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    write_json(out_dir / "grad_histograms.json", {
        "bin_edges_log10": GRAD_BINS.tolist(),
        "counts": {str(step): counts for step, counts in sorted(result.grad_histograms.items())},
    })
    summary = {
        "run": run.name, "task": run.task, "model": run.baseline or "transformer", "attention": run.attention,
        "regime": run.regime, "mlflow_run_id": tracker.run_id if tracker else None,
        "n_params": n_params, "steps": result.steps, "final_loss": result.final_loss,
        "wall_time_s": round(result.wall_time_s, 3), "cpu_time_s": round(result.cpu_time_s, 3),
        "steps_per_s": _rounded(float(result.steps_per_s)), "device": str(device_used),
        "params_hash": config.hash(), "data_sha256": fingerprint["data"], "code_sha256": fingerprint["code"],
    }
    write_json(out_dir / "train.json", summary)
    if tracker:
        tracker.log_metrics({"n_params": n_params, "train_wall_time_s": result.wall_time_s,
                             "train_cpu_time_s": result.cpu_time_s, "train_steps_per_s": result.steps_per_s},
                            step=result.steps)
        tracker.log_artifact(out_dir / "model.pt", "model")
        tracker.finish()
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return summary


def _checkpoint_resumes(path: Path, fingerprint: Mapping[str, str], current: World) -> bool:
    """Whether ``path`` resumes (:func:`checkpoint_matches`); rank 0 decides first, deleting a checkpoint of
    another fingerprint, so every rank then sees the same file."""
    resumes = checkpoint_matches(path, fingerprint) if current.is_main else False
    barrier(current)
    return resumes if current.is_main else checkpoint_matches(path, fingerprint)


def clear_abandoned_attempts(params: Params, models_dir: Path) -> list[Path]:
    """Remove what a killed training left beside a complete result of the same run, and return those run folders.

    A training that finishes removes its ``checkpoint.pt`` and ``mlflow_run_id``; both beside a complete
    ``model.pt`` + ``train.json`` mean an attempt died and the result came from elsewhere (DVC restored it from its
    cache, or an earlier attempt).  The checkpoint can no longer be the run's future, so it is deleted, and the
    attempt's MLflow run, if still RUNNING, ends KILLED.
    """
    cleared = []
    for run in params.all_runs():
        folder = models_dir / run.name
        leftovers = [folder / name for name in (CHECKPOINT, RUN_ID_FILE) if (folder / name).exists()]
        if not leftovers or not ((folder / "model.pt").exists() and (folder / "train.json").exists()):
            continue
        marker = folder / RUN_ID_FILE
        if marker.exists() and params.tracking.enabled:
            from flexheads.tracking import end_if_running, tracking_uri

            end_if_running(tracking_uri(params.tracking.uri), marker.read_text().strip(), "KILLED")
        for path in leftovers:
            path.unlink()
        cleared.append(folder)
    return cleared


def evaluate_run(params: Params, run_name: str, data_h5: Path, stats_json: Path, model_dir: Path, out_json: Path,
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate a trained run on the test split: ``out_json`` (DVC metrics) + the task's breakdown tables as
    ``<out_json without .json>/<table>.csv`` (per action, per joint, per class, ...) and arrays the report draws
    (attention maps, examples, Grad-CAM maps) as ``<table>.npz``."""
    run = params.run(run_name)
    task = get_task(run.task)
    torch.set_num_threads(params.threads)
    model = load_model(model_dir / "model.pt", task.ARCHITECTURES, expected=params.run_config(run))
    trained = read_json(model_dir / "train.json")
    if not isinstance(trained, dict) or trained.get("run") != run.name:
        raise WrongModel(f"{model_dir / 'train.json'}: not the training record of {run.name}")
    if trained.get("data_sha256") != prepared_hash(data_h5, run.task):
        raise WrongModel(f"{model_dir}: trained on other prepared data than {data_h5}; rerun `flexheads train`")
    headline, tables = task.evaluate(model, data_h5, read_json(stats_json),
                                     getattr(params.train, run.task).eval_batch_size, pick_device(device))
    metrics = {"run": run.name, "task": run.task, "model": run.baseline or "transformer", "attention": run.attention,
               "regime": run.regime, "main_metric": task.MAIN_METRIC, **{k: _rounded(v) for k, v in headline.items()}}
    if "attention" in tables:  # the encoder's token count is the attention maps' size
        metrics["attention_flops"] = model_attention_flops(model, tables["attention"]["weights"].shape[-1])
    tables_dir = out_json.with_suffix("")
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        path = tables_dir / f"{name}.csv" if isinstance(table, pd.DataFrame) else tables_dir / f"{name}.npz"
        with atomic_path(path) as tmp:
            if isinstance(table, pd.DataFrame):
                table.to_csv(tmp, index=False, float_format="%.4f")
            else:  # named arrays for the report's figures
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **table)
    write_json(out_json, metrics)
    return metrics


def save_model(path: Path, model: nn.Module, config: RunConfig) -> None:
    """``model.pt``: CPU weights, the class name and its config (to rebuild it), and the run config."""
    save_torch(path, {
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "architecture": type(model).__name__,
        "model_config": model.config.to_dict(), "run_config": config.to_dict(),
    })


def load_model(path: Path, architectures: Mapping[str, Callable[[dict], nn.Module]],
               expected: RunConfig | None = None) -> nn.Module:
    """Rebuild a model written by ``save_model`` (``weights_only`` load: no code runs from the file).

    Raises:
        DataError: ``path`` is missing or is not a ``model.pt`` of one of ``architectures`` (another task's).
        WrongModel: ``expected`` is given and the model was trained for another run, or with other params.
    """
    if not path.is_file():
        raise DataError(f"{path}: model file not found; run `flexheads train` for it first")
    saved = load_torch(path, "a model file written by `flexheads train`")
    if not isinstance(saved, dict) or not {"model", "architecture", "model_config", "run_config"} <= saved.keys():
        raise DataError(f"{path}: not a model file written by `flexheads train` (keys missing)")
    if saved["architecture"] not in architectures:
        raise DataError(f"{path}: holds a {saved['architecture']}, not a model of this task "
                        f"({', '.join(architectures)})")
    if expected is not None:
        _check_run_config(path, saved["run_config"], expected)
    model = architectures[saved["architecture"]](saved["model_config"])
    model.load_state_dict(saved["model"])
    return model


def _check_run_config(path: Path, saved: dict[str, Any], expected: RunConfig) -> None:
    """WrongModel unless the run config saved in ``path`` is ``expected``'s, naming the run or the keys that differ."""
    wanted = expected.to_dict()
    identity = ("task", "attention", "regime_name", "seed")
    if any(saved.get(key) != wanted[key] for key in identity):
        trained = "-".join(str(saved.get(key)) for key in identity)
        raise WrongModel(f"{path}: trained for run {trained}, not {expected.run.name}; pass that run's own folder "
                         f"(models/{expected.run.name})")
    flat_saved, flat_wanted = flatten(saved), flatten(wanted)
    differ = sorted(key for key in flat_saved.keys() | flat_wanted.keys()
                    if flat_saved.get(key) != flat_wanted.get(key))
    if differ:
        raise WrongModel(f"{path}: trained with other params than params.yaml's for {expected.run.name} "
                         f"({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}); rerun `flexheads train`")


def _rounded(value: Any) -> Any:
    """4 decimals; NaN (a metric undefined on this data, e.g. AUROC of a finding without test positives) → null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def head_params(model: nn.Module) -> dict[str, int]:
    """The heads ``model`` was built with, as MLflow params; empty for a model without attention (the MLP baseline).

    ``heads.n_heads``; ``heads.d_head``, the real width (``d_model // n_heads`` for a configuration without
    ``d_head``); ``heads.inner_width`` = n_heads × d_head; ``heads.attention_params``,
    the parameters of every attention module together.
    """
    attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not attention:
        return {}
    first = attention[0]  # every layer of a model is built with the same heads
    return {"heads.n_heads": first.n_heads, "heads.d_head": first.d_head, "heads.inner_width": first.inner_dim,
            "heads.attention_params": sum(p.numel() for m in attention for p in m.parameters())}


def model_attention_flops(model: nn.Module, n_tokens: int) -> int:
    """Forward attention FLOPs per sample of ``n_tokens`` tokens, summed over the model's attention layers
    (:func:`flexheads.nn.attention_flops` of each: ``8 N d I + 4 N² I``)."""
    return sum(attention_flops(n_tokens, m.q_proj.in_features, m.inner_dim)
               for m in model.modules() if isinstance(m, MultiHeadAttention))


def _tracker(params: Params, config: RunConfig, model: nn.Module, out_dir: Path, resumes: bool) -> Any:
    """An MLflow tracker for this run, or None with tracking disabled: the run of the checkpoint when ``resumes``,
    else a new run (a run left RUNNING by a killed attempt ends KILLED; earlier runs of the name are superseded)."""
    if not params.tracking.enabled:
        return None
    from flexheads.tracking import Tracker, git_commit, source_tags, tracking_uri

    run = config.run
    tags = {**source_tags("flexheads train"), "task": run.task, "attention": run.attention, "regime": run.regime,
            "seed": str(run.seed), "git_commit": git_commit(), "params_hash": config.hash(), **stage_tags("train", run)}
    return Tracker.open(tracking_uri(params.tracking.uri), experiment=run.task, run_name=run.name, tags=tags,
                        params={**config.flat(), **head_params(model)}, marker=out_dir / RUN_ID_FILE, resume=resumes)


def stage_tags(kind: str, run: Run) -> dict[str, str]:
    """The DVC stage and the Snakemake rule that run ``kind`` (train, evaluate) for ``run``, as MLflow tags."""
    stage = f"{kind}_baseline@{run.baseline}" if run.baseline else f"{kind}@{run.name}"
    return {"dvc_stage": stage, "snakemake_rule": rule_name(stage)}
