"""Hand-computed cases for flexheads.metrics.localisation on 5 × 5 and 4 × 4 grids."""

import numpy as np
import pytest

from flexheads.metrics.localisation import baseline_heatmaps, cam_iou, pointing_game


def centre_mask(size: int = 5) -> np.ndarray:
    """(1, size, size) bool with the single centre pixel set."""
    mask = np.zeros((1, size, size), dtype=bool)
    mask[0, size // 2, size // 2] = True
    return mask


def peak_at(row: int, col: int, size: int = 5) -> np.ndarray:
    heatmap = np.zeros((1, size, size))
    heatmap[0, row, col] = 1.0
    return heatmap


def test_pointing_game_hit_miss_and_tolerance():
    mask = centre_mask()
    assert pointing_game(peak_at(2, 2), mask).tolist() == [1.0]
    assert pointing_game(peak_at(2, 4), mask).tolist() == [0.0]  # 2 px from the lesion
    assert pointing_game(peak_at(2, 4), mask, tolerance=2).tolist() == [1.0]  # distance <= tolerance counts
    assert pointing_game(peak_at(3, 4), mask, tolerance=2).tolist() == [0.0]  # sqrt(5) > 2
    assert pointing_game(peak_at(3, 4), mask, tolerance=2.3).tolist() == [1.0]


def test_pointing_game_scores_ties_by_their_expectation():
    heatmap = peak_at(2, 2) + peak_at(0, 0)  # two maxima, one on the lesion
    assert pointing_game(heatmap, centre_mask()).tolist() == [0.5]
    uniform = baseline_heatmaps("uniform", (1, 5, 5))
    assert pointing_game(uniform, centre_mask()).tolist() == [pytest.approx(1 / 25)]  # the area fraction
    assert pointing_game(uniform, centre_mask(), tolerance=1).tolist() == [pytest.approx(5 / 25)]  # a plus sign


def test_pointing_game_is_per_sample():
    heatmaps = np.concatenate([peak_at(2, 2), peak_at(0, 0)])
    masks = np.concatenate([centre_mask(), centre_mask()])
    np.testing.assert_array_equal(pointing_game(heatmaps, masks), [1.0, 0.0])


def test_cam_iou_by_hand():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2, :2] = True  # 4 px, top-left
    heatmap = np.zeros((1, 4, 4))
    heatmap[0, :2, :] = [[1.0, 1.0, 0.6, 0.4], [0.8, 0.5, 0.2, 0.0]]  # >= 0.5 of the max: 5 px, 4 on the lesion
    assert cam_iou(heatmap, mask).tolist() == [pytest.approx(4 / 5)]
    assert cam_iou(10 * heatmap, mask).tolist() == [pytest.approx(4 / 5)]  # relative to each map's maximum
    assert cam_iou(heatmap, mask, threshold=0.7).tolist() == [pytest.approx(3 / 4)]  # 3 px, all on the lesion
    assert cam_iou(np.zeros((1, 4, 4)), mask).tolist() == [pytest.approx(4 / 16)]  # selects everything


def test_center_baseline():
    odd = baseline_heatmaps("center", (2, 5, 5))
    assert odd.shape == (2, 5, 5) and odd.max() == 1.0 and odd.min() == 0.0
    assert pointing_game(odd, np.concatenate([centre_mask(), centre_mask()])).tolist() == [1.0, 1.0]
    even = baseline_heatmaps("center", (1, 4, 4))[0]
    assert (even == even.max()).sum() == 4 and even[1:3, 1:3].min() == even.max()  # the 4 centre pixels tie
    with pytest.raises(ValueError, match="kind"):
        baseline_heatmaps("corner", (1, 4, 4))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        pointing_game(peak_at(2, 2), np.zeros((1, 5, 5), dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        cam_iou(peak_at(2, 2), centre_mask().astype(int))
    with pytest.raises(ValueError, match="one shape"):
        pointing_game(peak_at(2, 2)[0], centre_mask()[0])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(peak_at(2, 2), centre_mask(), tolerance=-1)
