"""Shared test settings (one torch thread per test process keeps the suite fast on 2-core CI machines) and
small builders of params and evaluation files several test modules use."""

import collections

import flexheads  # noqa: F401  (sets the MKL reproducibility switches before torch starts MKL)
import numpy as np
import torch

from flexheads.data.cxr import LABELS

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list) -> None:
    """Files in order of how many slow tests they hold, most first (ties and the rest as collected): run in
    parallel by file (pyproject's addopts), the long end-to-end files start at once and the quick ones fill in."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


def tiny_heads(n_heads: int, d_head: int, matched_heads: int) -> dict:
    """``model.<task>.heads`` of a small test model: standard (n_heads of d_model / n_heads), flexible_matched
    (matched_heads of d_head, with matched_heads × d_head = d_model) and flexible (n_heads of d_head)."""
    return {"standard": {"n_heads": n_heads}, "flexible_matched": {"n_heads": matched_heads, "d_head": d_head},
            "flexible": {"n_heads": n_heads, "d_head": d_head}}


def auroc_samples(auroc: float, patients: int = 10) -> dict[str, np.ndarray]:
    """samples.npz of ``patients`` patients with one positive and one negative image each whose AUROC is ``auroc``
    (a multiple of 1 / patients²) in every finding: positive i outranks ``beats[i]`` of the negatives 0, 1, ...;
    ``auroc`` 1.0 outranks every negative on every resample (and all-equal scores give 0.5 on every resample)."""
    concordant = round(auroc * patients**2)
    beats = concordant // patients + (np.arange(patients) < concordant % patients)
    scores = np.concatenate([beats - 0.5, np.arange(patients)]).astype(float)
    labels = np.repeat(np.r_[np.ones(patients), np.zeros(patients)][:, None], len(LABELS), 1).astype(np.uint8)
    return {"scores": np.repeat(scores[:, None], len(LABELS), 1), "labels": labels,
            "group": np.tile(np.arange(patients), 2)}
