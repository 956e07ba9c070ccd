"""Top-down person crops of pose2d: decoding an image, the crop ↔ image geometry, cutting a crop, augmenting crops.

Coordinates are continuous pixels with ``(0, 0)`` the top-left corner of the top-left pixel, so pixel
``(col, row)`` covers ``[col, col + 1) × [row, row + 1)`` (PIL's resampling convention and the synthetic data's).
A crop is an axis-aligned scale + shift of its image; ``affine`` ``(2, 3)`` maps crop → image:
``[x_img, y_img] = affine[:, :2] @ [x_crop, y_crop] + affine[:, 2]``.

* :func:`read_rgb`: an image decoded completely, as RGB (``prepare`` decodes each image once);
* :func:`crop_affine`, :func:`apply_affine`, :func:`invert_affine`: the crop of a person's box and the maps
  between crop and image pixels;
* :func:`crop_image`: the crop's pixels, cut from the image;
* :func:`as_input`: uint8 crops as the keypoint model takes them;
* :func:`augment`: the training augmentation (mirror, rotation, zoom) of a batch of crops and their keypoints.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from flexheads.data.coco import FLIP_PAIRS, KEYPOINT_NAMES, CocoFormatError

CROP_PADDING = 1.25  # box side × 1.25 after widening to the crop aspect (SimpleBaseline/HRNet)

# Training augmentation, drawn from each step's generator (light: the crops already hold 25% context).
FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEG = 15.0  # uniform in ±15°
MAX_SCALE_CHANGE = 0.15  # zoom uniform in [0.85, 1.15]

# Keypoint order of the mirror image: left and right swap.
FLIP_INDEX = np.arange(len(KEYPOINT_NAMES))
for _left, _right in FLIP_PAIRS:
    FLIP_INDEX[[_left, _right]] = _right, _left


def read_rgb(path: Path, size: tuple[int, int]) -> Image.Image:
    """Decode ``path`` completely as RGB; ``CocoFormatError`` naming it if it is unreadable or not ``size``
    (``(width, height)``, as the annotation file gives it)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel here: a truncated file fails now, naming its path
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CocoFormatError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if rgb.size != size:
        raise CocoFormatError(f"{path} is {rgb.size[0]}x{rgb.size[1]}, the annotation file says {size[0]}x{size[1]}")
    return rgb


def crop_affine(bbox: np.ndarray, crop_size: tuple[int, int], padding: float = CROP_PADDING) -> np.ndarray:
    """Crop → image affine ``(2, 3)`` of the COCO box ``(x, y, w, h)``: the box centred, widened to the crop's
    aspect ratio, then scaled by ``padding``; ``crop_size`` is ``(H, W)``."""
    height, width = crop_size
    x, y, w, h = (float(v) for v in bbox)
    w_box, h_box = max(w, 1.0), max(h, 1.0)  # a degenerate box still gets a crop around its centre
    if w_box > h_box * width / height:
        h_box = w_box * height / width
    scale = padding * h_box / height  # image pixels per crop pixel, the same along x and y
    return np.array([[scale, 0.0, x + w / 2 - scale * width / 2],
                     [0.0, scale, y + h / 2 - scale * height / 2]])  # fmt: skip


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine (..., 2, 3)`` applied to ``points (..., K, 2)`` → ``(..., K, 2)``."""
    return points @ np.swapaxes(affine[..., :2], -1, -2) + affine[..., None, :, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse map of ``affine (..., 2, 3)``."""
    linear = np.linalg.inv(affine[..., :2])
    return np.concatenate([linear, -(linear @ affine[..., 2:])], axis=-1)


def crop_image(image: Image.Image, affine: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """The crop ``(H, W, 3)`` uint8 whose pixel ``(col, row)`` shows the image around ``affine @ (col + .5,
    row + .5)``; outside the image is black.

    An antialiased bilinear resize (PIL's ``resize`` with a sub-pixel ``box``) of a zero-padded region, which for
    the scale + shift of :func:`crop_affine` is the affine warp without its aliasing when a crop shrinks a person.
    """
    height, width = crop_size
    scale, x0, y0 = affine[0, 0], affine[0, 2], affine[1, 2]
    if affine[0, 1] or affine[1, 0] or not math.isclose(affine[1, 1], scale):
        raise ValueError(f"crop_image takes an axis-aligned, isotropic scale + shift, got {affine.tolist()}")
    x1, y1 = x0 + scale * width, y0 + scale * height
    margin = math.ceil(scale) + 1  # the resampling filter's reach (1 crop pixel), so no edge is renormalised
    left, top = math.floor(x0) - margin, math.floor(y0) - margin
    region = image.crop((left, top, math.ceil(x1) + margin, math.ceil(y1) + margin))  # zero-filled outside
    box = (x0 - left, y0 - top, x1 - left, y1 - top)
    return np.asarray(region.resize((width, height), Image.Resampling.BILINEAR, box=box))


def as_input(images: np.ndarray) -> Tensor:
    """uint8 crops ``(B, H, W, 3)`` → the model's input ``(B, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def augment(rng: np.random.Generator, images: np.ndarray, keypoints: np.ndarray,
            visible: np.ndarray) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Random mirror, rotation about the crop centre and zoom, drawn from ``rng``.

    Args:
        images: uint8 ``(B, H, W, 3)``. keypoints: ``(B, 17, 2)`` crop pixels. visible: bool ``(B, 17)``.
    Returns:
        float images ``(B, 3, H, W)`` in [0, 1] (bilinear, black outside the crop), keypoints in the new crops'
        pixels (left/right swapped where mirrored) and ``visible`` without keypoints that left the crop.
    """
    b, height, width = images.shape[:3]
    flip = rng.random(b) < FLIP_PROBABILITY
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, b))
    zoom = rng.uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE, b)
    # output → source pixels: about the centre c, src = c + R(-angle) (out - c) / zoom, then mirrored: x → W - x
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    linear[flip, 0] *= -1
    centre = np.array([width / 2, height / 2])
    out_to_src = np.concatenate([linear, (centre - linear @ centre)[..., None]], axis=-1)  # (B, 2, 3)

    rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    src = apply_affine(out_to_src, np.stack([cols, rows], -1).reshape(-1, 2)[None])  # (B, H*W, 2) source pixels
    grid = torch.from_numpy((src / [width, height] * 2 - 1).reshape(b, height, width, 2).astype(np.float32))
    warped = F.grid_sample(as_input(images), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    moved = apply_affine(invert_affine(out_to_src), keypoints.astype(np.float64))
    moved[flip] = moved[flip][:, FLIP_INDEX]
    visible = np.where(flip[:, None], visible[:, FLIP_INDEX], visible)
    inside = (moved >= 0).all(-1) & (moved[..., 0] < width) & (moved[..., 1] < height)
    return warped, moved, visible & inside
