"""Decoding the cxr radiographs and lesion masks for ``prepare``: each image to a small grayscale square, each
mask file to per-pixel finding bits, cropped and resized alike.

* :func:`load_image`: an image file → uint8 ``(S, S)``, the largest centred square resized (antialiased bilinear);
* :func:`load_mask_bits`: a mask file (synthetic data) → uint16 ``(S, S)``, bit k where finding ``LABELS[k]`` is;
* :func:`load_row`: both for one row of :func:`flexheads.data.cxr_store.records`, run by ``DECODE_THREADS``
  threads in parallel.

A missing or unreadable file raises ``CxrFormatError`` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flexheads.data.cxr import LABELS, CxrFormatError

DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing


def load_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` completely to 8-bit grayscale, centre-crop it to a square and resize it (antialiased
    bilinear) to ``size`` x ``size``; returns the uint8 ``(size, size)`` array and the original ``(width, height)``.

    16-bit and float images are scaled by their own range.  ``CxrFormatError`` names a missing or unreadable file.
    """
    if not path.is_file():
        raise CxrFormatError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel here: a truncated file fails now, naming its path
            original = image.size
            gray = _grayscale(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CxrFormatError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    square = gray.crop(_centre_square(original))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR)), original


def _grayscale(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit grayscale (mode ``L``); 16-bit and float pixels scaled from their own min..max."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        return Image.fromarray(((pixels - low) / max(high - low, 1e-12) * 255 + 0.5).astype(np.uint8))
    return image.convert("L")


def _centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop box of the largest centred square of an image of ``size`` (width, height)."""
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_mask_bits(path: Path, original: tuple[int, int], size: int) -> np.ndarray:
    """The uint16 ``(size, size)`` finding bits of a mask file: bit k where finding ``LABELS[k]`` is, each mask
    cropped like its image and resized by nearest neighbour (a lesion smaller than the resize step may vanish)."""
    try:
        with np.load(path) as file:
            masks = {name: file[name] for name in file.files}
    except (OSError, ValueError) as err:
        raise CxrFormatError(f"{path}: not a readable mask file ({type(err).__name__}: {err})") from err
    bits = np.zeros((size, size), np.uint16)
    for name, mask in masks.items():
        if name not in LABELS:
            raise CxrFormatError(f"{path}: mask {name!r} is not a label; expected one of {list(LABELS)}")
        if mask.shape != original[::-1]:
            raise CxrFormatError(f"{path}: mask {name!r} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                 f"{original[0]}x{original[1]}")
        square = Image.fromarray(mask.astype(np.uint8)).crop(_centre_square(original))
        resized = np.asarray(square.resize((size, size), Image.Resampling.NEAREST)) > 0
        bits |= resized.astype(np.uint16) << LABELS.index(name)
    return bits


def load_row(row: Any, size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The image of one records row (a named tuple with ``path`` and ``mask_path``) and, ``with_masks``, its
    finding bits; both ``(size, size)``."""
    image, original = load_image(row.path, size)
    return image, load_mask_bits(row.mask_path, original, size) if with_masks else None
