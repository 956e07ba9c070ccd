"""Report figures: every figure of a small matrix is written as PNG and PDF from fake stage outputs, a missing
input stops the report naming every missing file, the style does not leak, and the thesis figures draw exactly
the library's functions."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from flexheads.config import Params, Run  # noqa: E402
from flexheads.data.coco import KEYPOINT_NAMES, SKELETON  # noqa: E402
from flexheads.data.h36m import JOINT_NAMES, PARENTS  # noqa: E402
from flexheads.nn.positional import sinusoidal_encoding  # noqa: E402
from flexheads.optim.optimizers import radam_rectification  # noqa: E402
from flexheads.optim.schedules import noam, untuned_exponential_warmup, untuned_linear_warmup  # noqa: E402
from flexheads.report import thesis_figures  # noqa: E402
from flexheads.report.attention_figures import attention_runs  # noqa: E402
from flexheads.report.inputs import MissingInputs, best_run, read_grad_histograms  # noqa: E402
from flexheads.report.figures import figure_plan, write_dvc_plots, write_figures  # noqa: E402
from flexheads.report.pose_figures import camera_to_upright  # noqa: E402
from flexheads.report.training_figures import curves_figure, grad_histograms_figure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN_METRIC = {"pose3d": "mpjpe", "pose2d": "AP", "cxr": "mean_auroc"}
# a standing person in H36M's camera frame (mm, root-relative; x right, y down, z away from the camera)
STANDING = np.array([
    [0, 0, 0], [-130, 0, 0], [-130, 450, 0], [-130, 880, 50], [130, 0, 0], [130, 450, 0], [130, 880, 50],
    [0, -230, 0], [0, -480, 0], [0, -580, -60], [0, -680, 0], [170, -450, 0], [200, -200, 0], [220, 30, -50],
    [-170, -450, 0], [-200, -200, 0], [-220, 30, -50],
], dtype=np.float32)  # fmt: skip
# the same person's 17 COCO keypoints in a 48×64 crop (x, y pixels)
COCO_CROP = np.array([
    [24, 8], [25, 7], [23, 7], [27, 8], [21, 8], [30, 16], [18, 16], [32, 25], [16, 25], [33, 33], [15, 33],
    [28, 34], [20, 34], [29, 46], [19, 46], [29, 58], [19, 58],
], dtype=np.float32)  # fmt: skip


def small_params(regimes: tuple[str, ...] = ("noam", "radam"), tasks: tuple[str, ...] = ("pose3d", "pose2d", "cxr"),
                 eval_every: int = 5) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=list(tasks), regimes=list(regimes))
    raw["tracking"]["enabled"] = False
    for task in ("pose3d", "pose2d", "cxr"):
        raw["train"][task]["eval_every"] = eval_every
    return Params.model_validate(raw)


def _picture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth uint8 test image (something to see skeletons and heat maps over)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 120 + 50 * np.sin(xx / 6 + rng.uniform(0, 6)) * np.cos(yy / 9) + rng.normal(0, 8, shape[:2])
    base = np.clip(base, 0, 255).astype(np.uint8)
    return np.repeat(base[..., None], shape[2], axis=-1) if len(shape) == 3 else base


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def write_run_outputs(root: Path, params: Params, run: Run, rng: np.random.Generator, *, steps: int = 20,
                      examples: int = 2, image_side: int = 16, gradcam: bool = True) -> None:
    """Every file the train and evaluate stages write for ``run`` that the figures read, in their formats."""
    models, metrics = root / "models" / run.name, root / "metrics" / run.name
    models.mkdir(parents=True)
    metrics.mkdir(parents=True)
    task, metric = run.task, MAIN_METRIC[run.task]
    eval_every = getattr(params.train, task).eval_every
    step = np.arange(1, steps + 1)
    loss = ((1.0 + rng.uniform()) * np.exp(-step / (steps / 3)) + 0.1) * np.exp(rng.normal(0, 0.15, steps))
    history = pd.DataFrame({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0})
    if eval_every:
        start = 200.0 if task == "pose3d" else 0.1
        end = 40.0 if task == "pose3d" else 0.8
        value = start + (end - start) * (1 - np.exp(-step / (steps / 4))) + rng.normal(0, 0.01 * abs(end), steps)
        history[f"val_{metric}"] = np.where(step % eval_every == 0, value, np.nan)
    history.to_csv(models / "history.csv", index=False)
    edges = np.linspace(-12.0, 2.0, 71)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = {str(s): np.round(1e5 * np.exp(-((centres + 4 + np.log10(s)) ** 2) / 2)).astype(int).tolist()
              for s in getattr(params.train, task).grad_snapshot_steps}
    (models / "grad_histograms.json").write_text(json.dumps({"bin_edges_log10": edges.tolist(), "counts": counts}))

    score = {"pose3d": rng.uniform(40, 80), "pose2d": rng.uniform(0.3, 0.7), "cxr": rng.uniform(0.6, 0.8)}[task]
    (root / "metrics" / f"{run.name}.json").write_text(json.dumps({"run": run.name, metric: score}))

    model = getattr(params.model, task)
    if task == "pose3d":
        tokens, grid, image = np.array(JOINT_NAMES), np.array([0, 0]), STANDING[:, :2] / 2 + 500  # camera pixels
    elif task == "pose2d":
        rows, cols = 8, 6
        tokens, grid = np.array([f"p{i}" for i in range(rows * cols)]), np.array([rows, cols])
        image = _picture(rng, (64, 48, 3))
    else:
        side = image_side // model.patch_size
        tokens = np.array(["CLS"] + [f"p{i}" for i in range(side * side)])
        grid, image = np.array([side, side]), _picture(rng, (image_side, image_side))
    n = len(tokens)
    n_heads = params.heads[task]["standard"].n_heads
    weights = _softmax(3 * rng.normal(size=(model.n_layers, n_heads, n, n))).astype(np.float32)
    np.savez_compressed(metrics / "attention.npz", weights=weights, tokens=tokens, grid=grid, image=image)

    if task == "pose3d":
        target = STANDING[None] + rng.normal(0, 30, size=(examples, 17, 3)).astype(np.float32)
        np.savez_compressed(metrics / "examples.npz", pred=target + rng.normal(0, 40, target.shape).astype(np.float32),
                            target=target, joint_names=np.array(JOINT_NAMES), parents=np.array(PARENTS),
                            actions=np.array(["Walking", "Sitting", "Eating", "Phoning"] * examples)[:examples])
        pd.DataFrame({"joint": JOINT_NAMES, "mpjpe": rng.uniform(10, 120, 17)}).to_csv(metrics / "per_joint.csv",
                                                                                         index=False)
    if task == "pose2d":
        target = COCO_CROP[None] + rng.normal(0, 1.5, size=(examples, 17, 2)).astype(np.float32)
        visible = rng.uniform(size=(examples, 17)) > 0.15
        np.savez_compressed(metrics / "examples.npz", images=np.stack([_picture(rng, (64, 48, 3)) for _ in target]),
                            pred=target + rng.normal(0, 2, target.shape).astype(np.float32), target=target,
                            visible=visible, joint_names=np.array(KEYPOINT_NAMES), skeleton=np.array(SKELETON) - 1)
        pckh = rng.uniform(0.3, 1.0, 17)
        pckh[3] = np.nan  # a keypoint never labelled in the val set
        pd.DataFrame({"keypoint": KEYPOINT_NAMES, "pck20": pckh, "pckh50": pckh, "pdj20": pckh,
                      "labelled": 10}).to_csv(metrics / "per_joint.csv", index=False)
    if task == "cxr" and gradcam:
        yy, xx = np.mgrid[:image_side, :image_side]
        masks = np.stack([(yy - c) ** 2 + (xx - c) ** 2 < (image_side / 5) ** 2 for c in range(3, 3 + examples)])
        np.savez_compressed(metrics / "gradcam.npz", images=np.stack([_picture(rng, masks.shape[1:]) for _ in masks]),
                            maps=rng.uniform(size=masks.shape).astype(np.float32), masks=masks,
                            findings=np.array(["Nodule", "Mass", "Pneumonia", "COVID-19"] * examples)[:examples])


def write_outputs(root: Path, params: Params, **sizes) -> None:
    rng = np.random.default_rng(0)
    for run in params.all_runs():
        write_run_outputs(root, params, run, rng, **sizes)


def test_every_figure_is_written_as_png_and_pdf(tmp_path: Path) -> None:
    params = small_params()
    write_outputs(tmp_path, params)
    before = dict(plt.rcParams)
    written = write_figures(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    names = [spec.name for spec in figure_plan(params, tmp_path / "metrics", tmp_path / "models")]
    expected = {tmp_path / "reports" / "figures" / f"{name}.{ext}" for name in names for ext in ("png", "pdf")}
    assert set(written) == expected
    assert all(path.stat().st_size > 1000 for path in written)
    assert {"positional_encoding", "noam_schedule", "warmup_comparison", "pose3d_curves", "pose2d_grad_histograms",
            "cxr_attention", "cxr_attention_cls", "pose3d_skeletons", "pose2d_skeletons", "pose3d_per_joint",
            "pose2d_per_joint", "cxr_gradcam"} <= set(names)
    assert dict(plt.rcParams) == before  # the report's theme does not leak into the caller
    assert plt.get_fignums() == []  # every figure closed

    plots = write_dvc_plots(params, tmp_path / "reports/figures", tmp_path / "reports/plots")  # dvc plots show
    assert sorted(p.name for p in (tmp_path / "reports/plots").iterdir()) == sorted(p.name for p in plots) == sorted(
        f"{task}_curves.png" for task in params.experiment.tasks)
    assert all(p.read_bytes() == (tmp_path / "reports/figures" / p.name).read_bytes() for p in plots)


def test_only_the_tasks_of_the_matrix_are_drawn(tmp_path: Path) -> None:
    names = [spec.name for spec in figure_plan(small_params(tasks=("cxr",)), tmp_path, tmp_path)]
    assert not [n for n in names if n.startswith("pose")]
    assert "cxr_curves" in names


def test_missing_inputs_are_all_named(tmp_path: Path) -> None:
    params = small_params()
    write_outputs(tmp_path, params)
    pose2d_run = [r for r in params.runs() if r.task == "pose2d"][-1]
    cxr_run = next(r for r in params.runs() if (r.task, r.attention, r.regime) == ("cxr", "standard", "noam"))
    (tmp_path / "models" / pose2d_run.name / "history.csv").unlink()
    (tmp_path / "metrics" / cxr_run.name / "attention.npz").unlink()
    with pytest.raises(MissingInputs) as error:
        write_figures(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    assert not (tmp_path / "reports" / "figures").exists()  # checked before anything is drawn
    message = str(error.value)
    assert f"models/{pose2d_run.name}/history.csv  (for pose2d_curves)" in message
    # the regime drawn is the matrix's first (no preln here), so both attention figures need the file
    assert f"metrics/{cxr_run.name}/attention.npz  (for cxr_attention, cxr_attention_cls)" in message


def test_a_missing_baseline_file_is_named(tmp_path: Path) -> None:
    params = small_params(tasks=("pose3d",))
    write_outputs(tmp_path, params)
    (baseline,) = params.baseline_runs()
    (tmp_path / "metrics" / baseline.name / "per_joint.csv").unlink()
    with pytest.raises(MissingInputs, match=f"{baseline.name}/per_joint.csv"):
        write_figures(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")


def test_gradcam_figure_is_absent_without_lesion_maps(tmp_path: Path) -> None:
    params = small_params(tasks=("cxr",))
    write_outputs(tmp_path, params, gradcam=False)
    (spec,) = [s for s in figure_plan(params, tmp_path / "metrics", tmp_path / "models") if s.name == "cxr_gradcam"]
    assert spec.missing() == [] and spec.draw() is None  # real radiographs: no lesion masks, no maps, no figure
    some = params.runs()[0]
    (tmp_path / "metrics" / some.name / "gradcam.npz").write_bytes(b"")
    assert len(spec.missing()) == len(params.runs()) - 1  # but maps of only some runs are an error


def test_curves_without_validation_have_only_the_loss_panel(tmp_path: Path) -> None:
    params = small_params(tasks=("cxr",), eval_every=0)
    write_outputs(tmp_path, params)
    figure = curves_figure(params, "cxr", tmp_path / "models")
    assert len(figure.axes) == 1 and figure.axes[0].get_yscale() == "log"
    assert len(figure.axes[0].lines) == len([r for r in params.all_runs() if r.task == "cxr"])
    plt.close(figure)


def test_positional_encoding_draws_the_library_table() -> None:
    figure = thesis_figures.positional_encoding_figure()
    (image,) = figure.axes[0].get_images()
    np.testing.assert_array_equal(image.get_array(), sinusoidal_encoding(2000, 500).numpy())
    plt.close(figure)


def test_noam_figure_peaks_at_warmup() -> None:
    t, curves = thesis_figures.noam_curves(steps=10_000)
    rate = curves[(512, 4000)]
    assert t[np.argmax(rate)] == 4000
    assert rate.max() == pytest.approx((512 * 4000) ** -0.5, rel=1e-12)
    assert rate[7] == noam(8, 512, 4000)

    figure = thesis_figures.noam_schedule_figure()
    x, y = figure.axes[0].lines[0].get_data()
    assert y[x == 4000][0] == pytest.approx((512 * 4000) ** -0.5, rel=1e-12)
    assert "512" in figure.axes[0].lines[0].get_label() and "4000" in figure.axes[0].lines[0].get_label()
    plt.close(figure)


def test_warmup_comparison_draws_radam_rectification_and_untuned_warmups() -> None:
    figure = thesis_figures.warmup_comparison_figure()
    radam, linear, exponential = (line.get_data() for line in figure.axes[0].lines[:3])
    t, r = radam
    assert np.isnan(r[t <= 4]).all()  # rho_t <= 4: undefined, not drawn
    assert r[t == 5][0] == pytest.approx(radam_rectification(5, 0.999), rel=1e-12)
    assert r[-1] == pytest.approx(1.0, abs=1e-3) and t[-1] == 18_000
    assert np.all(np.diff(r[t > 4]) >= 0)
    assert linear[1][999] == untuned_linear_warmup(1000, 0.999) == pytest.approx(0.5)
    assert exponential[1][999] == untuned_exponential_warmup(1000, 0.999)
    assert "t ≤ 4" in figure.axes[0].lines[0].get_label()
    plt.close(figure)


def test_skeletons_are_drawn_upright() -> None:
    upright = camera_to_upright(STANDING)
    head, feet = upright[JOINT_NAMES.index("Head")], upright[[JOINT_NAMES.index("RFoot"), JOINT_NAMES.index("LFoot")]]
    assert (head[2] > feet[:, 2] + 1000).all()  # the camera's y points down; the figure's third axis up
    np.testing.assert_array_equal(upright[:, 0], STANDING[:, 0])


@pytest.mark.parametrize(("task", "best_score"), [("pose3d", 10.0), ("pose2d", 0.9)])
def test_the_best_run_follows_the_main_metric(tmp_path: Path, task: str, best_score: float) -> None:
    params = small_params(tasks=(task,))
    runs = [r for r in params.all_runs() if r.task == task]
    scores = {"pose3d": [50.0, 10.0, 30.0, None, 20.0], "pose2d": [0.5, 0.9, 0.7, None]}[task]
    (tmp_path / "metrics").mkdir()
    worse = {"pose3d": 40.0, "pose2d": 0.1}[task]  # every other run's score
    for run, score in zip(runs, scores + [worse] * len(runs)):
        (tmp_path / "metrics" / f"{run.name}.json").write_text(json.dumps({"run": run.name, MAIN_METRIC[task]: score}))
    assert best_run(params, task, tmp_path / "metrics", "test") == (runs[1], best_score)


def test_attention_shows_preln_when_the_matrix_has_it() -> None:
    assert attention_runs(small_params(regimes=("noam", "preln")), "cxr")[0] == "preln"
    regime, runs = attention_runs(small_params(regimes=("radam", "noam")), "cxr")
    assert regime == "radam" and [r.attention for r in runs] == ["standard", "flexible_matched", "flexible"]


def test_seeds_give_one_histogram_panel_per_attention_and_regime_and_one_curve_per_run(tmp_path: Path) -> None:
    raw = small_params(tasks=("cxr",)).model_dump(mode="json")
    raw["experiment"]["seeds"] = [0, 1]
    params = Params.model_validate(raw)
    write_outputs(tmp_path, params)
    figure = grad_histograms_figure(params, "cxr", tmp_path / "models")
    attentions, regimes = params.experiment.attention, params.experiment.regimes
    assert len(attentions) == 3 and len(figure.axes) == len(attentions) * len(regimes)
    assert [ax.get_title() for ax in figure.axes[: len(regimes)]] == list(regimes)  # row 1: one panel per regime
    assert [ax.get_ylabel().split("\n")[0] for ax in figure.axes[:: len(regimes)]] == list(attentions)
    steps = len(params.train.cxr.grad_snapshot_steps)
    assert all(len(ax.patches) == steps for ax in figure.axes)  # every panel drawn: one curve per snapshot step
    assert all(ax.texts[0].get_text() == "seed 0" for ax in figure.axes)  # first seeds only, and said so
    plt.close(figure)
    figure = curves_figure(params, "cxr", tmp_path / "models")
    assert len(figure.axes[0].lines) == len(params.runs()) == len(attentions) * len(regimes) * 2
    plt.close(figure)


def test_gradient_histograms_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "grad_histograms.json"
    path.write_text(json.dumps({"bin_edges_log10": [0, 1, 2, 3], "counts": {"10": [1, 3, 0], "2": [0, 0, 0]}}))
    edges, fractions = read_grad_histograms(path)
    assert list(fractions) == [2, 10]  # numeric step order, not string order
    np.testing.assert_allclose(fractions[10], [0.25, 0.75, 0.0])
    np.testing.assert_array_equal(fractions[2], [0, 0, 0])  # an all-zero snapshot stays zero, no NaN
