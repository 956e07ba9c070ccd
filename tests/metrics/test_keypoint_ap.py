"""Hand-computed cases for flexheads.metrics.keypoint_ap (COCO AP from per-person OKS and scores)."""

import math

import numpy as np
import pytest

from flexheads.metrics.keypoint_ap import COCO_SIGMAS, keypoint_ap, object_keypoint_similarity


def test_oks_of_one_displaced_keypoint():
    gt = np.zeros((1, 17, 2))
    pred = gt.copy()
    pred[0, 5] = [3.0, 4.0]  # left shoulder 5 px off
    visible = np.zeros((1, 17), dtype=bool)
    visible[0, [0, 5]] = True  # nose exact, shoulder off: OKS = (1 + exp(-25 / (2 · 100 · (2σ)^2))) / 2
    oks = object_keypoint_similarity(pred, gt, visible, np.array([100.0]))
    assert oks[0] == pytest.approx((1 + math.exp(-25 / (2 * 100 * (2 * COCO_SIGMAS[5]) ** 2))) / 2)
    assert object_keypoint_similarity(gt, gt, visible, np.array([100.0]))[0] == 1.0
    with pytest.raises(ValueError, match="visible keypoint"):
        object_keypoint_similarity(gt, gt, np.zeros((1, 17), dtype=bool), np.array([100.0]))


def test_every_match_at_every_threshold_scores_ap_one():
    assert keypoint_ap(np.ones(3), np.array([0.2, 0.9, 0.5]), np.array([1, 1, 2])) == 1.0


def test_oks_between_thresholds_counts_at_the_lower_ones():
    # OKS 0.72 matches at .50 .55 .60 .65 .70 (precision 1 at every recall), misses at .75 ... .95 (precision 0)
    assert keypoint_ap(np.array([0.72]), np.array([1.0]), np.array([1])) == pytest.approx(0.5)


def test_a_miss_ranked_first_halves_the_precision():
    # scores 0.9 (miss), 0.8 (match): precision 0, 1/2 at recall 0, 1/2 → interpolated 1/2 at the 51 recall
    # thresholds 0 ... 0.50, 0 above
    ap = keypoint_ap(np.array([0.0, 1.0]), np.array([0.9, 0.8]), np.array([1, 2]))
    assert ap == pytest.approx(51 * 0.5 / 101)


def test_tied_scores_rank_by_image_id_as_cocoeval():
    # equal scores: image 1's match comes first (precision 1 at recall 1/2), so AP = 51 / 101, not 51 · 0.5 / 101
    ap = keypoint_ap(np.array([0.0, 1.0]), np.array([0.5, 0.5]), np.array([2, 1]))
    assert ap == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match="non-empty shape"):
        keypoint_ap(np.array([]), np.array([]), np.array([]))
