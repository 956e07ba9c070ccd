"""The training loop's device paths on every built-in task's real model and (tiny synthetic) data, on CPU: bf16
autocast training followed by a full evaluation (which runs in float32 whatever the caller's autocast), batches
made by loader workers equal to the in-process ones, and pose2d's channels_last trunk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from flexheads.config import Params, RunConfig
from flexheads.data.loader import step_batches
from flexheads.stages import load_model, save_model
from flexheads.tasks import BUILTIN_TASKS, get_task
from flexheads.train import fit, seed_everything
from conftest import tiny_heads

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
RUNS = {"pose3d": "pose3d-standard-preln-0", "pose2d": "pose2d-flexible-preln-0", "cxr": "cxr-standard-radam-0"}


def tiny_params() -> Params:
    """Every task at the sizes its own task tests use (seconds per stage on 2 cores), 4 training steps."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["regimes"] = ["preln", "radam"]
    raw["tracking"]["enabled"] = False
    raw["data"]["pose3d"]["synthetic"].update(frames_per_sequence=40)
    raw["model"]["pose3d"].update(d_model=32, n_layers=2, d_ff=64)
    raw["heads"]["pose3d"] = tiny_heads(4, 16, 2)
    raw["data"]["pose2d"] = {"source": "synthetic", "crop_size": [64, 48],
                             "synthetic": {"n_train_images": 12, "n_val_images": 6, "image_size": [160, 120]}}
    raw["model"]["pose2d"] = {"backbone": "resnet18", "d_model": 32,
                              "n_layers": 1, "d_ff": 64, "dropout": 0.0}
    raw["heads"]["pose2d"] = tiny_heads(4, 16, 2)
    raw["data"]["cxr"] = {"image_size": 32, "val_fraction": 0.2,
                          "synthetic": {"n_patients": 40, "n_covid_images": 12, "image_size": 64}}
    raw["model"]["cxr"] = {"patch_size": 4, "d_model": 32, "n_layers": 2,
                           "d_ff": 64, "dropout": 0.1}
    raw["heads"]["cxr"] = tiny_heads(4, 16, 2)
    for task, batch_size in (("pose3d", 64), ("pose2d", 8), ("cxr", 32)):
        raw["train"][task].update(steps=4, batch_size=batch_size, checkpoint_every=2, log_every=2,
                                  grad_snapshot_steps=[1], eval_batch_size=64, eval_every=2)
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunConfig, Path, Path]]:
    """Per task: the run config of ``RUNS[task]``, its prepared h5 and statistics JSON."""
    root, params = tmp_path_factory.mktemp("tasks"), tiny_params()
    out = {}
    for name in BUILTIN_TASKS:
        task = get_task(name)
        h5, stats = root / f"{name}.h5", root / f"{name}.stats.json"
        task.download(params.task_data(name), root / name)
        task.prepare(params.task_data(name), root / name, h5, stats)
        out[name] = (params.run_config(params.run(RUNS[name])), h5, stats)
    return out


def linear_output_dtypes(model: nn.Module) -> tuple[set[torch.dtype], list[Any]]:
    """The dtypes of every ``nn.Linear`` output from now on, and the hooks (to remove)."""
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    return dtypes, hooks


def train(name: str, config: RunConfig, h5: Path, out_dir: Path, **kwargs: Any) -> tuple[nn.Module, Any]:
    task = get_task(name)
    seed_everything(config.seed)
    model = task.build_model(config, h5)
    batch_at, loss_fn = task.training_batches(h5, config)
    result = fit(model, loss_fn, batch_at, config, out_dir, device=CPU, progress=False,
                 validate=task.validation(h5, config), validate_key="val", **kwargs)
    return model, result


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_bf16_autocast_training_then_float32_evaluation(name: str, prepared, tmp_path: Path) -> None:
    config, h5, stats = prepared[name]
    task = get_task(name)
    seed_everything(config.seed)
    model = task.build_model(config, h5)
    dtypes, hooks = linear_output_dtypes(model)
    batch_at, loss_fn = task.training_batches(h5, config)
    result = fit(model, loss_fn, batch_at, config, tmp_path, device=CPU, progress=False, autocast=True,
                 validate=task.validation(h5, config), validate_key="val")
    assert torch.bfloat16 in dtypes  # the training forward ran in bf16 ...
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"]) for row in result.history)
    assert [row["step"] for row in result.history if "val" in row] == [2, 4]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... on float32 weights

    dtypes.clear()
    headline, tables = task.evaluate(model, h5, json.loads(stats.read_text()), config.train.eval_batch_size, CPU)
    assert dtypes == {torch.float32}  # evaluation: full precision
    assert task.MAIN_METRIC in headline and "attention" in tables
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast region
        again, _ = task.evaluate(model, h5, json.loads(stats.read_text()), config.train.eval_batch_size, CPU)
    assert dtypes == {torch.float32}
    np.testing.assert_equal(again, headline)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_batches_ignore_torch_rng_and_workers_make_the_same_ones(name: str, prepared) -> None:
    """``batch_at`` draws only from numpy Generators seeded by (seed, step): torch's global generator neither
    changes a batch nor is advanced by one, so worker processes make the very batches the training process would."""
    config, h5, _ = prepared[name]
    batch_at, _ = get_task(name).training_batches(h5, config)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    in_process = [batch_at(step) for step in range(3, 7)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    assert all(torch.equal(a, b) for a, b in zip(batch_at(5), in_process[2]))

    state = torch.get_rng_state()
    from_workers = list(step_batches(batch_at, 3, 6, workers=2))
    assert torch.equal(torch.get_rng_state(), state)  # starting the loader drew nothing from it
    assert len(from_workers) == 4
    for made, expected in zip(from_workers, in_process):
        assert type(made) is type(expected) and len(made) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(made, expected))


def test_pose2d_channels_last_trunk(prepared, tmp_path: Path) -> None:
    config, h5, _ = prepared["pose2d"]
    fast = dataclasses.replace(config, train=config.train.model_copy(update={"channels_last": True}))
    model = get_task("pose2d").build_model(fast, h5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

    _, plain = train("pose2d", config, h5, tmp_path / "plain")
    model, result = train("pose2d", fast, h5, tmp_path / "channels_last")
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in model.modules() if isinstance(m, nn.Conv2d))  # still, after the optimiser's steps
    for a, b in zip(plain.history, result.history):  # the same values in another order of summation
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    save_model(tmp_path / "model.pt", model, fast)
    loaded = load_model(tmp_path / "model.pt", get_task("pose2d").ARCHITECTURES)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
