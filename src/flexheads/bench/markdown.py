"""The bench's Markdown report: the JSON of :func:`flexheads.bench.run.run_bench` as four tables (throughput,
ViT vs timm, data stall, torch.compile) under one header line naming the machine and the software."""

from __future__ import annotations

from typing import Any


def _number(x: float) -> str:
    """Three significant figures, thousands written out (``12,345``, ``87.6``, ``0.0123``)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _speed(entry: dict[str, Any]) -> str:
    return f"{_number(entry['samples_per_s'])} ({entry['n_heads']}×{entry['d_head']})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _groups(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(task, size, group) for task, sizes in result["tasks"].items() for size, group in sizes.items()]


def markdown(result: dict[str, Any]) -> str:
    """The report of ``result`` (the bench's JSON dict)."""
    env, regime = result["environment"], result["regime"]
    rounds = "; ".join(f"{size}: {r['warmup']} warm-up + {r['repeats']} repeats × {r['steps']} "
                       f"step{'s' if r['steps'] > 1 else ''}" for size, r in result["plan"]["rounds"].items())
    lines = [
        f"# flexheads bench: {env['device']}",
        "",
        (f"{env['device_name']} · {env['threads']} threads · torch {env['torch']} · "
         f"timm {env['timm'] or 'absent'} · {'--quick' if env['quick'] else 'full'} · "
         f"regime {regime['name']} (norm {regime['norm']}, {regime['optimizer']}) · {result['wall_time_s']:.0f} s"),
        "",
        (f"Medians over interleaved rounds ({rounds}). samples/s = batch size / median seconds of a training step "
         "(forward + backward + optimiser step). (h×d): heads × head width. Load average (1 min) "
         f"{env['load_average_start'][0]:.2f} at the start, {env['load_average_end'][0]:.2f} at the end: other "
         "processes on the cores slow the timings and scatter the repeats."),
        "",
    ]
    if result["skipped"]:
        lines += ["Not measured:", "", *(f"- {line}" for line in result["skipped"]), ""]

    rows = []
    for task, size, group in _groups(result):
        t, m = group["throughput"], group["model"]
        equal = t.get("flexible_equal_flops")
        rows.append([task, size, f"{group['label']}: d {m['d_model']}, {m['n_layers']} layers, {m['tokens']} tokens",
                     str(group["batch_size"]), _speed(t["standard"]), _speed(t["flexible"]),
                     f"{group['flexible_vs_standard_ratio']:.2f}", _speed(equal) if equal else "–",
                     f"{group['flexible_equal_flops_vs_standard_ratio']:.2f}" if equal else "–"])
    lines += ["## Training throughput (samples/s)", ""]
    lines += _table(["task", "size", "model", "batch", "standard", "flexible", "flexible ÷ standard",
                     "flexible, equal attention FLOPs", "÷ standard"], rows)

    rows = [[size, group["label"], str(group["batch_size"]), _number(group["throughput"]["standard"]["samples_per_s"]),
             _number(group["throughput"]["timm"]["samples_per_s"]), f"{ratio:.2f}"]
            for task, size, group in _groups(result)
            for key, ratio in group.items() if "timm" in key and "ratio" in key]
    lines += ["## Project ViT vs timm VisionTransformer (identical dims, same optimiser and loss; img/s)", ""]
    lines += _table(["size", "model", "batch", "project", "timm", "project ÷ timm"], rows) if rows else \
        ["Not measured (see above).", ""]

    rows = [[task, size, str(group["batch_size"]), _number(group["data"]["data_s"]["median_s"]),
             _number(group["data"]["step_s_median"]), f"{group['data']['data_stall_fraction']:.3f}",
             group["data"]["loader"]] for task, size, group in _groups(result)]
    lines += ["## Data stall: t_data / (t_data + t_step), the real input pipeline", ""]
    lines += _table(["task", "size", "batch", "t_data s/batch", "t_step s", "stall fraction", "loader"], rows)

    rows = [[task, size, _number(group["throughput"]["standard"]["samples_per_s"]),
             _number(group["compile"]["samples_per_s"]), f"{group['compile']['compiled_vs_eager_ratio']:.2f}",
             _number(group["compile"]["first_step_s"])]
            for task, size, group in _groups(result) if "compile" in group]
    lines += ["## torch.compile vs eager (standard heads; samples/s)", ""]
    lines += _table(["task", "size", "eager", "compiled", "compiled ÷ eager", "first step s (compiles)"], rows) \
        if rows else ["Not measured (see above).", ""]
    return "\n".join(lines)
