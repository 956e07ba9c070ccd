"""The cxr train and evaluate stages on a tiny synthetic set: the ViT, its batches, its metrics files, and Grad-CAM
localisation measured against the generator's lesion masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flexheads.config import Params
from flexheads.data.cxr import LABELS
from flexheads.stages import evaluate_run, load_model, train_run
from flexheads.tasks import cxr

REPO = Path(__file__).resolve().parents[1]


def cxr_params(steps: int, regimes: list[str], n_patients: int = 40) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], regimes=regimes)
    raw["baselines"] = {}
    raw["data"]["cxr"] = {"image_size": 32, "val_fraction": 0.2,
                          "synthetic": {"n_patients": n_patients, "n_covid_images": 12, "image_size": 64}}
    raw["model"]["cxr"] = {"patch_size": 4, "d_model": 32, "n_heads": 4, "d_head_flexible": 16, "n_layers": 2,
                           "d_ff": 64, "dropout": 0.0}
    raw["train"]["cxr"] = {"steps": steps, "batch_size": 32, "checkpoint_every": steps, "log_every": steps,
                           "grad_snapshot_steps": [1], "eval_batch_size": 64}
    raw["tracking"]["enabled"] = False
    return Params.model_validate(raw)


def prepare(root: Path, params: Params) -> tuple[Path, Path]:
    cxr.download(params.data.cxr, root / "raw")
    cxr.prepare(params.data.cxr, root / "raw", root / "cxr.h5", root / "cxr.stats.json")
    return root / "cxr.h5", root / "cxr.stats.json"


def test_train_and_evaluate_write_metrics_tables_and_maps(tmp_path):
    params = cxr_params(steps=4, regimes=["tfixup"])
    h5_path, stats_path = prepare(tmp_path, params)
    run = "cxr-flexible-tfixup"
    summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    model = load_model(tmp_path / run / "model.pt", cxr.ARCHITECTURES)
    assert model.config.d_head == 16 and model.config.norm == "none" and model.config.image_size == 32
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


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    params = cxr_params(steps=4, regimes=["radam"])
    h5_path, _ = prepare(tmp_path, params)
    config = params.run_config(params.run("cxr-standard-radam"))
    batch_at, _ = cxr.training_batches(h5_path, config)
    (a, labels_a), (b, labels_b), (c, _) = batch_at(3), batch_at(3), batch_at(4)
    assert torch.equal(a, b) and torch.equal(labels_a, labels_b) and not torch.equal(a, c)
    assert a.shape == (32, 1, 32, 32) and 0.0 <= a.min() and a.max() <= 1.0


def test_positive_weights_balance_each_finding():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(cxr.positive_weights(labels), [1 / 3, 3.0, 1.0])


def test_lesion_pairs_unpack_the_mask_bits():
    masks = np.zeros((2, 4, 4), np.uint16)
    masks[0, :2, :2] = 1 << 2  # finding 2 in image 0
    masks[1, 3, 3] = (1 << 0) | (1 << 14)  # findings 0 and 14 in image 1
    labels = np.zeros((2, 15), np.uint8)
    labels[0, 2] = labels[1, 0] = labels[1, 14] = labels[1, 5] = 1  # finding 5 has no mask: no pair
    rows, findings, lesions = cxr.lesion_pairs(labels, masks)
    assert rows.tolist() == [0, 1, 1] and findings.tolist() == [2, 0, 14]
    assert lesions[0].sum() == 4 and lesions[1][3, 3] and lesions[2].sum() == 1
