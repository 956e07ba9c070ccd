"""What a picture holds (``Scene``): the background, the camera, the people (``Person``) and the objects in front of
them (``Occluder``), the inputs of ``rendering.render``.

Coordinates: the camera frame is x right, y down, z forward (metres).  Pixel coordinates are continuous with
(0, 0) the top-left corner of the image, so pixel ``(col, row)`` covers ``[col, col + 1) × [row, row + 1)``
(PIL's drawing convention and COCO's bbox convention); a keypoint is in the image iff ``0 <= x < W, 0 <= y < H``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PART_NAMES = (
    "torso", "pelvis", "neck", "head", "left_upper_arm", "left_forearm", "left_hand", "right_upper_arm",
    "right_forearm", "right_hand", "left_thigh", "left_shin", "left_foot", "right_thigh", "right_shin", "right_foot",
)  # fmt: skip
PART_INDEX = {name: index for index, name in enumerate(PART_NAMES)}
NEAR = 0.05  # metres: depths are clamped here before dividing


Colour = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class Person:
    """One figure: ``joints`` ``(17, 3)`` H36M joints in the camera frame (metres); ``colours`` maps every name in
    ``PART_NAMES`` plus ``'hair'`` and ``'eyes'`` to RGB; ``girth`` scales limb and trunk thickness; ``hair`` is the
    hair cap's threshold (cosine from the cap axis; above 1 = bald)."""

    joints: np.ndarray
    colours: dict[str, Colour]
    girth: float = 1.0
    hair: float = 0.0


@dataclass(frozen=True, eq=False)
class Occluder:
    """An object in front of the scene: a pixel ``polygon`` ``(n, 2)`` at camera ``depth`` (metres)."""

    polygon: np.ndarray
    depth: float
    colour: Colour


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything ``render`` needs: the ``(H, W, 3)`` uint8 background, the camera's focal length (pixels; the
    principal point is the image centre), the image direction toward the light, people, occluders, and the
    standard deviation and seed of the sensor grain added last."""

    background: np.ndarray
    focal: float
    light: tuple[float, float]
    people: tuple[Person, ...]
    occluders: tuple[Occluder, ...] = ()
    grain: float = 0.0
    grain_seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.background.shape[1], self.background.shape[0]

    def project(self, points: np.ndarray) -> np.ndarray:
        """Camera-frame points ``(..., 3)`` → pixel coordinates ``(..., 2)``."""
        width, height = self.size
        depth = np.maximum(points[..., 2:], NEAR)
        return self.focal * points[..., :2] / depth + np.array([width / 2, height / 2])
