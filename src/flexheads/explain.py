"""Grad-CAM saliency maps for the cxr Vision Transformer, computed by the ``grad-cam`` package (``pytorch_grad_cam``).

Grad-CAM (Selvaraju et al. 2017, ICCV): with activations ``A (channels k, patches)`` at a target layer and the
logit ``y_c`` of the explained finding,

    alpha_k = mean_patches dy_c / dA_k,        L_c = ReLU(sum_k alpha_k A_k)

on the patch grid, then min-max scaled to [0, 1] per map and bilinearly upsampled to the image.

Target layer: the head reads only the CLS token of the last layer's output, so the patch tokens of that output
reach no logit, get zero gradient, and give an all-zero map. Patch tokens act on the logit only by being attended
to in the last layer, so the hook sits on the input side of the last layer's self-attention,
``encoder.layers[-1].pre_norm1``: with Pre-LN its LayerNorm (timm's ``blocks[-1].norm1``), with Post-LN and no-LN an
``nn.Identity`` that returns the tokens entering the last layer. One rule for every norm scheme and any depth
(with one layer these are the embedded patches and positions). For Pre-LN the LayerNorm's output, not its input,
is the right place: LayerNorm is scale invariant, so each token's gradient is orthogonal to the token itself
(``g_p . x_p = 0``) and a CAM of the residual stream would keep only cross terms between tokens.

Limitation: Grad-CAM is first order. On the toy of ``tests/test_explain.py`` it localises with Post-LN and no-LN
but not with Pre-LN, whose logit saturates (the gradient's linear estimate of removing the finding has the wrong
sign) or has moved the evidence into the CLS token before the last layer; compare Pre-LN maps with that in mind.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from torch import Tensor, nn

from flexheads.models.vit import VisionTransformer

__all__ = ["gradcam_maps", "gradcam_target_layer"]


class _Logits(nn.Module):
    """The model without its attention output: ``pytorch_grad_cam`` needs ``model(x)`` to be a tensor."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)[0]


def gradcam_target_layer(model: VisionTransformer) -> nn.Module:
    """The module whose output Grad-CAM reads: the tokens entering the last layer's attention (module docstring)."""
    return model.encoder.layers[-1].pre_norm1


def gradcam_maps(
    model: VisionTransformer, images: Tensor, class_indices: Sequence[int], batch_size: int = 64
) -> np.ndarray:
    """Grad-CAM map of finding ``class_indices[n]`` on ``images[n]``.

    Args:
        model: a trained :class:`VisionTransformer`; returned in its original train/eval mode with no gradients
            held (the maps are computed in eval mode: no dropout, so they are deterministic on CPU).
        images: ``(N, C, S, S)`` in [0, 1], as the model takes them, on any device (moved to the model's).
        class_indices: ``N`` finding indices in ``[0, n_classes)``.
        batch_size: images per backward pass (samples do not interact: maps do not depend on it).

    Returns:
        ``(N, S, S)`` float32 in [0, 1]: each map scaled by its own maximum (all zeros where the ReLU leaves
        nothing, i.e. no patch raises the logit).
    """
    n_classes = model.config.n_classes
    class_indices = [int(c) for c in class_indices]
    if images.ndim != 4 or len(class_indices) != len(images):
        raise ValueError(
            f"need images (N, C, S, S) and N class indices, got {tuple(images.shape)} and {len(class_indices)}"
        )
    if any(not 0 <= c < n_classes for c in class_indices):
        raise ValueError(f"class indices must lie in [0, {n_classes}), got {sorted(set(class_indices))}")
    was_training = model.training
    rows, cols = model.config.grid
    cam = GradCAM(  # puts the model in eval mode
        model=_Logits(model),
        target_layers=[gradcam_target_layer(model)],
        reshape_transform=partial(vit_reshape_transform, height=rows, width=cols),  # drop CLS, tokens → grid
    )
    maps = [np.zeros((0, *images.shape[-2:]), dtype=np.float32)]
    try:  # not `with cam`: its __exit__ prints and swallows an IndexError
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                targets = [ClassifierOutputTarget(c) for c in class_indices[start : start + batch_size]]
                maps.append(cam(images[start : start + batch_size], targets))
    finally:
        cam.activations_and_grads.release()  # remove the hooks from the model
        model.train(was_training)
        model.zero_grad(set_to_none=True)  # the backward passes left gradients on the weights
    return np.concatenate(maps)
