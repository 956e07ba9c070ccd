"""`flexheads bench`: the interleaved timer on a fake clock, the attention variants' FLOPs, and the JSON and Markdown
the bench writes, on a tiny plan (fast) and as `flexheads bench --device cpu --quick` runs it (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import flexheads.bench.run
from flexheads.bench.models import equal_flops_heads
from flexheads.nn import attention_flops
from flexheads.bench.run import Rounds, default_plan, run_bench
from flexheads.bench.timing import interleaved, round_order
from flexheads.cli import app
from flexheads.config import load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
THESIS = REPO / "params" / "thesis.yaml"
POSITIVE = ("median_s", "repeats_s", "samples_per_s", "first_step_s", "wall_time_s", "step_s_median")


class FakeClock:
    """A clock that only moves when a phase says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def phase(self, name: str, durations: list[float]) -> Any:
        def run() -> None:
            self.calls.append(name)
            self.now += durations.pop(0)
        return run


def test_interleaved_rotates_the_candidates_and_takes_medians_of_per_step_means():
    clock = FakeClock()
    # warm-up round, then 3 repeats of 2 steps each; a's data phase and b's step are slow in one repeat
    a_data = [9.0, 9.0] + [1.0, 1.0] + [5.0, 7.0] + [1.0, 3.0]
    a_step = [9.0, 9.0] + [2.0, 2.0] + [2.0, 2.0] + [4.0, 4.0]
    b_step = [9.0, 9.0] + [3.0, 3.0] + [30.0, 30.0] + [5.0, 1.0]
    syncs = []
    timings = interleaved({"a": {"data": clock.phase("a.data", a_data), "step": clock.phase("a.step", a_step)},
                           "b": {"step": clock.phase("b.step", b_step)}},
                          warmup=1, repeats=3, steps=2, sync=lambda: syncs.append(1), clock=clock)

    a_round = ["a.data", "a.step"] * 2
    b_round = ["b.step"] * 2
    assert clock.calls == a_round + b_round + b_round + a_round + a_round + b_round + b_round + a_round
    assert timings["a"]["data"].repeats == (1.0, 6.0, 2.0) and timings["a"]["data"].median == 2.0
    assert timings["a"]["step"].repeats == (2.0, 2.0, 4.0) and timings["a"]["step"].median == 2.0
    assert timings["b"]["step"].repeats == (3.0, 30.0, 3.0) and timings["b"]["step"].median == 3.0
    assert len(syncs) == 2 * len(clock.calls)  # before and after every phase
    assert not a_data and not a_step and not b_step


def test_round_order_starts_each_round_one_candidate_later():
    names = ["a", "b", "c"]
    assert [round_order(names, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                          ["a", "b", "c"]]


def test_interleaved_needs_a_repeat_and_a_step():
    with pytest.raises(ValueError, match="repeats >= 1"):
        interleaved({"a": {"step": lambda: None}}, warmup=1, repeats=0, steps=1)


@pytest.mark.parametrize("d_model, n_heads, expected", [(64, 8, (4, 16)), (384, 6, (3, 128)), (10, 5, (2, 5)),
                                                         (6, 1, (2, 3)), (7, 1, None)])
def test_equal_flops_heads_keep_the_inner_width(d_model, n_heads, expected):
    heads = equal_flops_heads(d_model, n_heads)
    assert heads == expected
    if heads is not None:
        assert attention_flops(197, d_model, heads[0] * heads[1]) == attention_flops(197, d_model, d_model)


def numbers(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, float]]:
    """Every number in a JSON value with its key path (booleans are not numbers here)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from numbers(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from numbers(value, (*path, i))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def keys(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from keys(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from keys(value)


def check_result(result: dict[str, Any], out: Path, device: str = "cpu", with_timm: bool = True) -> None:
    """The bench's JSON (written as returned) and Markdown: every measurement present, finite and positive,
    stall fractions in [0, 1], every ratio against timm named so."""
    assert json.loads((out / f"{device}.json").read_text()) == result
    markdown = (out / f"{device}.md").read_text()
    assert markdown.startswith(f"# flexheads bench: {device}") and "## Training throughput" in markdown

    env = result["environment"]
    assert env["device"] == device and env["device_name"] and env["torch"] and env["threads"] >= 1
    assert isinstance(env["quick"], bool) and (env["timm"] is not None) == with_timm
    for path, value in numbers(result):
        assert math.isfinite(value), path
        key = next(part for part in reversed(path) if isinstance(part, str))
        if key == "data_stall_fraction":
            assert 0.0 <= value <= 1.0, path
        elif key.endswith("ratio") or key in POSITIVE:
            assert value > 0, path
        else:
            assert value >= 0, path
    for key in keys(result):
        if "timm" in key and key != "timm":
            assert "ratio" in key, key
    timm_ratios = [key for key in keys(result["tasks"]) if "timm" in key and "ratio" in key]
    assert bool(timm_ratios) == (with_timm and "cxr" in result["tasks"])

    assert result["tasks"].keys() == set(result["plan"]["tasks"])
    for task, sizes in result["tasks"].items():
        assert list(sizes) == result["plan"]["sizes"]
        for size, group in sizes.items():
            assert {"standard", "flexible", "flexible_equal_flops"} <= group["throughput"].keys()
            for entry in group["throughput"].values():
                assert len(entry["step_s"]["repeats_s"]) == result["plan"]["rounds"][size]["repeats"]
                assert entry["samples_per_s"] == pytest.approx(group["batch_size"] / entry["step_s"]["median_s"])
            assert "flexible_vs_standard_ratio" in group and "flexible_equal_flops_vs_standard_ratio" in group
            equal = group["throughput"]["flexible_equal_flops"]
            assert equal["attention_flops_per_layer"] == group["throughput"]["standard"]["attention_flops_per_layer"]
            stall = group["data"]
            assert stall["data_stall_fraction"] == pytest.approx(
                stall["data_s"]["median_s"] / (stall["data_s"]["median_s"] + stall["step_s_median"]))
            assert ("compile" in group) != ("compile" in group.get("skipped", {}))
            if task == "cxr" and with_timm:
                assert {"timm"} <= group["throughput"].keys()
                key = "vit_default_vs_timm_ratio" if size == "default" else "vit_thesis_vs_timm_ratio"
                assert key in group


def tiny_plan(tasks: tuple[str, ...] = ("pose3d", "pose2d", "cxr")):
    """Smaller than --quick: params.yaml's sizes only, two repeats of one step."""
    return dataclasses.replace(default_plan("cpu", quick=True, tasks=tasks), sizes=("default",),
                               rounds={"default": Rounds(warmup=1, repeats=2, steps=1)})


def test_bench_of_every_task_writes_the_json_and_markdown_it_returns(tmp_path):
    result = run_bench(load_params(PARAMS), load_params(THESIS), device="cpu", out=tmp_path, threads=1,
                       plan=tiny_plan())
    check_result(result, tmp_path)
    assert result["regime"]["norm"] == "pre"  # timm's ViT is Pre-LN: the comparison is like for like
    assert result["skipped"] == ["compile (pose3d default, pose2d default, cxr default): skipped under --quick on "
                                 "CPU: inductor compiles a model's forward and backward for minutes on a few cores"]


def test_without_timm_the_comparison_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    for module in ("timm", "timm.models", "timm.models.vision_transformer"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    result = run_bench(load_params(PARAMS), load_params(THESIS), device="cpu", out=tmp_path, threads=1,
                       plan=tiny_plan(("cxr",)))
    check_result(result, tmp_path, with_timm=False)
    assert result["tasks"]["cxr"]["default"]["skipped"]["timm"].startswith("timm is not installed")
    assert "- timm (cxr default): timm is not installed" in (tmp_path / "cpu.md").read_text()


def test_cli_bench_prints_the_figures_and_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(flexheads.bench.run, "default_plan", lambda device, quick, tasks: tiny_plan(("cxr",)))
    result = CliRunner().invoke(app, ["bench", "--device", "cpu", "--quick", "--threads", "1", "--params",
                                      str(PARAMS), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cxr default: standard" in result.output and "vit_default_vs_timm_ratio" in result.output
    check_result(json.loads((tmp_path / "cpu.json").read_text()), tmp_path)


def test_cli_bench_on_cuda_without_cuda_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = CliRunner().invoke(app, ["bench", "--device", "cuda", "--params", str(PARAMS), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no CUDA device" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_bench_quick_on_cpu(tmp_path):
    """`flexheads bench --device cpu --quick` as documented: every task at both sizes (1.5-2 minutes on 2 idle
    cores)."""
    result = CliRunner().invoke(app, ["bench", "--device", "cpu", "--quick", "--params", str(PARAMS),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "cpu.json").read_text())
    check_result(written, tmp_path)
    assert written["plan"]["sizes"] == ["default", "thesis"] and written["environment"]["quick"]
