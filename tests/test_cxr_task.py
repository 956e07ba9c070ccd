"""The cxr train and evaluate stages on a tiny synthetic set: the ViT, its batches, its metrics files, and Grad-CAM
localisation measured against the generator's lesion masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flexheads.config import Params
from flexheads.data.cxr import LABELS
from flexheads.errors import DataError
from flexheads.localisation import lesion_pairs
from flexheads.metrics import classification
from flexheads.stages import evaluate_run, load_model, train_run
from flexheads.tasks import cxr
from conftest import tiny_heads

REPO = Path(__file__).resolve().parents[1]


def cxr_params(steps: int, regimes: list[str], n_patients: int = 40) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], regimes=regimes)
    raw["baselines"] = {}
    raw["data"]["cxr"] = {"image_size": 32, "val_fraction": 0.2,
                          "synthetic": {"n_patients": n_patients, "n_covid_images": 12, "image_size": 64}}
    raw["model"]["cxr"] = {"patch_size": 4, "d_model": 32, "n_layers": 2,
                           "d_ff": 64, "dropout": 0.0}
    raw["heads"]["cxr"] = tiny_heads(4, 16, 2)
    raw["train"]["cxr"] = {"steps": steps, "batch_size": 32, "checkpoint_every": steps, "log_every": steps,
                           "grad_snapshot_steps": [1], "eval_batch_size": 64}
    raw["tracking"]["enabled"] = False
    return Params.model_validate(raw)


def run_name(params: Params, attention: str, regime: str) -> str:
    """The cxr run of the matrix with this attention and regime (its first seed)."""
    return next(r.name for r in params.runs() if r.task == "cxr" and (r.attention, r.regime) == (attention, regime))


def prepare(root: Path, params: Params) -> tuple[Path, Path]:
    cxr.download(params.data.cxr, root / "raw")
    cxr.prepare(params.data.cxr, root / "raw", root / "cxr.h5", root / "cxr.stats.json")
    return root / "cxr.h5", root / "cxr.stats.json"


def test_train_and_evaluate_write_metrics_tables_and_maps(tmp_path):
    params = cxr_params(steps=4, regimes=["tfixup"])
    h5_path, stats_path = prepare(tmp_path, params)
    run = run_name(params, "flexible", "tfixup")
    summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    model = load_model(tmp_path / run / "model.pt", cxr.ARCHITECTURES)
    assert model.config.encoder.d_head == 16 and model.config.encoder.norm == "none" and model.config.image_size == 32
    assert model.pixel_mean.item() == pytest.approx(json.loads(stats_path.read_text())["pixel_mean"], abs=1e-6)

    out = tmp_path / "metrics" / f"{run}.json"
    metrics = evaluate_run(params, run, h5_path, stats_path, tmp_path / run, out, device="cpu")
    assert metrics["main_metric"] == "mean_auroc" and 0.0 <= metrics["mean_auroc"] <= 1.0
    assert json.loads(out.read_text()) == metrics  # strict JSON: undefined metrics are null, not NaN
    per_class = pd.read_csv(out.with_suffix("") / "per_class.csv")
    assert per_class["finding"].tolist() == list(LABELS)
    assert metrics["lesions"] > 0 and 0.0 <= metrics["pointing_game"] <= 1.0
    maps = np.load(out.with_suffix("") / "gradcam.npz")
    assert maps["maps"].shape == maps["masks"].shape == (len(maps["findings"]), 32, 32)
    assert maps["images"].shape == maps["maps"].shape and set(maps["findings"]) <= set(LABELS)
    history = pd.read_csv(tmp_path / run / "history.csv")
    assert history.dropna(subset=["val_mean_auroc"])["step"].tolist() == [4]  # eval_every 100 > steps: the last
    assert not (out.with_suffix("") / "examples.npz").exists()  # pose tasks only

    with np.load(out.with_suffix("") / "attention.npz") as attention:
        assert set(attention.files) == {"weights", "tokens", "grid", "image"}
        weights = attention["weights"]
        assert weights.dtype == np.float32 and weights.shape == (2, 4, 65, 65)  # n_layers, n_heads, CLS + 8×8
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert attention["grid"].dtype == np.int64 and attention["grid"].tolist() == [8, 8]
        tokens = attention["tokens"].tolist()
        assert tokens[:3] == ["CLS", "r0c0", "r0c1"] and tokens[9] == "r1c0" and tokens[-1] == "r7c7"
        assert attention["image"].dtype == np.uint8 and attention["image"].shape == (32, 32)
        with h5py.File(h5_path) as h5:
            np.testing.assert_array_equal(attention["image"], h5["test"]["images"][0])


@pytest.mark.slow
def test_gradcam_of_a_trained_vit_beats_a_uniform_map_on_pointing_game(tmp_path):
    """params.yaml's cxr model and training at a localising size (8×8 patches: an 8×8 token grid; 600 steps of 64
    radiographs drawn at 256 px), on 400 synthetic patients: the ViT learns the findings, and its Grad-CAM maxima
    fall on the true lesions several times as often as a uniform map's (measured on seeds 0-4: 4.4-6.6 times; a
    model too small to learn, or a hook on the wrong layer, scores at or below the uniform map)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], attention=["standard"], regimes=["radam"], seeds=[3])
    raw["baselines"] = {}
    raw["model"]["cxr"]["patch_size"] = 8
    raw["train"]["cxr"].update(steps=600, batch_size=64)
    raw["data"]["cxr"]["synthetic"].update(n_patients=400, n_covid_images=57, image_size=256, seed=3)
    raw["train"]["cxr"]["eval_every"] = 0
    raw["tracking"]["enabled"] = False
    params = Params.model_validate(raw)
    h5_path, stats_path = prepare(tmp_path, params)
    run = params.runs()[0].name
    train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    metrics = evaluate_run(params, run, h5_path, stats_path, tmp_path / run, tmp_path / "metrics.json", device="cpu")
    assert metrics["mean_auroc"] > 0.65
    assert metrics["lesions"] > 100
    assert metrics["pointing_game"] > 2.5 * metrics["pointing_game_uniform"]


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    params = cxr_params(steps=4, regimes=["radam"])
    h5_path, _ = prepare(tmp_path, params)
    config = params.run_config(params.run(run_name(params, "standard", "radam")))
    batch_at, _ = cxr.training_batches(h5_path, config)
    (a, labels_a), (b, labels_b), (c, _) = batch_at(3), batch_at(3), batch_at(4)
    assert torch.equal(a, b) and torch.equal(labels_a, labels_b) and not torch.equal(a, c)
    assert a.shape == (32, 1, 32, 32) and 0.0 <= a.min() and a.max() <= 1.0


def test_validation_scores_the_validation_split_and_never_the_test_split(tmp_path):
    """Validation is the mean AUROC evaluate reports, on up to VALIDATION_SAMPLES images evenly spaced over the val
    split (here all of it); an empty val split is a DataError, never a fall-back to the test split."""
    params = cxr_params(steps=4, regimes=["radam"])
    h5_path, _ = prepare(tmp_path, params)
    config = params.run_config(params.run(run_name(params, "standard", "radam")))
    torch.manual_seed(0)
    model, cpu = cxr.build_model(config, h5_path), torch.device("cpu")

    def mean_auroc(path: Path, split: str) -> float:
        with h5py.File(path) as h5:
            images, labels = h5[split]["images"][:], h5[split]["labels"][:]
        assert 0 < len(labels) < 512  # every row of a split below VALIDATION_SAMPLES
        scores = cxr.predict(model, images, 64, cpu)
        return classification.classification_metrics(labels, scores, np.full(len(LABELS), 0.5), LABELS)["mean_auroc"]

    assert cxr.validation(h5_path, config)(model, cpu) == pytest.approx(mean_auroc(h5_path, "val"), nan_ok=True)
    no_val = shutil.copy(h5_path, tmp_path / "no_val.h5")
    with h5py.File(no_val, "a") as h5:
        for dataset in h5["val"].values():
            dataset.resize(0, axis=0)
    with pytest.raises(DataError, match=r"no validation rows .*data\.cxr\.val_fraction"):
        cxr.validation(no_val, config)


def test_positive_weights_balance_each_finding():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(cxr.positive_weights(labels), [1 / 3, 3.0, 1.0])


def test_lesion_pairs_unpack_the_mask_bits():
    masks = np.zeros((2, 4, 4), np.uint16)
    masks[0, :2, :2] = 1 << 2  # finding 2 in image 0
    masks[1, 3, 3] = (1 << 0) | (1 << 14)  # findings 0 and 14 in image 1
    labels = np.zeros((2, 15), np.uint8)
    labels[0, 2] = labels[1, 0] = labels[1, 14] = labels[1, 5] = 1  # finding 5 has no mask: no pair
    rows, findings, lesions = lesion_pairs(labels, masks)
    assert rows.tolist() == [0, 1, 1] and findings.tolist() == [2, 0, 14]
    assert lesions[0].sum() == 4 and lesions[1][3, 3] and lesions[2].sum() == 1


def test_sample_metric_of_every_test_image_is_the_evaluated_mean_auroc(tmp_path):
    """samples: scores and labels per test image, grouped by patient; its sample_metric is evaluate's MAIN_METRIC."""
    params = cxr_params(steps=1, regimes=["tfixup"])
    h5_path, stats_path = prepare(tmp_path, params)
    torch.manual_seed(0)
    model = cxr.build_model(params.run_config(params.run(run_name(params, "standard", "tfixup"))), h5_path)
    headline, tables = cxr.evaluate(model, h5_path, json.loads(stats_path.read_text()), 64, torch.device("cpu"))
    samples = tables["samples"]
    with h5py.File(h5_path) as h5:
        labels, patients = h5["test"]["labels"][:], h5["test"]["patient_id"][:]
        sources = h5["test"]["source"][:]
    np.testing.assert_array_equal(samples["labels"], labels)
    assert samples["scores"].shape == labels.shape and samples["group"].dtype == np.int64
    patient_of = {}  # one group per (source, patient), and no two patients share one
    for group, key in zip(samples["group"], zip(sources, patients)):
        assert patient_of.setdefault(group, key) == key
    assert len(patient_of) == len(set(zip(sources, patients))) < len(labels)
    assert cxr.sample_metric(samples) == pytest.approx(headline[cxr.MAIN_METRIC], abs=5e-5)
