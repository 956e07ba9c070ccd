"""The Task contract: every registered task satisfies it, and a fourth task written outside flexheads (here, in
this module) trains, evaluates and appears in the report's tables through it, with no change to ``stages.py``,
``report/`` or ``config.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import Tensor, nn

from flexheads.config import EncoderSettings, PositiveInt, Section, TrainSettings, load_params
from flexheads.data.prepared import open_prepared, seal
from flexheads.io import atomic_path, write_json
from flexheads.models.config import ModelConfig, encoder_config
from flexheads.nn import EncoderConfig, TransformerEncoder, init_weights
from flexheads.report.figures import FIGURE_KINDS, write_figures
from flexheads.report.tables import write_tables
from flexheads.stages import evaluate_run, train_run
from flexheads.tasks import BUILTIN_TASKS, TaskSettings, check_task, get_task, register, registered_tasks, unregister
from flexheads.tasks.evaluation import attention_record
from conftest import tiny_heads

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_every_builtin_task_satisfies_the_protocol(name):
    task = get_task(name)
    assert check_task(task) == []
    assert task.NAME == name
    assert {kind for _, kind in task.REPORT_FIGURES} <= set(FIGURE_KINDS)


def test_check_task_names_what_is_missing():
    class Half:
        NAME, TITLE = "half", 3

        def download(self, data, out_dir):  # one argument short of the protocol's prepare below
            return {}

        def prepare(self, data):
            return {}

    problems = check_task(Half())
    assert "TITLE is a int, not a str" in problems and "missing constant SETTINGS" in problems
    assert "missing hook evaluate(model, h5_path, stats, batch_size, device)" in problems
    assert "missing hook sample_metric(samples)" in problems and "missing constant SAMPLE_GROUP" in problems
    assert any(p.startswith("hook prepare takes ['data']") for p in problems)
    with pytest.raises(ValueError, match="does not satisfy"):
        register(Half())


# --- a fourth task, defined here ---------------------------------------------------------------------------------

N_TOKENS = 4  # each sample: 4 tokens of 2 numbers; the target is the sum of every number


class ToyModelSettings(EncoderSettings):
    pass


class ToyData(Section):
    n_samples: PositiveInt = 96
    seed: int = 0


@dataclass(frozen=True)
class ToyConfig(ModelConfig):
    n_tokens: int
    encoder: EncoderConfig


class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(2, config.encoder.d_model)
        self.encoder = TransformerEncoder.from_config(config.encoder)
        self.head = nn.Linear(config.encoder.d_model, 1)
        init_weights(self, config.encoder.init)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        tokens, weights = self.encoder(self.embed(x), need_weights=need_weights)
        return self.head(tokens).sum((1, 2)), weights


class ToyTask:
    """A task that satisfies ``flexheads.tasks.Task`` with methods of an object instead of module functions."""

    NAME = "toy"
    TITLE = "Toy regression"
    SETTINGS = TaskSettings(model=ToyModelSettings, train=TrainSettings, data=ToyData)
    ARCHITECTURES = {"ToyModel": lambda config: ToyModel(ToyConfig.from_dict(config))}
    MAIN_METRIC = "mse"
    MAIN_METRIC_UNIT = ""
    SAMPLE_GROUP = "samples"
    LOSS_LABEL = "training loss: MSE"
    REPORT_CAPTION = "toy: mean squared error of the sum of the tokens."
    REPORT_COLUMNS = [("mse", "MSE", "min")]
    REPORT_BREAKDOWNS = [("per_sign", "sign", "mse", "MSE", "min")]
    REPORT_FIGURES = ()

    def download(self, data: ToyData, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(data.seed).normal(size=(data.n_samples, N_TOKENS, 2)).astype(np.float32)
        with atomic_path(out_dir / "toy.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, x)
        return {"samples": out_dir / "toy.npy"}

    def prepare(self, data: ToyData, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
        x = np.load(raw_dir / "toy.npy")
        parts = {"train": x[: len(x) // 2], "val": x[len(x) // 2 : 3 * len(x) // 4], "test": x[3 * len(x) // 4 :]}
        stats: dict[str, Any] = {"splits": {name: {"rows": len(part)} for name, part in parts.items()}}
        with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
            for name, part in parts.items():
                h5.create_dataset(f"{name}/x", data=part)
                h5.create_dataset(f"{name}/y", data=part.sum((1, 2)))
            stats["content_sha256"] = seal(h5, self.NAME)
        write_json(stats_json, stats)
        return stats

    def build_model(self, config, h5_path: Path) -> ToyModel:
        return ToyModel(ToyConfig(n_tokens=N_TOKENS, encoder=encoder_config(config)))

    def _split(self, h5_path: Path, split: str) -> tuple[Tensor, Tensor]:
        with open_prepared(h5_path, self.NAME) as h5:
            return torch.from_numpy(h5[split]["x"][:]), torch.from_numpy(h5[split]["y"][:])

    def training_batches(self, h5_path: Path, config):
        x, y = self._split(h5_path, "train")

        def batch_at(step: int) -> tuple[Tensor, Tensor]:
            rows = np.random.default_rng([config.seed, step]).choice(len(x), size=config.train.batch_size)
            return x[rows], y[rows]

        def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
            return (model(batch[0])[0].float() - batch[1]).square().mean()

        return batch_at, loss_fn

    def validation(self, h5_path: Path, config):
        x, y = self._split(h5_path, "val")
        return lambda model, device: float((model.eval()(x)[0] - y).square().mean())

    def evaluate(self, model, h5_path, stats, batch_size, device):
        x, y = self._split(h5_path, "test")
        with torch.no_grad():
            squared = (model.eval()(x)[0] - y).square().numpy()
        positive = (y > 0).numpy()
        per_sign = pd.DataFrame({"sign": ["negative", "positive"],
                                 "mse": [squared[~positive].mean(), squared[positive].mean()]})
        attention = attention_record(model, x[:1], device, tokens=[f"t{i}" for i in range(N_TOKENS)], grid=(0, 0),
                                     image=x[0].numpy())
        samples = {"squared_error": squared, "group": np.arange(len(squared))}
        return {"mse": self.sample_metric(samples)}, {"per_sign": per_sign, "attention": attention, "samples": samples}

    def sample_metric(self, samples):
        return float(samples["squared_error"].mean())


@pytest.fixture
def toy_registered():
    register(ToyTask())
    yield
    unregister("toy")


def toy_params(tmp_path: Path) -> Path:
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["experiment"].update(tasks=["toy"], regimes=["radam", "tfixup"])
    raw["model"]["toy"] = {"d_model": 16, "n_layers": 1, "d_ff": 32,
                           "dropout": 0.0, "activation": "gelu"}
    raw["heads"]["toy"] = tiny_heads(2, 16, 1)
    raw["train"]["toy"] = {"steps": 5, "batch_size": 16, "checkpoint_every": 5, "log_every": 5,
                           "grad_snapshot_steps": [1, 2], "eval_batch_size": 16, "eval_every": 5}
    raw["data"]["toy"] = {"n_samples": 64}
    raw["tracking"]["enabled"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_fourth_task_trains_evaluates_and_is_reported(tmp_path, toy_registered):
    assert registered_tasks() == (*BUILTIN_TASKS, "toy")
    params = load_params(toy_params(tmp_path))
    assert params.model.toy.d_model == 16 and params.train.toy.steps == 5 and params.data.toy.n_samples == 64
    task = get_task("toy")
    task.download(params.task_data("toy"), tmp_path / "raw")
    task.prepare(params.task_data("toy"), tmp_path / "raw", tmp_path / "toy.h5", tmp_path / "toy.stats.json")

    for run in params.runs():
        summary = train_run(params, run.name, tmp_path / "toy.h5", tmp_path / "models" / run.name, device="cpu",
                            progress=False)
        assert summary["steps"] == 5 and np.isfinite(summary["final_loss"])
        history = pd.read_csv(tmp_path / "models" / run.name / "history.csv")
        assert len(history) == 5 and history["val_mse"].notna().sum() == 1
        metrics = evaluate_run(params, run.name, tmp_path / "toy.h5", tmp_path / "toy.stats.json",
                               tmp_path / "models" / run.name, tmp_path / "metrics" / f"{run.name}.json", device="cpu")
        assert metrics["main_metric"] == "mse" and metrics["mse"] > 0
        assert (tmp_path / "metrics" / run.name / "per_sign.csv").is_file()

    written = write_tables(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    names = {path.name for path in written}
    assert {"toy.md", "toy_per_sign.md", "summary.md"} <= names
    table = (tmp_path / "reports" / "tables" / "toy.md").read_text()
    assert "toy: mean squared error" in table and all(run.name.split("-")[2] in table for run in params.runs())
    summary = pd.read_csv(tmp_path / "reports" / "tables" / "summary.csv")
    assert set(summary["task"]) == {"toy"} and set(summary["regime"]) == {"radam", "tfixup"}
    assert {"flexible − standard lo", "vs best regime significant"} <= set(summary.columns)
    assert "toy: samples" in (tmp_path / "reports" / "tables" / "summary.md").read_text()  # the resampling unit
    assert json.loads((tmp_path / "metrics" / "toy-flexible-tfixup-0.json").read_text())["attention"] == "flexible"
    figures = write_figures(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    assert {"toy_curves.png", "toy_grad_histograms.png", "toy_attention.png"} <= {path.name for path in figures}


def test_params_of_an_unregistered_task_are_refused(tmp_path):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["experiment"]["tasks"] = ["toy"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="unknown task 'toy'; tasks are: pose3d, pose2d, cxr"):
        load_params(path)
