"""The pose2d stage workers on a tiny synthetic COCO: download → prepare → train → evaluate, and the coordinate
chain image → crop → model → image that every pose2d number rests on."""

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
from PIL import Image

from flexheads.config import Params
from flexheads.data import crops
from flexheads.data.coco import KEYPOINT_NAMES, SKELETON, CocoFormatError
from flexheads.metrics.pose2d import coco_keypoint_ap, write_coco_results
from flexheads.models.pose2d import KeypointTransformer, Pose2DConfig, heatmap_targets
from flexheads.nn import EncoderConfig
from flexheads.stages import evaluate_run, load_model, train_run
from flexheads.tasks import pose2d
from conftest import tiny_heads

REPO = Path(__file__).resolve().parents[1]
CROP = (64, 48)  # H, W


def tiny_params() -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["pose2d"], regimes=["preln", "tfixup"])
    raw["baselines"] = {}
    raw["data"]["pose2d"] = {"source": "synthetic", "crop_size": list(CROP), "val_fraction": 0.4,  # 4 val images
                             "synthetic": {"n_train_images": 12, "n_val_images": 6, "image_size": [160, 120]}}
    raw["model"]["pose2d"] = {"backbone": "resnet18", "backbone_stride": 8, "d_model": 32,
                              "n_layers": 1, "d_ff": 64, "dropout": 0.0}
    raw["heads"]["pose2d"] = tiny_heads(4, 16, 2)
    raw["train"]["pose2d"] = {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 2,
                              "grad_snapshot_steps": [1, 2], "eval_batch_size": 16}
    raw["tracking"]["enabled"] = False
    return Params.model_validate(raw)


def run_name(params: Params, attention: str, regime: str) -> str:
    """The pose2d run of the matrix with this attention and regime (its first seed)."""
    return next(r.name for r in params.runs() if r.task == "pose2d" and (r.attention, r.regime) == (attention, regime))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Params, Path, Path, Path]:
    root = tmp_path_factory.mktemp("pose2d")
    params = tiny_params()
    pose2d.download(params.data.pose2d, root / "raw")
    pose2d.prepare(params.data.pose2d, root / "raw", root / "pose2d.h5", root / "pose2d.stats.json")
    return params, root / "raw", root / "pose2d.h5", root / "pose2d.stats.json"


def test_prepare_writes_crops_and_labels_per_person(prepared):
    _, raw, h5_path, stats_path = prepared
    stats = json.loads(stats_path.read_text())
    annotations = {split: json.loads((raw / "annotations" / f"person_keypoints_{split}.json").read_text())
                   for split in pose2d.COCO_SPLITS}
    rows = {}
    with h5py.File(h5_path) as h5:
        for split in pose2d.SPLITS:
            g = h5[split]
            n = rows[split] = len(g["image_id"])
            shapes = {"images": (n, *CROP, 3), "keypoints": (n, 17, 2), "visible": (n, 17),
                      "keypoints_image": (n, 17, 3), "affine": (n, 2, 3), "image_id": (n,), "bbox": (n, 4),
                      "area": (n,)}  # fmt: skip
            assert {name: g[name].shape for name in shapes} == shapes
            assert g["images"].dtype == np.uint8 and g["visible"].dtype == bool
            assert g["images"][:].std() > 10  # crops of people, not black
            np.testing.assert_array_equal(g["visible"][:], g["keypoints_image"][..., 2] > 0)
            assert stats["splits"][split]["rows"] == n > 0
            assert set(stats["splits"][split]["labelled_fraction"]) == set(KEYPOINT_NAMES)
        gt = json.loads(h5["test"]["coco_gt_json"][:].tobytes())
    assert rows["train"] + rows["val"] == len(annotations["train2017"]["annotations"])  # every person, once
    assert rows["test"] == len(annotations["val2017"]["annotations"])
    assert gt == annotations["val2017"]


def test_crop_keypoints_map_back_to_image_pixels(prepared):
    """Stored crop keypoints through the stored crop → image affine give the annotation back, sub-pixel."""
    _, _, h5_path, _ = prepared
    with h5py.File(h5_path) as h5:
        g = h5["train"]
        back = crops.apply_affine(g["affine"][:].astype(np.float64), g["keypoints"][:].astype(np.float64))
        visible, keypoints = g["visible"][:], g["keypoints"][:]
        error = np.abs(back - g["keypoints_image"][..., :2])[visible]
    assert error.max() < 1e-3
    inside = (keypoints >= 0).all(-1) & (keypoints < CROP[::-1]).all(-1)
    assert inside[visible].all()  # the synthetic box holds every labelled keypoint, the padded crop too


def test_crop_pixels_show_the_image_where_the_affine_points():
    """On a ramp image (red = column, green = row) crop pixel (c, r) holds the image at affine @ (c + .5, r + .5)."""
    width, height = 250, 200
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    image = Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], -1).astype(np.uint8))
    r, c = np.meshgrid(np.arange(CROP[0]) + 0.5, np.arange(CROP[1]) + 0.5, indexing="ij")
    for bbox in ([30.3, 40.7, 60.2, 90.1], [10.5, 10.5, 6.0, 9.0], [60.0, 10.0, 140.0, 100.0]):  # shrink, zoom, wide
        affine = crops.crop_affine(np.array(bbox), CROP)
        crop = crops.crop_image(image, affine, CROP).astype(float)
        x, y = np.moveaxis(crops.apply_affine(affine, np.stack([c, r], -1).reshape(-1, 2)).reshape(*CROP, 2), -1, 0)
        reach = affine[0, 0] + 1  # the antialiasing filter's reach in image pixels
        inside = (x > reach) & (x < width - reach) & (y > reach) & (y < height - reach)
        outside = (x < -reach) | (x > width + reach) | (y < -reach) | (y > height + reach)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(crop[inside][:, :2], np.stack([x, y], -1)[inside] - 0.5, atol=0.51)  # uint8
        assert not crop[outside].any()  # black beyond the image


def test_augmentation_moves_keypoints_with_the_pixels():
    rng = np.random.default_rng(0)
    images = np.zeros((16, *CROP, 3), np.uint8)
    keypoints, visible = np.zeros((16, 17, 2)), np.zeros((16, 17), bool)
    for b, (x, y) in enumerate(rng.integers(12, 36, (16, 2))):
        images[b, y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3×3 dot centred on the left wrist
        keypoints[b, 9], visible[b, 9] = (x + 0.5, y + 0.5), True
    warped, moved, moved_visible = crops.augment(rng, images, keypoints, visible)
    rows, cols = np.mgrid[: CROP[0], : CROP[1]] + 0.5
    for b, weight in enumerate(warped[:, 0].numpy()):
        (joint,) = np.flatnonzero(moved_visible[b])  # 9, or 10 (right wrist) when mirrored
        centroid = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        np.testing.assert_allclose(moved[b, joint], centroid, atol=0.1)
    assert 0 < (moved_visible[:, 10]).sum() < 16  # some mirrored, some not


def model_config(encoder: EncoderConfig) -> Pose2DConfig:
    return Pose2DConfig(n_keypoints=17, input_size=CROP, backbone="resnet18", backbone_stride=8, pretrained=False,
                        trunk_width=64, flip_test=True, encoder=encoder)


@pytest.mark.parametrize("norm, init, d_head", [("post", "xavier", None), ("pre", "xavier", 16),
                                                ("none", "tfixup", 16)])
def test_model_outputs_and_gradients(norm, init, d_head):
    torch.manual_seed(0)
    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=d_head, n_layers=2, d_ff=64, dropout=0.1,
                            activation="gelu", norm=norm, init=init)
    model = KeypointTransformer(model_config(encoder))
    coords, weights = model(torch.rand(2, 3, *CROP), need_weights=True)
    assert coords.shape == (2, 17, 2) and ((coords > 0) & (coords < 1)).all()
    assert [w.shape for w in weights] == [(2, 4, 48, 48)] * 2  # 8×6 tokens at stride 8
    prediction = model.predict(torch.rand(2, 3, *CROP))
    assert prediction.heatmaps.shape == (2, 17, 48)
    assert ((prediction.confidence > 0) & (prediction.confidence <= 1)).all()
    pose2d.keypoint_loss(prediction, torch.rand(2, 17, 2), torch.ones(2, 17, dtype=torch.bool),
                         heatmap_targets(torch.rand(2, 17, 2), model.config, model.cell_centres)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_saved_config_without_trunk_width_loads_torchvisions_width():
    """model.pt files written before ``model.pose2d.trunk_width`` existed rebuild with width 64."""
    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=None, n_layers=1, d_ff=64, dropout=0.0,
                            activation="gelu", norm="post", init="xavier")
    saved = model_config(encoder).to_dict()
    del saved["trunk_width"]
    model = pose2d.ARCHITECTURES["KeypointTransformer"](saved)
    assert model.config.trunk_width == 64 and model.embed.in_channels == 128


def test_narrow_trunk_shrinks_the_embedding_input():
    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=None, n_layers=1, d_ff=64, dropout=0.0,
                            activation="gelu", norm="post", init="xavier")
    config = Pose2DConfig(**{**model_config(encoder).__dict__, "trunk_width": 16})
    model = KeypointTransformer(config)
    assert model.embed.in_channels == 32  # layer2: 2 × 16
    assert model(torch.rand(2, 3, *CROP))[0].shape == (2, 17, 2)


def test_integral_readout_recovers_a_keypoint_between_cells():
    """A heatmap that is the Gaussian target of a point reads back that point: the read-out is sub-cell."""
    config = model_config(EncoderConfig(d_model=128, n_heads=8, d_head=None, n_layers=3, d_ff=256, dropout=0.1,
                                        activation="gelu", norm="post", init="xavier"))
    model = KeypointTransformer(config)
    point = torch.tensor([[[0.37, 0.61]]])  # between cell centres of the 6×8 grid
    logits = heatmap_targets(point, config, model.cell_centres, sigma=0.6).log()
    np.testing.assert_allclose((logits.softmax(-1) @ model.cell_centres).numpy(), point.numpy(), atol=2e-3)


def test_train_and_evaluate_write_metrics(prepared, tmp_path):
    params, _, h5_path, stats_path = prepared
    run = run_name(params, "flexible", "tfixup")
    summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    model = load_model(tmp_path / run / "model.pt", pose2d.ARCHITECTURES)
    assert model.config.encoder.d_head == 16 and model.config.encoder.norm == "none" and model.config.flip_test
    metrics = evaluate_run(params, run, h5_path, stats_path, tmp_path / run, tmp_path / "metrics" / f"{run}.json",
                           device="cpu")
    assert metrics["main_metric"] == "AP" and 0.0 <= metrics["AP"] <= 1.0
    assert 0.0 <= metrics["mean_pose_ap"] <= 1.0 and 0.0 <= metrics["pckh50"] <= 1.0
    per_joint = (tmp_path / "metrics" / run / "per_joint.csv").read_text().splitlines()
    assert len(per_joint) == 1 + 17
    assert (tmp_path / "metrics" / run / "per_limb.csv").exists()
    history = pd.read_csv(tmp_path / run / "history.csv")
    assert history.dropna(subset=["val_AP"])["step"].tolist() == [4]  # eval_every 100 > steps: the last step only

    with h5py.File(h5_path) as h5:  # evaluate's examples and attention come from the test group
        val = {name: h5["test"][name][:] for name in ("images", "keypoints", "visible")}
    with np.load(tmp_path / "metrics" / run / "attention.npz") as attention:
        assert set(attention.files) == {"weights", "tokens", "grid", "image"}
        weights = attention["weights"]
        assert weights.dtype == np.float32 and weights.shape == (1, 4, 48, 48)  # n_layers, n_heads, 8×6 tokens
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert attention["grid"].dtype == np.int64 and attention["grid"].tolist() == [8, 6]
        tokens = attention["tokens"].tolist()
        assert tokens[:7] == ["r0c0", "r0c1", "r0c2", "r0c3", "r0c4", "r0c5", "r1c0"] and tokens[-1] == "r7c5"
        assert attention["image"].dtype == np.uint8
        np.testing.assert_array_equal(attention["image"], val["images"][0])  # the first val crop, unflipped

    n = len(val["images"])
    rows = np.linspace(0, n - 1, 6).round().astype(int)  # 6 crops evenly spaced over the val split
    with np.load(tmp_path / "metrics" / run / "examples.npz") as examples:
        assert set(examples.files) == {"images", "pred", "target", "visible", "joint_names", "skeleton"}
        assert examples["images"].dtype == np.uint8
        np.testing.assert_array_equal(examples["images"], val["images"][rows])
        assert examples["pred"].dtype == examples["target"].dtype == np.float32
        assert examples["pred"].shape == examples["target"].shape == (6, 17, 2)
        np.testing.assert_array_equal(examples["target"], val["keypoints"][rows])
        assert ((examples["pred"] >= 0) & (examples["pred"] <= [CROP[1], CROP[0]])).all()  # (x, y) in the crop
        assert examples["visible"].dtype == bool
        np.testing.assert_array_equal(examples["visible"], val["visible"][rows])
        assert examples["joint_names"].tolist() == list(KEYPOINT_NAMES)
        skeleton = examples["skeleton"]
        assert skeleton.dtype == np.int64 and skeleton.shape == (len(SKELETON), 2)
        assert skeleton.min() == 0 and skeleton.max() == 16
        assert {tuple(limb) for limb in skeleton + 1} == set(SKELETON)


def test_validation_scores_whole_images_with_evaluates_ap(prepared, monkeypatch, tmp_path):
    """Validation is evaluate's AP on the first whole images of the val split: on the tiny val split (under
    VALIDATION_SAMPLES crops) exactly the AP evaluate reports for a file whose test group is that val split; on
    fewer crops, perfect predictions of those images' people still score 1 (the ground truth is cut to the same
    images)."""
    params, _, h5_path, stats_path = prepared
    config = params.run_config(params.run(run_name(params, "standard", "preln")))
    torch.manual_seed(0)
    model = pose2d.build_model(config, h5_path)
    cpu, stats = torch.device("cpu"), json.loads(stats_path.read_text())
    val_as_test = shutil.copy(h5_path, tmp_path / "val_as_test.h5")
    with h5py.File(val_as_test, "a") as h5:
        del h5["test"]
        h5.move("val", "test")
    headline, _ = pose2d.evaluate(model, val_as_test, stats, 16, cpu)
    assert pose2d.validation(h5_path, config)(model, cpu) == headline[pose2d.MAIN_METRIC]

    with h5py.File(h5_path) as h5:
        image_ids, keypoints = h5["val"]["image_id"][:], h5["val"]["keypoints"][:]
    first_image = int((image_ids == image_ids[0]).sum())
    assert 0 < first_image < len(image_ids)

    def perfect(model, images, batch_size, device, flip_test):  # the labels of the (leading) crops it is given
        return keypoints[: len(images)] / [CROP[1], CROP[0]], np.ones((len(images), 17))

    monkeypatch.setattr(pose2d, "predict", perfect)
    assert pose2d.evaluate(model, val_as_test, stats, 16, cpu)[0]["AP"] == pytest.approx(1.0)
    monkeypatch.setattr(pose2d, "VALIDATION_SAMPLES", first_image)
    assert pose2d.validation(h5_path, config)(model, cpu) == pytest.approx(1.0)


def test_first_images_keeps_images_whole():
    ids = np.array([5, 5, 2, 7, 7, 7])  # an image's crops are consecutive
    assert [pose2d._first_images(ids, n) for n in range(1, 8)] == [2, 2, 3, 3, 3, 6, 6]


@pytest.mark.parametrize("split", ["val", "test"])
def test_ground_truth_through_the_crop_chain_scores_ap_one(prepared, tmp_path, split):
    """Crop-pixel labels → stored affine → COCO results file → COCOeval against the stored gt json: AP = 1 (the
    val group's json: train2017's cut to its images)."""
    _, _, h5_path, _ = prepared
    with h5py.File(h5_path) as h5:
        g = h5[split]
        image_pixels = crops.apply_affine(g["affine"][:].astype(np.float64), g["keypoints"][:].astype(np.float64))
        (tmp_path / "gt.json").write_bytes(g["coco_gt_json"][:].tobytes())
        write_coco_results(tmp_path / "results.json", g["image_id"][:], image_pixels, np.ones(len(image_pixels)))
    stats = coco_keypoint_ap(tmp_path / "gt.json", tmp_path / "results.json")
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_corrupt_image_names_the_file(prepared, tmp_path):
    params, raw, _, _ = prepared
    shutil.copytree(raw, tmp_path / "raw")
    victim = sorted((tmp_path / "raw" / "images" / "val2017").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(CocoFormatError, match=victim.name):
        pose2d.prepare(params.data.pose2d, tmp_path / "raw", tmp_path / "out.h5", tmp_path / "stats.json")
    assert not (tmp_path / "out.h5").exists()  # nothing half-written


def test_coco_source_links_the_synthetic_layout(prepared, tmp_path, monkeypatch):
    """source: coco links the unpacked archives (faked here: no network in tests) into the layout prepare reads."""
    params, raw, _, _ = prepared
    coco_dir = tmp_path / "coco"
    for split in pose2d.COCO_SPLITS:  # the layout of the unpacked official archives
        shutil.copytree(raw / "images" / split, coco_dir / split)
    shutil.copytree(raw / "annotations", coco_dir / "annotations")
    fetched = []
    monkeypatch.setattr(pose2d, "download_coco", lambda root, files: fetched.append(files) or root)
    data = params.data.pose2d.model_copy(update={"source": "coco", "coco_dir": str(coco_dir)})
    files = pose2d.download(data, tmp_path / "raw")
    assert fetched == [pose2d.COCO_ARCHIVES] and all(path.is_symlink() for path in files.values())
    stats = pose2d.prepare(data, tmp_path / "raw", tmp_path / "coco.h5", tmp_path / "coco.json")
    assert stats["splits"]["test"]["rows"] == len(json.loads(files["val_annotations"].read_text())["annotations"])


def test_sample_metric_of_every_person_is_cocoevals_ap(prepared, monkeypatch):
    """samples: OKS and score per evaluated person, grouped by image; on predictions that miss some people at some
    thresholds its sample_metric is pycocotools' AP."""
    params, _, h5_path, stats_path = prepared
    with h5py.File(h5_path) as h5:
        keypoints, image_ids = h5["test"]["keypoints"][:], h5["test"]["image_id"][:]  # what evaluate scores
    rng = np.random.default_rng(0)
    noisy = keypoints + rng.normal(0, 1.0, keypoints.shape) * rng.uniform(0, 4, (len(keypoints), 1, 1))

    def predicted(model, images, batch_size, device, flip_test):  # labels off by 0–4 px, random confidences
        return noisy[: len(images)] / [CROP[1], CROP[0]], rng.uniform(0.2, 1.0, (len(images), 17))

    monkeypatch.setattr(pose2d, "predict", predicted)
    config = params.run_config(params.run(run_name(params, "standard", "preln")))
    model = pose2d.build_model(config, h5_path)
    headline, tables = pose2d.evaluate(model, h5_path, json.loads(stats_path.read_text()), 16, torch.device("cpu"))
    samples = tables["samples"]
    np.testing.assert_array_equal(samples["group"], image_ids)
    assert 0.2 < headline["AP"] < 0.95  # some people are matched at some thresholds only
    assert pose2d.sample_metric(samples) == pytest.approx(headline["AP"], abs=1e-12)
