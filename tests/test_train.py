"""The training loop on a tiny CPU regression model: bit-identical reruns, resume == uninterrupted, atomic
checkpoints, divergence handling, logging, progress lines, validation, per-step learning rates, gradient histograms
and clipping."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from torch import nn

from flexheads.config import Params, RunConfig
from flexheads.errors import TrainingDiverged
from flexheads.optim.schedules import lr_at
from flexheads.train import (
    CHECKPOINT,
    GRAD_BINS,
    TrainResult,
    checkpoint_matches,
    fit,
    grad_histogram,
    pick_device,
    progress_line,
    seed_everything,
)

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
CPU = torch.device("cpu")
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which build_optimizer keeps


def make_config(regime: str = "preln", *, seed: int = 0, regime_updates: dict[str, Any] | None = None,
                **train: Any) -> RunConfig:
    """A validated RunConfig from the repo's params.yaml with a short run: 30 steps, checkpoints every 10."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["experiment"]["seeds"] = [seed]
    raw["regimes"]["preln"].update(lr=1e-2, warmup=5)  # warm up within the short run
    raw["regimes"][regime].update(regime_updates or {})
    raw["train"]["pose3d"].update(
        {"steps": 30, "checkpoint_every": 10, "log_every": 5, "grad_snapshot_steps": [1, 2, 5, 40], **train}
    )
    params = Params.model_validate(raw)
    (run,) = [r for r in params.runs() if r.task == "pose3d" and r.attention == "standard" and r.regime == regime]
    return params.run_config(run)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of a step: a pure function of the step."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(8, 1, generator=g)
    return x, y


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class Recorder:
    """A ``batch_at`` that records the steps it is asked for and can fail at one of them."""

    def __init__(self, fail_at: int | None = None, exc: BaseException | None = None,
                 batches: Callable[[int], Any] = batch_at) -> None:
        self.steps: list[int] = []
        self.fail_at, self.exc, self.batches = fail_at, exc, batches

    def __call__(self, step: int) -> Any:
        if step == self.fail_at:
            raise self.exc or KeyboardInterrupt
        self.steps.append(step)
        return self.batches(step)


def train(config: RunConfig, out_dir: Path, batches: Callable[[int], Any] = batch_at, *, progress: bool = False,
          **kwargs: Any) -> tuple[nn.Module, TrainResult]:
    """What the train stage does: seed, build the model, fit (quietly unless asked for progress)."""
    seed_everything(config.seed)
    model = tiny_model()
    result = fit(model, loss_fn, batches, config, out_dir, device=CPU, progress=progress, **kwargs)
    return model, result


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    return torch.load(out_dir / CHECKPOINT, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, TrainResult]]:
    """Reference runs of the default short config, per regime, trained once for the module."""
    runs = {}
    for regime in ("preln", "radam", "noam"):
        runs[regime] = train(make_config(regime), tmp_path_factory.mktemp(f"ref-{regime}"))
    return runs


# --- determinism and resume ---------------------------------------------------------------------------


def test_history_rows(uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    _, result = uninterrupted["preln"]
    assert result.steps == 30
    assert [row["step"] for row in result.history] == list(range(1, 31))
    assert all(set(row) == {"step", "loss", "lr", "grad_norm"} for row in result.history)
    assert all(math.isfinite(row["loss"]) and row["grad_norm"] > 0 for row in result.history)
    assert result.final_loss == result.history[-1]["loss"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]  # it does learn


def test_same_config_twice_is_bit_identical(tmp_path: Path,
                                            uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    ref_model, ref = uninterrupted["preln"]
    model, result = train(make_config(), tmp_path)
    assert result.history == ref.history  # floats compared with ==
    assert result.grad_histograms == ref.grad_histograms
    assert_same_weights(model, ref_model)


def test_another_seed_gives_another_run(tmp_path: Path,
                                        uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    """Control for the bit-identity tests: they compare something that can differ."""
    _, ref = uninterrupted["preln"]
    _, result = train(make_config(seed=1), tmp_path)
    assert [r["loss"] for r in result.history] != [r["loss"] for r in ref.history]


@pytest.mark.parametrize("regime", ["preln", "radam", "noam"])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(
    tmp_path: Path, regime: str, uninterrupted: dict[str, tuple[nn.Module, TrainResult]]
) -> None:
    ref_model, ref = uninterrupted[regime]
    config = make_config(regime)

    interrupted = Recorder(fail_at=17)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, interrupted)
    assert interrupted.steps == list(range(1, 17))
    assert load_checkpoint(tmp_path)["step"] == 10

    resumed = Recorder()
    model, result = train(config, tmp_path, resumed)
    assert resumed.steps == list(range(11, 31))  # it resumed rather than restarted
    assert result.history == ref.history
    assert result.grad_histograms == ref.grad_histograms
    assert_same_weights(model, ref_model)


def test_resume_without_rng_restore_would_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    """Control: with dropout in the model, the resume test above depends on the restored RNG state."""
    _, ref = uninterrupted["preln"]
    config = make_config()
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, Recorder(fail_at=17))
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    _, result = train(config, tmp_path)
    assert result.history[:10] == ref.history[:10]
    assert [r["loss"] for r in result.history[10:]] != [r["loss"] for r in ref.history[10:]]


def test_rerun_of_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    config = make_config(steps=23)  # not a multiple of checkpoint_every: the last step is checkpointed anyway
    ref_model, ref = train(config, tmp_path)
    assert load_checkpoint(tmp_path)["step"] == 23
    again = Recorder()
    model, result = train(config, tmp_path, again)
    assert again.steps == []
    assert result.history == ref.history
    assert_same_weights(model, ref_model)


def test_checkpoint_of_another_config_is_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(make_config(), tmp_path, Recorder(fail_at=12))
    assert load_checkpoint(tmp_path)["step"] == 10

    other = make_config(regime_updates={"lr": 5e-3})
    recorder = Recorder()
    model, result = train(other, tmp_path, recorder)
    assert "written for other run config; deleted, training starts from step 0" in capsys.readouterr().err
    assert recorder.steps == list(range(1, 31))
    fresh_model, fresh = train(other, tmp_path / "fresh")
    assert result.history == fresh.history
    assert_same_weights(model, fresh_model)
    assert load_checkpoint(tmp_path)["fingerprint"] == {"run_config": other.resume_hash()}


@pytest.mark.parametrize(("part", "named"), [("data", "prepared data"), ("code", "training code")])
def test_checkpoint_of_other_data_or_code_is_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     part: str, named: str) -> None:
    config = make_config()
    written_under = {"run_config": config.hash(), "data": "d1", "code": "c1"}
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, Recorder(fail_at=12), fingerprint=written_under)
    assert checkpoint_matches(tmp_path / CHECKPOINT, written_under)

    now = {**written_under, part: "changed"}
    assert not checkpoint_matches(tmp_path / CHECKPOINT, now)
    assert capsys.readouterr().err.strip() == (f"{tmp_path / CHECKPOINT}: written for other {named}; deleted, "
                                               "training starts from step 0")
    assert not (tmp_path / CHECKPOINT).exists()
    recorder = Recorder()
    train(config, tmp_path, recorder, fingerprint=now)
    assert recorder.steps == list(range(1, 31))


def test_unreadable_checkpoint_is_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert not checkpoint_matches(tmp_path / CHECKPOINT, {"run_config": "x"})
    assert capsys.readouterr().err.startswith(f"{tmp_path / CHECKPOINT}: not a checkpoint (not a torch file")
    assert not (tmp_path / CHECKPOINT).exists()


# --- checkpoints --------------------------------------------------------------------------------------


def test_checkpoint_contents(tmp_path: Path, uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    ref_model, ref = uninterrupted["preln"]
    config = make_config()
    train(config, tmp_path)
    payload = load_checkpoint(tmp_path)  # weights_only=True: nothing but tensors and plain containers
    assert payload["step"] == 30
    assert payload["fingerprint"] == {"run_config": config.resume_hash()}
    assert payload["history"] == ref.history
    model = tiny_model()
    model.load_state_dict(payload["model"])
    assert_same_weights(model, ref_model)


def test_checkpoints_leave_no_temporary_files(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(make_config(), tmp_path, Recorder(fail_at=25))
    assert os.listdir(tmp_path) == [CHECKPOINT]
    train(make_config(), tmp_path)
    assert os.listdir(tmp_path) == [CHECKPOINT]


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = Path.write_bytes
    written = []

    def write_then_crash(self: Path, data: Any) -> int:
        written.append(self)
        if len(written) == 1:
            return real_write(self, data)
        real_write(self, bytes(data)[:100])  # half a checkpoint reaches the disk, then the disk is full
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        train(make_config(), tmp_path)
    assert len(written) == 2 and all(p != tmp_path / CHECKPOINT for p in written)  # written beside, renamed
    assert os.listdir(tmp_path) == [CHECKPOINT]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 10


# --- divergence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path, bad: float) -> None:
    def poisoned(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch_at(step)
        return (x, torch.full_like(y, bad)) if step == 23 else (x, y)

    config = make_config()
    logged: list[list[dict[str, float]]] = []
    with pytest.raises(TrainingDiverged) as err:
        train(config, tmp_path, poisoned, log=logged.append)
    message = str(err.value)
    assert "at step 23" in message
    assert "last good checkpoint (step 20)" in message
    assert str(tmp_path / CHECKPOINT) in message
    assert config.run.name in message

    payload = load_checkpoint(tmp_path)
    assert payload["step"] == 20
    assert [row["step"] for row in payload["history"]] == list(range(1, 21))
    tiny_model().load_state_dict(payload["model"])
    # the rows of the steps before the divergence reach the log too
    assert [row["step"] for rows in logged for row in rows] == list(range(1, 23))
    assert [row["step"] for row in logged[-1]] == [21, 22]


def test_non_finite_gradient_never_reaches_the_optimiser(tmp_path: Path) -> None:
    def loss_with_nan_gradient(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, bool]) -> torch.Tensor:
        x, y, poisoned = batch
        loss = loss_fn(model, (x, y))
        if poisoned:  # a finite loss (+ sqrt(0) = 0) whose gradient is 0 · inf = NaN
            loss = loss + torch.sqrt(model(x).sum() * 0)
        return loss

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        return (*batch_at(step), step == 23)

    seed_everything(0)
    model = tiny_model()
    with pytest.raises(TrainingDiverged, match="gradient norm is nan at step 23 .*, so that step was not taken"):
        fit(model, loss_with_nan_gradient, batches, make_config(), tmp_path, device=CPU, progress=False)
    before_step_23, _ = train(make_config(steps=22), tmp_path / "reference")
    assert_same_weights(model, before_step_23)
    assert load_checkpoint(tmp_path)["step"] == 20


def test_absurd_lr_keeps_an_all_finite_checkpoint(tmp_path: Path) -> None:
    config = make_config(regime_updates={"lr": 1e30, "warmup": 1}, checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as err:
        train(config, tmp_path)
    assert "\n" not in str(err.value)
    payload = load_checkpoint(tmp_path)
    tensors = list(_tensors(payload))
    assert len(tensors) > 10
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


class OverflowingStatistic(nn.Module):
    """``tiny_model`` with a running statistic (a buffer, as BatchNorm's) that overflows float32 at step 17."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()
        self.register_buffer("running", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.running += 2e37
        return self.net(x)


def test_non_finite_state_is_never_checkpointed(tmp_path: Path) -> None:
    seed_everything(0)
    with pytest.raises(TrainingDiverged, match="running holds NaN or infinite values after step 20, so it was not "
                                               r"checkpointed; the last good checkpoint \(step 10\)"):
        fit(OverflowingStatistic(), loss_fn, batch_at, make_config(), tmp_path, device=CPU, progress=False)
    assert torch.isfinite(load_checkpoint(tmp_path)["model"]["running"]).all()


def _tensors(tree: Any) -> Any:
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


# --- logging ------------------------------------------------------------------------------------------


def test_log_gets_every_step_once_in_batches_of_log_every(tmp_path: Path) -> None:
    logged: list[list[dict[str, float]]] = []
    _, result = train(make_config(steps=23), tmp_path, log=logged.append)
    assert [[row["step"] for row in rows] for rows in logged] == [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15],
        [16, 17, 18, 19, 20],
        [21, 22, 23],  # the remainder at the end
    ]
    assert [row for rows in logged for row in rows] == result.history


def test_log_after_resume_misses_no_step(tmp_path: Path) -> None:
    """Checkpoint every 10, log every 4, stopped at 11: steps 9 and 10 were checkpointed but never logged."""
    config = make_config(log_every=4)
    first: list[list[dict[str, float]]] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, Recorder(fail_at=11), log=first.append)
    assert [row["step"] for rows in first for row in rows] == list(range(1, 9))

    second: list[list[dict[str, float]]] = []
    _, result = train(config, tmp_path, log=second.append)
    assert [[row["step"] for row in rows] for rows in second][0] == [9, 10, 11, 12]
    assert [row["step"] for rows in second for row in rows] == list(range(9, 31))
    assert [row for rows in first + second for row in rows] == result.history


# --- progress -----------------------------------------------------------------------------------------

PROGRESS_LINE = re.compile(
    r"^(\S+) step (\d+)/(\d+) loss (\S+) lr (\S+) elapsed (\d+:\d\d:\d\d) eta (\d+:\d\d:\d\d)$"
)  # groups: name, step, total, loss, lr, elapsed, eta


def progress_lines(err: str) -> list[re.Match[str]]:
    """The progress lines of captured stderr; fails on any other output."""
    matches = [PROGRESS_LINE.match(line) for line in err.splitlines()]
    assert all(matches), err
    return matches  # type: ignore[return-value]


def test_progress_lines_when_stderr_is_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Captured stderr is not a terminal (like a Snakemake/DVC log): a line every log_every steps and the last."""
    config = make_config(log_every=7)
    _, result = train(config, tmp_path / "run", progress=True)
    lines = progress_lines(capsys.readouterr().err)
    assert [int(m[2]) for m in lines] == [7, 14, 21, 28, 30]
    rows = {row["step"]: row for row in result.history}
    for m in lines:
        row = rows[int(m[2])]
        assert (m[1], m[3]) == (config.run.name, "30")
        assert (m[4], m[5]) == (f"{row['loss']:.4f}", f"{row['lr']:.1e}")
    assert lines[-1][7] == "0:00:00"  # nothing left

    train(config, tmp_path / "quiet")  # progress=False: no bar, no lines
    assert capsys.readouterr().err == ""


def test_progress_lines_after_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(log_every=7)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, Recorder(fail_at=11), progress=True)  # checkpointed at 10
    assert [int(m[2]) for m in progress_lines(capsys.readouterr().err)] == [7]
    train(config, tmp_path, progress=True)
    assert [int(m[2]) for m in progress_lines(capsys.readouterr().err)] == [14, 21, 28, 30]


def test_terminal_shows_the_bar_and_no_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    config = make_config()
    train(config, tmp_path, progress=True)
    shown = terminal.getvalue()
    assert f"{config.run.name}:" in shown and "/30 [" in shown and "loss=" in shown  # the bar, with its postfix
    assert " step " not in shown


def test_progress_line_eta_counts_only_this_process_steps() -> None:
    """Resumed at step 20, 5 steps in 7.2 s: the 375 steps left take 375 * 1.44 s = 9 min."""
    line = progress_line("pose3d-standard-noam-0", 25, 400, 0.81234, 1.234e-4, elapsed_s=7.2, steps_done=5)
    assert line == "pose3d-standard-noam-0 step 25/400 loss 0.8123 lr 1.2e-04 elapsed 0:00:07 eta 0:09:00"
    assert progress_line("r", 1, 2, 1.0, 1.0, elapsed_s=3 * 3600 + 61, steps_done=1).endswith(
        "elapsed 3:01:01 eta 3:01:01")


# --- validation ---------------------------------------------------------------------------------------

VAL_KEY = "val_metric"


class Validator:
    """A ``validate`` that records the mode it runs in and draws random numbers, which must not reach training."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []  # (model.training, grad enabled) per call

    def __call__(self, model: nn.Module, device: torch.device) -> float:
        self.calls.append((model.training, torch.is_grad_enabled()))
        noise = torch.randn(8, 4)  # the global generator: the same one dropout draws from
        x, y = batch_at(0)
        return nn.functional.mse_loss(model(x.to(device) + 0.01 * noise), y.to(device)).item()


def validated_steps(history: list[dict[str, float]]) -> list[int]:
    return [row["step"] for row in history if VAL_KEY in row]


@pytest.mark.parametrize(("steps", "eval_every", "expected"), [
    (23, 2, [*range(2, 23, 2), 23]),  # every eval_every-th step and the last
    (24, 4, [4, 8, 12, 16, 20, 24]),  # the last step is one of them: once
    (23, 0, []),  # 0 disables validation
])
def test_validation_leaves_training_bit_identical(tmp_path: Path, steps: int, eval_every: int,
                                                  expected: list[int]) -> None:
    ref_model, ref = train(make_config(steps=steps, eval_every=0), tmp_path / "none")
    validator = Validator()
    model, result = train(make_config(steps=steps, eval_every=eval_every), tmp_path / "validated",
                          validate=validator, validate_key=VAL_KEY)
    assert_same_weights(model, ref_model)
    assert [{k: v for k, v in row.items() if k != VAL_KEY} for row in result.history] == ref.history
    assert validated_steps(result.history) == expected
    assert all(set(row) == {"step", "loss", "lr", "grad_norm", VAL_KEY} for row in result.history
               if row["step"] in expected)
    assert validator.calls == [(False, False)] * len(expected)  # eval mode, no autograd
    assert model.training  # back in train mode


def test_validation_without_rng_isolation_would_change_training(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Control for the test above: the validator's draws would shift the dropout masks that follow."""
    ref_model, _ = train(make_config(eval_every=0), tmp_path / "none")
    monkeypatch.setattr(torch.random, "fork_rng", lambda *args, **kwargs: contextlib.nullcontext())
    model, _ = train(make_config(eval_every=2), tmp_path / "validated", validate=Validator(), validate_key=VAL_KEY)
    assert any(not torch.equal(a, b) for a, b in zip(weights(model).values(), weights(ref_model).values()))


def test_validation_values_are_logged_checkpointed_and_resumed(tmp_path: Path) -> None:
    config = make_config(eval_every=4, log_every=4)
    ref_model, ref = train(config, tmp_path / "ref", validate=Validator(), validate_key=VAL_KEY)

    first: list[list[dict[str, float]]] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", Recorder(fail_at=17), log=first.append, validate=Validator(),
              validate_key=VAL_KEY)
    assert validated_steps(load_checkpoint(tmp_path / "resumed")["history"]) == [4, 8]
    second: list[list[dict[str, float]]] = []
    model, result = train(config, tmp_path / "resumed", log=second.append, validate=Validator(),
                          validate_key=VAL_KEY)
    assert result.history == ref.history
    assert_same_weights(model, ref_model)
    assert validated_steps(result.history) == [4, 8, 12, 16, 20, 24, 28, 30]
    logged = {row["step"]: row[VAL_KEY] for rows in first + second for row in rows if VAL_KEY in row}
    assert logged == {row["step"]: row[VAL_KEY] for row in ref.history if VAL_KEY in row}


# --- learning rate, gradients -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        # linear warmup, lr 1e-2 over 5 steps, then flat
        ("preln", {1: 2e-3, 2: 4e-3, 3: 6e-3, 4: 8e-3, 5: 1e-2, 6: 1e-2, 30: 1e-2}),
        # Noam with lr 1.0, d_model 64, warmup 200: 64^-0.5 * t * 200^-1.5
        ("noam", {1: 1 / 8 * 200**-1.5, 30: 1 / 8 * 30 * 200**-1.5}),
        # untuned linear, beta2 0.99: tau = 200
        ("linear_untuned", {1: 1e-3 / 200, 20: 1e-3 * 0.1}),
        # untuned exponential, beta2 0.99: 1 - exp(-0.01 t)
        ("exponential_untuned", {1: 1e-3 * (1 - math.exp(-0.01)), 30: 1e-3 * (1 - math.exp(-0.3))}),
        ("radam", {1: 1e-3, 30: 1e-3}),
    ],
)
def test_lr_per_step_follows_the_schedule(tmp_path: Path, regime: str, expected: dict[int, float]) -> None:
    pinned = {  # the values the expected rates above were computed with, whatever params.yaml says today
        "noam": {"lr": 1.0, "warmup": 200},
        "linear_untuned": {"lr": 1e-3, "betas": [0.9, 0.99]},
        "exponential_untuned": {"lr": 1e-3, "betas": [0.9, 0.99]},
        "radam": {"lr": 1e-3},
    }
    config = make_config(regime, regime_updates=pinned.get(regime))
    _, result = train(config, tmp_path)
    lrs = {row["step"]: row["lr"] for row in result.history}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9), step
    r = config.regime
    schedule = lr_at(r.schedule, lr=r.lr, warmup=r.warmup, beta2=r.betas[1], d_model=config.model.d_model)
    assert all(row["lr"] == schedule(row["step"]) for row in result.history)


def max_first_step_change(tmp_path: Path, grad_clip: float) -> tuple[float, TrainResult]:
    """The largest |change| of any weight after one Adam step of the preln regime (lr at step 1: 2e-3)."""
    seed_everything(0)
    start = weights(tiny_model())
    model, result = train(make_config(steps=1, regime_updates={"grad_clip": grad_clip}), tmp_path)
    change = max((weights(model)[k] - start[k]).abs().max().item() for k in start)
    return change, result


def test_optimizer_uses_the_scheduled_lr(tmp_path: Path) -> None:
    """Adam's first step moves a weight by lr * |g| / (|g| + eps) ~ lr: the scheduled 2e-3, not the base 1e-2."""
    change, _ = max_first_step_change(tmp_path, grad_clip=0.0)
    assert change == pytest.approx(2e-3, rel=1e-3)


def test_grad_clip_bounds_the_update(tmp_path: Path) -> None:
    """Clipped to a global norm of 1e-10, every |g| <= 1e-10 and Adam's first step is <= lr * 1e-10 / (1e-10 + eps)."""
    clip, lr = 1e-10, 2e-3
    unclipped, free = max_first_step_change(tmp_path / "free", grad_clip=0.0)
    clipped, result = max_first_step_change(tmp_path / "clipped", grad_clip=clip)
    assert clipped <= lr * clip / (clip + ADAM_EPS) * (1 + 1e-3)
    assert clipped < unclipped / 50
    # the recorded norm is the pre-clip norm, the same as without clipping
    assert result.history[0]["grad_norm"] == free.history[0]["grad_norm"] > clip


def test_grad_clip_zero_disables_clipping(tmp_path: Path) -> None:
    model_off, off = train(make_config(regime_updates={"grad_clip": 0.0}), tmp_path / "off")
    model_huge, huge = train(make_config(regime_updates={"grad_clip": 1e9}), tmp_path / "huge")
    assert off.history == huge.history
    assert_same_weights(model_off, model_huge)


def test_grad_histograms_at_snapshot_steps(tmp_path: Path) -> None:
    """Snapshots exactly at the configured steps <= steps; counts sum to the non-zero gradient entries."""
    nonzero: dict[int, int] = {}
    current = [0]

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        current[0] = step
        x, y = batch_at(step)
        x[:, 3] = 0.0  # the 16 weights reading input 3 get an exactly-zero gradient
        return x, y

    seed_everything(0)
    model = tiny_model()
    for p in model.parameters():
        p.register_hook(lambda g: nonzero.__setitem__(current[0], nonzero.get(current[0], 0) + int((g != 0).sum())))
    config = make_config(grad_snapshot_steps=[1, 2, 5, 30, 40])
    result = fit(model, loss_fn, batches, config, tmp_path, device=CPU, progress=False)

    assert sorted(result.grad_histograms) == [1, 2, 5, 30]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 4 * 16 + 16 + 16 + 1
    for step, counts in result.grad_histograms.items():
        assert len(counts) == len(GRAD_BINS) - 1
        assert sum(counts) == nonzero[step]
        assert 0 < sum(counts) <= n_params - 16


def test_grad_histogram_bins_by_hand() -> None:
    layer = nn.Linear(6, 1, bias=False)
    layer.weight.grad = torch.tensor([[10**-2.9, -(10**-2.9), 0.0, 1e-20, 1e3, 10**-11.9]])
    counts = grad_histogram(layer)
    # edges -12, -11.8, ..., 2 (0.2 apart): log10 = -2.9 is bin (−2.9 + 12) / 0.2 = 45.5 -> 45; zeros dropped;
    # 1e-20 and 1e3 are clamped into the first and last bins; -11.9 is bin 0 as well
    expected = [0] * 70
    expected[45], expected[0], expected[69] = 2, 2, 1
    assert counts == expected


# --- devices and seeds --------------------------------------------------------------------------------


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_seed_everything_repeats_draws() -> None:
    seed_everything(3)
    a = torch.rand(5)
    seed_everything(3)
    assert torch.equal(torch.rand(5), a)
    assert torch.are_deterministic_algorithms_enabled()


# --- host syncs, timings, loader, compile, fused optimiser ---------------------------------------------


def poisoned_at(bad_step: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch_at(step)
        return (x, torch.full_like(y, math.nan)) if step == bad_step else (x, y)

    return batches


def test_reading_losses_every_few_steps_gives_the_same_run(
        tmp_path: Path, uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    """The CUDA path (loss and gradient norm read every ``sync_every`` steps) on CPU: the same history and weights."""
    ref_model, ref = uninterrupted["preln"]
    logged: list[list[dict[str, float]]] = []
    model, result = train(make_config(), tmp_path, sync_every=7, log=logged.append)
    assert result.history == ref.history
    assert_same_weights(model, ref_model)
    assert [row for rows in logged for row in rows] == ref.history


@pytest.mark.parametrize(("bad_step", "taken"), [(23, "steps 23 to 24 were"), (24, "step 24 was")])
def test_a_deferred_read_names_the_first_bad_step_and_the_steps_taken(tmp_path: Path, bad_step: int,
                                                                      taken: str) -> None:
    """Read every 10 steps, and at the log step 25 (log_every 5): the divergence at step 23 is seen at 25, after
    the optimiser took steps 23 and 24; their state is discarded and the step-20 checkpoint kept."""
    logged: list[list[dict[str, float]]] = []
    with pytest.raises(TrainingDiverged) as err:
        train(make_config(), tmp_path, poisoned_at(bad_step), sync_every=10, log=logged.append)
    message = str(err.value)
    assert f"loss is nan at step {bad_step} (lr 0.01), seen at step 25" in message
    assert f"so {taken} taken and are discarded; the last good checkpoint (step 20) is kept at" in message
    assert "\n" not in message
    assert load_checkpoint(tmp_path)["step"] == 20
    assert [row["step"] for rows in logged for row in rows] == list(range(1, bad_step))  # the good steps only


def test_on_cpu_the_bad_step_is_never_taken(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 23 \(lr 0.01\), so that step was not taken; "):
        train(make_config(), tmp_path, poisoned_at(23))


def test_timings_add_up_over_resumes(tmp_path: Path) -> None:
    config = make_config()
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, Recorder(fail_at=17))
    first = load_checkpoint(tmp_path)
    assert first["cpu_time_s"] > 0 and first["steps_per_s"] > 0  # 10 steps in this process
    _, result = train(config, tmp_path)
    last = load_checkpoint(tmp_path)
    assert result.wall_time_s == last["wall_time_s"] > first["wall_time_s"]
    assert result.cpu_time_s == last["cpu_time_s"] > first["cpu_time_s"]
    assert result.steps_per_s == last["steps_per_s"] > 0  # 20 steps of the resumed process
    _, again = train(config, tmp_path)  # finished: trains nothing, reports what the checkpoint holds
    assert (again.wall_time_s, again.cpu_time_s, again.steps_per_s) == (
        result.wall_time_s, result.cpu_time_s, result.steps_per_s)


def test_cpu_time_leaves_out_waiting(tmp_path: Path) -> None:
    """A loop that mostly waits (here for its batches): wall time counts the waiting, CPU time does not."""

    def slow(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.05)
        return batch_at(step)

    _, result = train(make_config(steps=10), tmp_path, slow)
    assert result.wall_time_s >= 0.5
    assert result.cpu_time_s < result.wall_time_s - 0.3
    assert result.steps_per_s == pytest.approx(10 / result.wall_time_s, rel=0.2)


def test_loader_workers_give_the_same_run(tmp_path: Path,
                                          uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    """Batches made in two worker processes: the same batches, and the training process's RNG (dropout) untouched."""
    ref_model, ref = uninterrupted["preln"]
    model, result = train(make_config(loader_workers=2), tmp_path)
    assert result.history == ref.history
    assert_same_weights(model, ref_model)


def test_loader_workers_resume_exactly(tmp_path: Path,
                                       uninterrupted: dict[str, tuple[nn.Module, TrainResult]]) -> None:
    ref_model, ref = uninterrupted["preln"]
    config = make_config(loader_workers=2)
    with pytest.raises(TrainingDiverged):  # stopped after the step-10 checkpoint
        train(config, tmp_path, poisoned_at(13))
    model, result = train(config, tmp_path)
    assert result.history == ref.history
    assert_same_weights(model, ref_model)


@pytest.mark.parametrize(("regime", "flag"), [("preln", "fused"), ("radam", "foreach")])
def test_fused_optimizer_trains_to_nearly_the_same_weights(tmp_path: Path, regime: str, flag: str,
                                                           uninterrupted: dict[str, tuple[nn.Module, TrainResult]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real = torch.optim.Optimizer.__init__

    def recording(self: torch.optim.Optimizer, params: Any, defaults: dict[str, Any]) -> None:
        built.append(defaults)
        real(self, params, defaults)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", recording)
    ref_model, ref = uninterrupted[regime]
    model, result = train(make_config(regime, fused_optimizer=True), tmp_path)
    assert built[0][flag] is True
    assert [row["step"] for row in result.history] == list(range(1, 31))
    for key, value in weights(model).items():  # another summation order: equal to rounding
        torch.testing.assert_close(value, weights(ref_model)[key], rtol=1e-4, atol=1e-5)


def test_compile_wraps_the_step_not_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile: true`` compiles the training step's loss function (here with dynamo's ``eager`` backend, which
    compiles in a second); the checkpoint holds the eager module's own keys and validation gets that module."""
    compiled = []
    real = torch.compile

    def eager_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled.append(fn)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    seen: list[type] = []

    def validate(model: nn.Module, device: torch.device) -> float:
        seen.append(type(model))
        return 0.0

    model, result = train(make_config(compile=True, steps=10), tmp_path, validate=validate, validate_key=VAL_KEY)
    assert compiled == [loss_fn]
    assert list(load_checkpoint(tmp_path)["model"]) == list(tiny_model().state_dict()) == list(model.state_dict())
    assert seen and all(kind is nn.Sequential for kind in seen)
    assert all(math.isfinite(row["loss"]) for row in result.history)


@pytest.mark.slow
def test_compile_with_inductor_trains(tmp_path: Path) -> None:
    """The real thing (inductor, a C++ compiler on CPU): ~25 s on 2 cores.  Its dropout draws other masks than
    eager mode's, so the run is another run; it learns as the eager one does."""
    from torch._dynamo.utils import counters

    counters.clear()
    model, result = train(make_config(compile=True), tmp_path)
    assert counters["stats"]["unique_graphs"] >= 1
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not any(key.startswith("_orig_mod") for key in load_checkpoint(tmp_path)["model"])


def test_seeding_makes_kernels_deterministic_without_importing_the_compiler() -> None:
    """seed_everything turns torch's deterministic mode on (warn-only) but leaves torch._inductor unimported: the
    compiler stack costs a short stage ~2.5 CPU-seconds of imports."""
    code = ("import sys, torch\nfrom flexheads.train import seed_everything\nseed_everything(0)\n"
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),"
            " 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
