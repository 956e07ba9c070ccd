"""Stage workers shared by every task: train one run, evaluate one run.

Each takes its input and output paths as arguments (the CLI fills them in from Snakemake or DVC) and
writes every output atomically.  Outputs of ``train_run`` under ``models/<run>/``:

* ``model.pt``: weights + model config + run config (load with ``weights_only=True``);
* ``train.json``: MLflow run id, parameter count, wall time, final loss, params hash, git commit;
* ``history.csv``: per-step loss, lr, grad norm (training curves), and ``val_<main metric>`` (e.g. ``val_mpjpe``)
  every ``train.<task>.eval_every`` steps and at the last step, the task's ``validation`` subset (validation
  curves; empty cells at the other steps, no column with ``eval_every: 0``);
* ``grad_histograms.json``: log10|grad| histograms at the snapshot steps (figure 3.16).

``checkpoint.pt`` lives there while a run is in progress and is removed once ``model.pt`` is written.
With tracking enabled the MLflow run also holds the run config and the heads actually built (``head_params``) as
params, MLflow's source tags, the curves, and ``model.pt`` as artifact ``model/model.pt``.
Outputs of ``evaluate_run``: ``metrics/<run>.json`` (headline metrics on the test split) and under
``metrics/<run>/`` the task's tables (the task's ``evaluate`` docstring has their contracts):

* ``<table>.csv``: breakdowns (per action, per joint, per class, ...);
* ``attention.npz``: one fixed test input's attention maps per layer and head, its token names and the input
  (every transformer run; not the MLP baseline);
* ``examples.npz``: predictions and ground truth of fixed test samples (pose3d and pose2d runs);
* ``gradcam.npz``: Grad-CAM maps of test lesions (cxr on data with lesion masks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from flexheads.config import Params, RunConfig
from flexheads.io import atomic_path, save_torch, write_json
from flexheads.nn import MultiHeadAttention
from flexheads.tasks import task_module
from flexheads.train import CHECKPOINT, GRAD_BINS, fit, pick_device, seed_everything

RUN_ID_FILE = "mlflow_run_id"


def train_run(params: Params, run_name: str, data_h5: Path, out_dir: Path, device: str = "auto",
              progress: bool = True) -> dict[str, Any]:
    """Train one matrix cell and write its ``models/<run>/`` outputs; returns the ``train.json`` summary."""
    run = params.run(run_name)
    config = params.run_config(run)
    task = task_module(run.task)
    torch.set_num_threads(params.threads)
    seed_everything(config.seed)
    model = task.build_model(config, data_h5)
    batch_at, loss_fn = task.training_batches(data_h5, config)
    validate = task.validation(data_h5, config) if config.train.eval_every else None
    out_dir.mkdir(parents=True, exist_ok=True)
    device_used = pick_device(device)
    tracker = _tracker(params, config, model, out_dir)
    n_params = sum(p.numel() for p in model.parameters())

    try:
        result = fit(model, loss_fn, batch_at, config, out_dir, device=device_used,
                     log=tracker.log_rows if tracker else None, validate=validate,
                     validate_key=f"val_{task.MAIN_METRIC}", progress=progress)
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise

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
        "wall_time_s": round(result.wall_time_s, 3), "device": str(device_used),
        "params_hash": config.hash(),
    }
    write_json(out_dir / "train.json", summary)
    if tracker:
        tracker.log_metrics({"n_params": n_params, "train_wall_time_s": result.wall_time_s}, step=result.steps)
        tracker.log_artifact(out_dir / "model.pt", "model")
        tracker.finish()
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    (out_dir / RUN_ID_FILE).unlink(missing_ok=True)
    return summary


def evaluate_run(params: Params, run_name: str, data_h5: Path, stats_json: Path, model_dir: Path, out_json: Path,
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate a trained run on the test split: ``out_json`` (DVC metrics) + the task's breakdown tables as
    ``<out_json without .json>/<table>.csv`` (per action, per joint, per class, ...) and arrays the report draws
    (attention maps, examples, Grad-CAM maps) as ``<table>.npz``."""
    run = params.run(run_name)
    task = task_module(run.task)
    torch.set_num_threads(params.threads)
    model = load_model(model_dir / "model.pt", task.ARCHITECTURES)
    trained = json.loads((model_dir / "train.json").read_text())
    headline, tables = task.evaluate(model, data_h5, json.loads(stats_json.read_text()),
                                     getattr(params.train, run.task).eval_batch_size, pick_device(device))
    metrics = {"run": run.name, "task": run.task, "model": run.baseline or "transformer", "attention": run.attention,
               "regime": run.regime, "main_metric": task.MAIN_METRIC, **{k: _rounded(v) for k, v in headline.items()}}
    table_paths = []
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
        table_paths.append(path)
    write_json(out_json, metrics)

    if params.tracking.enabled and trained.get("mlflow_run_id"):
        from flexheads.tracking import Tracker, tracking_uri

        tracker = Tracker.resume(tracking_uri(params.tracking.uri), trained["mlflow_run_id"])
        tracker.log_metrics({f"test_{k}": v for k, v in headline.items()}, step=trained["steps"])
        for path in [out_json, *table_paths]:
            tracker.log_artifact(path, "evaluation")
    return metrics


def save_model(path: Path, model: nn.Module, config: RunConfig) -> None:
    """``model.pt``: CPU weights, the class name and its config (to rebuild it), and the run config."""
    save_torch(path, {
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "architecture": type(model).__name__,
        "model_config": model.config.to_dict(), "run_config": config.to_dict(),
    })


def load_model(path: Path, architectures: Mapping[str, Callable[[dict], nn.Module]]) -> nn.Module:
    """Rebuild a model written by ``save_model`` (``weights_only`` load: no code runs from the file)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = architectures[checkpoint["architecture"]](checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model


def _rounded(value: Any) -> Any:
    """4 decimals; NaN (a metric undefined on this data, e.g. AUROC of a finding without test positives) → null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def head_params(model: nn.Module) -> dict[str, int]:
    """The heads ``model`` was built with, as MLflow params; empty for a model without attention (the MLP baseline).

    ``heads.n_heads``; ``heads.d_head``, the real width (``d_model // n_heads`` for standard heads,
    ``d_head_flexible`` for flexible ones); ``heads.inner_width`` = n_heads × d_head; ``heads.attention_params``,
    the parameters of every attention module together.
    """
    attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not attention:
        return {}
    first = attention[0]  # every layer of a model is built with the same heads
    return {"heads.n_heads": first.n_heads, "heads.d_head": first.d_head, "heads.inner_width": first.inner_dim,
            "heads.attention_params": sum(p.numel() for m in attention for p in m.parameters())}


def _tracker(params: Params, config: RunConfig, model: nn.Module, out_dir: Path) -> Any:
    """An MLflow tracker for this run (resumed with the checkpoint), or None with tracking disabled."""
    if not params.tracking.enabled:
        return None
    from flexheads.tracking import Tracker, git_commit, source_tags, tracking_uri

    uri = tracking_uri(params.tracking.uri)
    run_id_file = out_dir / RUN_ID_FILE
    if (out_dir / CHECKPOINT).exists() and run_id_file.exists():
        return Tracker.resume(uri, run_id_file.read_text().strip())
    run = config.run
    tags = {**source_tags("flexheads train"), "task": run.task, "attention": run.attention, "regime": run.regime,
            "seed": str(run.seed), "git_commit": git_commit(), "params_hash": config.hash()}
    tracker = Tracker.start(uri, experiment=run.task, run_name=run.name, tags=tags,
                            params={**config.flat(), **head_params(model)})
    with atomic_path(run_id_file) as tmp:
        tmp.write_text(tracker.run_id)
    return tracker
