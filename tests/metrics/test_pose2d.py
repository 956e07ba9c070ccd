"""Hand-computed cases for flexheads.metrics.pose2d (all distances in pixels, COCO joint order)."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from flexheads.metrics.pose2d import (
    COCO_KEYPOINTS,
    COCO_STATS,
    LIMBS,
    bbox_diagonal,
    coco_keypoint_ap,
    head_size_from_keypoints,
    pck,
    pckh,
    pcp,
    pdj,
    torso_diameter,
    write_coco_results,
)

J = 17
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER = 0, 1, 2, 3, 4, 5, 6
L_ELBOW, L_WRIST, L_HIP, R_HIP = 7, 9, 11, 12

# A person facing the camera (their left on the image right), about 100 x 240 px: ears 20 apart, eyes 10.
TEMPLATE = np.array(
    [[50, 20], [55, 15], [45, 15], [60, 18], [40, 18],  # nose, eyes, ears
     [70, 50], [30, 50], [75, 90], [25, 90], [78, 130], [22, 130],  # shoulders, elbows, wrists
     [62, 140], [38, 140], [63, 190], [37, 190], [64, 240], [36, 240]],  # hips, knees, ankles
    dtype=np.float64,
)  # fmt: skip


def _people(n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copies of TEMPLATE shifted 200 px apart, all joints visible: (n, 17, 2), (n, 17)."""
    gt = TEMPLATE[None] + np.arange(n)[:, None, None] * np.array([200.0, 0.0])
    return gt, np.ones((n, J), dtype=bool)


def _offset(gt: np.ndarray, errors: dict[int, tuple[float, float]], person: int = 0) -> np.ndarray:
    """Copy of ``gt`` with joint ``j`` of ``person`` displaced by ``errors[j] = (dx, dy)``."""
    pred = gt.copy()
    for joint, delta in errors.items():
        pred[person, joint] += delta
    return pred


def _only(joints: list[int], n: int = 1) -> np.ndarray:
    """(n, 17) visibility with only ``joints`` visible."""
    visible = np.zeros((n, J), dtype=bool)
    visible[:, joints] = True
    return visible


# --- PCK / PCKh / PDJ / PCP on hand-made poses ------------------------------------------------------------


def test_identical_predictions_score_one():
    gt, visible = _people(3)
    norm = bbox_diagonal(np.array([[0.0, 0.0, 100.0, 240.0]] * 3))
    for result in [pck(gt, gt, visible, norm), pckh(gt, gt, visible, head_size_from_keypoints(gt, visible)),
                   pdj(gt, gt, visible)]:  # fmt: skip
        assert result["overall"] == 1.0
        np.testing.assert_array_equal(result["per_joint"], np.ones(J))
        assert result["n_excluded"] == 0
    result = pcp(gt, gt, visible)
    assert result["overall"] == 1.0
    assert result["per_limb"] == {name: 1.0 for name, _, _ in LIMBS}


def test_pck_threshold_is_inclusive():
    gt = np.zeros((1, J, 2))  # at the origin, so 25 + 1 ulp survives the addition
    threshold = 25.0  # alpha 0.25 x norm 100: exact in float64
    just_over = np.nextafter(threshold, np.inf)
    pred = _offset(gt, {0: (24.0, 0.0), 1: (15.0, 20.0), 2: (just_over, 0.0), 3: (0.0, 30.0)})
    result = pck(pred, gt, _only([0, 1, 2, 3]), np.array([100.0]), alpha=0.25)
    # error exactly 25 (the 15-20-25 triangle) is correct: "<=" as in the MPII code; 25 + 1 ulp is not
    np.testing.assert_array_equal(result["per_joint"][:4], [1.0, 1.0, 0.0, 0.0])
    assert result["overall"] == 0.5


def test_pck_ignores_invisible_joints():
    gt, visible = _people(1)
    pred = _offset(gt, {L_WRIST: (500.0, 0.0)})
    visible[0, L_WRIST] = False
    assert pck(pred, gt, visible, np.array([100.0]))["overall"] == 1.0
    visible[0, L_WRIST] = True
    assert pck(pred, gt, visible, np.array([100.0]))["overall"] == 16 / 17


def test_pck_per_joint_is_nan_for_never_visible_joints():
    gt, visible = _people(2)
    visible[:, R_EAR] = False  # never annotated
    visible[1, L_EAR] = False  # annotated on one person only
    pred = _offset(gt, {NOSE: (50.0, 0.0)}, person=1)
    result = pck(pred, gt, visible, np.array([100.0, 100.0]))
    per_joint = result["per_joint"]
    assert per_joint.shape == (J,)
    assert np.isnan(per_joint[R_EAR])
    assert np.isfinite(np.delete(per_joint, R_EAR)).all()
    assert per_joint[NOSE] == 0.5
    assert per_joint[L_EAR] == 1.0
    assert result["overall"] == (2 * J - 3 - 1) / (2 * J - 3)  # micro-average over 31 visible joints


def test_pck_uses_each_persons_normaliser():
    gt, _ = _people(2)
    pred = _offset(_offset(gt, {NOSE: (6.0, 8.0)}, person=0), {NOSE: (6.0, 8.0)}, person=1)  # error 10 px
    result = pck(pred, gt, _only([NOSE], 2), np.array([50.0, 49.0]), alpha=0.2)  # thresholds 10 and 9.8
    assert result["per_joint"][NOSE] == 0.5


def test_pck_with_bbox_diagonal():
    np.testing.assert_array_equal(bbox_diagonal(np.array([[10.0, 20.0, 30.0, 40.0], [0, 0, 5, 12]])), [50.0, 13.0])
    gt, _ = _people(1)
    pred = _offset(gt, {NOSE: (10.0, 0.0), L_EYE: (0.0, 10.5)})
    result = pck(pred, gt, _only([NOSE, L_EYE]), bbox_diagonal(np.array([[0.0, 0.0, 30.0, 40.0]])), alpha=0.2)
    assert result["overall"] == 0.5  # threshold 0.2 * 50 = 10 px


def test_nan_prediction_counts_as_miss():
    gt, visible = _people(1)
    pred = _offset(gt, {NOSE: (np.nan, np.nan)})
    assert pck(pred, gt, visible, np.array([100.0]))["overall"] == 16 / 17


def _head(points: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """One person whose only visible joints are ``points``."""
    gt = np.zeros((1, J, 2))
    for joint, xy in points.items():
        gt[0, joint] = xy
    return gt, _only(list(points))


EARS = {L_EAR: (60.0, 18.0), R_EAR: (36.0, 25.0)}  # 24-7-25 triangle: 25 px apart
EYES = {L_EYE: (55.0, 15.0), R_EYE: (49.0, 23.0)}  # 6-8-10 triangle: 10 px apart
TORSO = {L_SHOULDER: (70.0, 50.0), R_HIP: (40.0, 90.0)}  # 30-40-50 triangle: 50 px diagonal


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ({**EARS, **EYES, **TORSO}, 25.0),  # ears first
        ({L_EAR: EARS[L_EAR], **EYES, **TORSO}, 20.0),  # one ear missing: 2 x eye distance
        ({L_EAR: (5.0, 5.0), R_EAR: (5.0, 5.0), **EYES}, 20.0),  # zero-length ears count as missing
        ({R_EYE: EYES[R_EYE], **TORSO}, 12.5),  # no face pair: 0.25 x torso diameter
        ({NOSE: (1.0, 1.0), L_EAR: EARS[L_EAR]}, np.nan),  # nothing usable
    ],
)
def test_head_size_fallback_chain(points, expected):
    gt, visible = _head(points)
    np.testing.assert_array_equal(head_size_from_keypoints(gt, visible), [expected])


def test_pckh_with_known_head_size():
    gt, _ = _people(2)
    pred = _offset(_offset(gt, {NOSE: (12.0, 16.0)}), {NOSE: (0.0, 20.5)}, person=1)  # errors 20 and 20.5
    result = pckh(pred, gt, _only([NOSE, L_EYE], 2), np.array([40.0, 40.0]))  # threshold 0.5 * 40 = 20
    assert result["per_joint"][NOSE] == 0.5
    assert result["overall"] == 3 / 4
    assert result["n_excluded"] == 0


def test_pckh_excludes_persons_without_head_size():
    gt, visible = _people(2)
    pred = _offset(gt, {NOSE: (100.0, 0.0)}, person=1)
    result = pckh(pred, gt, visible, np.array([20.0, np.nan]))
    assert result["overall"] == 1.0  # person 1's miss is not counted
    assert result["n_excluded"] == 1


def test_torso_diameter_uses_left_shoulder_right_hip_then_other_diagonal():
    gt = np.zeros((3, J, 2))
    gt[:, L_SHOULDER], gt[:, R_HIP] = (0.0, 0.0), (30.0, 40.0)  # 50 px
    gt[:, R_SHOULDER], gt[:, L_HIP] = (100.0, 0.0), (105.0, 12.0)  # 13 px
    visible = _only([L_SHOULDER, R_SHOULDER, L_HIP, R_HIP], 3)
    visible[1, L_SHOULDER] = False
    visible[2, [L_SHOULDER, L_HIP]] = False
    np.testing.assert_array_equal(torso_diameter(gt, visible), [50.0, 13.0, np.nan])


def test_pdj_with_known_torso():
    gt, visible = _people(3)
    gt[:, L_SHOULDER], gt[:, R_HIP] = (0.0, 0.0), (30.0, 40.0)  # torso diameter 50 -> threshold 0.2 * 50 = 10
    pred = _offset(gt, {NOSE: (6.0, 8.0), L_EYE: (0.0, 10.1)})
    pred = _offset(pred, {NOSE: (500.0, 0.0)}, person=2)
    visible[2, [L_SHOULDER, R_SHOULDER]] = False  # no torso: person 2 (and its miss) is excluded
    result = pdj(pred, gt, visible)
    assert result["n_excluded"] == 1
    assert result["per_joint"][NOSE] == 1.0  # error exactly 10 is detected
    assert result["per_joint"][L_EYE] == 0.5
    assert result["overall"] == (2 * J - 1) / (2 * J)


def test_pcp_one_wrong_endpoint_fails_only_its_limb():
    gt, visible = _people(2)
    forearm = np.linalg.norm(TEMPLATE[L_WRIST] - TEMPLATE[L_ELBOW])  # sqrt(9 + 1600)
    pred = _offset(gt, {L_WRIST: (0.5 * forearm + 0.01, 0.0)})  # elbow exact, wrist just outside
    result = pcp(pred, gt, visible)
    assert result["per_limb"]["left_forearm"] == 0.5  # wrong on person 0, right on person 1
    assert all(score == 1.0 for name, score in result["per_limb"].items() if name != "left_forearm")
    assert result["overall"] == (2 * len(LIMBS) - 1) / (2 * len(LIMBS))
    inside = pcp(_offset(gt, {L_WRIST: (0.5 * forearm - 0.01, 0.0)}), gt, visible)
    assert inside["overall"] == 1.0


def test_pcp_threshold_is_per_limb_length():
    gt, visible = _people(1)
    upper_arm = np.linalg.norm(TEMPLATE[L_ELBOW] - TEMPLATE[L_SHOULDER])  # ~40.3 px
    forearm = np.linalg.norm(TEMPLATE[L_WRIST] - TEMPLATE[L_ELBOW])  # ~40.1 px
    error = 0.5 * (upper_arm + forearm) / 2  # between the two half-lengths
    result = pcp(_offset(gt, {L_ELBOW: (0.0, error)}), gt, visible)
    assert result["per_limb"]["left_upper_arm"] == 1.0
    assert result["per_limb"]["left_forearm"] == 0.0


def test_pcp_counts_limbs_with_both_endpoints_visible():
    gt, visible = _people(1)
    visible[0, L_WRIST] = False
    pred = _offset(gt, {L_WRIST: (300.0, 0.0)})
    result = pcp(pred, gt, visible)
    assert np.isnan(result["per_limb"]["left_forearm"])
    assert result["overall"] == 1.0


# --- validation ------------------------------------------------------------------------------------------

JOINT_METRICS = [
    lambda p, g, v: pck(p, g, v, np.full(len(g), 100.0)),
    lambda p, g, v: pckh(p, g, v, np.full(len(g), 30.0)),
    pdj,
    pcp,
]


@pytest.mark.parametrize("metric", JOINT_METRICS)
def test_shape_mismatch_raises(metric):
    with pytest.raises(ValueError, match=r"gt must have shape \(N, 17, 2\).*\(2, 16, 2\)"):
        metric(np.zeros((2, J, 2)), np.zeros((2, 16, 2)), np.ones((2, J), dtype=bool))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 17, 2\).*\(3, 17, 2\)"):
        metric(np.zeros((2, J, 2)), np.zeros((3, J, 2)), np.ones((3, J), dtype=bool))
    with pytest.raises(ValueError, match=r"visible must be a bool array of shape \(2, 17\).*\(2, 16\)"):
        metric(np.zeros((2, J, 2)), np.zeros((2, J, 2)), np.ones((2, 16), dtype=bool))
    with pytest.raises(ValueError, match="visible must be a bool array.*int64"):
        metric(np.zeros((2, J, 2)), np.zeros((2, J, 2)), np.full((2, J), 2))  # raw COCO v, not v > 0


@pytest.mark.parametrize("metric", JOINT_METRICS)
def test_nothing_visible_raises(metric):
    gt, _ = _people(2)
    with pytest.raises(ValueError, match="nothing to score"):
        metric(gt, gt, np.zeros((2, J), dtype=bool))


def test_normaliser_and_bbox_shapes_are_checked():
    gt, visible = _people(2)
    with pytest.raises(ValueError, match=r"norm must have shape \(2,\), got \(3,\)"):
        pck(gt, gt, visible, np.ones(3))
    with pytest.raises(ValueError, match="head_size must be finite and >= 0"):
        pckh(gt, gt, visible, np.array([20.0, -1.0]))
    with pytest.raises(ValueError, match=r"bboxes must have shape \(N, 4\).*\(2, 2\)"):
        bbox_diagonal(np.ones((2, 2)))


# --- COCO OKS AP through pycocotools ---------------------------------------------------------------------

COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]  # fmt: skip


def _write_coco_gt(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two images, four persons (two medium, two large by area); returns image_ids, keypoints, visible.

    Two per area range because COCOeval's precision is ``tp / (tp + fp + eps)``: a range holding one
    person tops out at ``1 / (1 + eps) = 1 - 2.2e-16``, while two or more give exactly 1.0.
    """
    image_ids = np.array([1, 1, 2, 2])
    keypoints = np.stack([TEMPLATE * 0.5 + [10, 10], TEMPLATE + [200, 20],
                          TEMPLATE * 1.2 + [50, 30], TEMPLATE * 0.6 + [300, 100]])  # fmt: skip
    visible = np.ones((4, J), dtype=bool)
    visible[0, [L_EAR, R_EAR]] = False  # unannotated joints: COCO writes them as (0, 0, 0)
    annotations = []
    for ann_id, (image_id, kpts, vis) in enumerate(zip(image_ids, keypoints, visible), start=1):
        x0, y0 = kpts[vis].min(axis=0)
        w, h = kpts[vis].max(axis=0) - (x0, y0)
        triplets = np.where(vis[:, None], np.concatenate([kpts, np.full((J, 1), 2.0)], axis=1), 0.0)
        annotations.append({
            "id": ann_id, "image_id": int(image_id), "category_id": 1, "iscrowd": 0,
            "keypoints": triplets.ravel().tolist(), "num_keypoints": int(vis.sum()),
            "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h),
        })  # fmt: skip
    areas = [ann["area"] for ann in annotations]
    assert 32**2 < max(areas[0], areas[3]) < 96**2 < min(areas[1], areas[2])  # APm and APl both defined
    gt = {
        "images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 640, "height": 480}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(COCO_KEYPOINTS), "skeleton": COCO_SKELETON}],
    }  # fmt: skip
    path.write_text(json.dumps(gt))
    return image_ids, keypoints, visible


@pytest.fixture
def coco_gt(tmp_path):
    gt_path = tmp_path / "person_keypoints_gt.json"
    return (gt_path, *_write_coco_gt(gt_path))


def test_perfect_predictions_give_oks_ap_one(coco_gt, tmp_path):
    gt_path, image_ids, keypoints, _ = coco_gt
    results = tmp_path / "results.json"
    write_coco_results(results, image_ids, keypoints, np.ones(4))
    stats = coco_keypoint_ap(gt_path, results)
    assert list(stats) == list(COCO_STATS)
    assert stats == {name: 1.0 for name in COCO_STATS}


def test_shifted_predictions_give_ap_below_one(coco_gt, tmp_path):
    gt_path, image_ids, keypoints, _ = coco_gt
    results = tmp_path / "results.json"
    write_coco_results(results, image_ids, keypoints + np.array([6.0, -4.0]), np.ones(4))
    stats = coco_keypoint_ap(gt_path, results)
    assert 0.0 <= stats["AP"] < 1.0
    assert stats["AP"] <= stats["AP50"]


def test_coco_keypoint_ap_prints_nothing(coco_gt, tmp_path, capsys):
    gt_path, image_ids, keypoints, _ = coco_gt
    results = tmp_path / "results.json"
    write_coco_results(results, image_ids, keypoints, np.ones(4))
    coco_keypoint_ap(gt_path, results)
    assert capsys.readouterr().out == ""


def test_empty_results_raise(coco_gt, tmp_path):
    results = tmp_path / "empty_results.json"
    write_coco_results(results, np.zeros(0, dtype=int), np.zeros((0, J, 2)), np.zeros(0))
    assert json.loads(results.read_text()) == []
    with pytest.raises(ValueError, match="empty_results.json holds no detections"):
        coco_keypoint_ap(coco_gt[0], results)


def test_results_for_other_images_raise(coco_gt, tmp_path):
    gt_path, _, keypoints, _ = coco_gt
    results = tmp_path / "results.json"
    write_coco_results(results, np.array([7, 7, 8, 8]), keypoints, np.ones(4))
    with pytest.raises(ValueError, match="no detections for the ground-truth images"):
        coco_keypoint_ap(gt_path, results)
    write_coco_results(results, np.array([1, 2, 8, 2]), keypoints, np.ones(4))
    with pytest.raises(ValueError, match=r"image_ids not in the ground truth: \[8\]"):
        coco_keypoint_ap(gt_path, results)


def test_write_coco_results_round_trips_through_loadres(coco_gt, tmp_path):
    gt_path, image_ids, keypoints, _ = coco_gt
    confidence = np.linspace(0.1, 0.9, 4 * J).reshape(4, J)
    scores = np.array([0.9, 0.5, 0.7, 0.2])
    results = tmp_path / "results.json"
    write_coco_results(results, image_ids.astype(np.int64), keypoints + 0.25, scores, confidence)
    written = json.loads(results.read_text())
    assert [det["category_id"] for det in written] == [1, 1, 1, 1]
    assert all(len(det["keypoints"]) == 3 * J for det in written)

    coco_dt = COCO(str(gt_path)).loadRes(str(results))
    dets = coco_dt.loadAnns(coco_dt.getAnnIds())
    assert [d["image_id"] for d in dets] == image_ids.tolist()
    assert [d["score"] for d in dets] == scores.tolist()
    triplets = np.array([d["keypoints"] for d in dets]).reshape(4, J, 3)
    np.testing.assert_array_equal(triplets[..., :2], keypoints + 0.25)
    np.testing.assert_array_equal(triplets[..., 2], confidence)


def test_write_coco_results_defaults_v_to_one_and_checks_shapes(tmp_path):
    results = tmp_path / "results.json"
    write_coco_results(results, [3], TEMPLATE[None], [0.8])
    assert json.loads(results.read_text())[0]["keypoints"][2::3] == [1.0] * J
    with pytest.raises(ValueError, match=r"scores must have shape \(1,\) to match keypoints \(1, 17, 2\), got \(2,\)"):
        write_coco_results(results, [3], TEMPLATE[None], [0.8, 0.1])
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, 17, 2\), got \(17, 2\)"):
        write_coco_results(results, [3], TEMPLATE, [0.8])
    with pytest.raises(ValueError, match="must be finite"):
        write_coco_results(results, [3], np.full((1, J, 2), np.nan), [0.8])
