"""Drawing a scene (``render``) and labelling its people from the drawing (``annotate``).

All shapes of all people and the occluders are drawn far to near (painter's order by camera depth), at 2× and
box-filtered down; a 1× label buffer of the same shapes records which person part owns each pixel.

Annotation: ``v = 0`` for keypoints outside the image (then ``x = y = 0``); ``v = 2`` when the label buffer at its
pixel shows one of that keypoint's own parts (an elbow: the same-side upper arm or forearm) and, for nose, eyes and
ears, the head surface there faces the camera (``keypoints.FACING``); otherwise ``v = 1`` (behind an occluder,
another person, or the person's own trunk, limbs or the back of the head).  ``bbox`` is the box of the person's
whole drawn shapes (occluded parts included, so it holds every labelled keypoint) clipped to the image; ``area`` is
the count of pixels the person shows (there is no segmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from flexheads.data.synthetic_coco.keypoints import FACING, KEYPOINT_PARTS, keypoints_and_normals
from flexheads.data.synthetic_coco.scene import PART_NAMES, Scene
from flexheads.data.synthetic_coco.shapes import (
    FIRST_PERSON_LABEL,
    Shape,
    draw_geometry,
    extent,
    person_shapes,
    shaded_polygon,
)

BACKGROUND, OCCLUDER = -1, -2  # ``Rendering.owner`` values of pixels no person shows
_SUPERSAMPLE = 2


@dataclass(frozen=True, eq=False)
class Rendering:
    """A drawn scene: the RGB ``image``; per pixel the ``owner`` (person index, ``BACKGROUND`` or ``OCCLUDER``) and
    ``part`` (index into ``PART_NAMES``, -1 where no person shows); ``bounds`` ``(people, 4)`` = x0, y0, x1, y1 of
    each person's whole drawn shapes, before occlusion and clipping."""

    image: Image.Image
    owner: np.ndarray
    part: np.ndarray
    bounds: np.ndarray


@dataclass(frozen=True, eq=False)
class PersonLabel:
    """COCO labels of one person: ``keypoints`` ``(17, 3)`` = x, y, v; ``bbox`` = x, y, w, h; ``area`` pixels."""

    keypoints: np.ndarray
    bbox: tuple[float, float, float, float]
    area: float


def render(scene: Scene) -> Rendering:
    """Draw ``scene``: shapes far to near at ``_SUPERSAMPLE``× then box-filtered, outlines into a 1× label buffer."""
    width, height = scene.size
    canvas = Image.fromarray(scene.background).resize((width * _SUPERSAMPLE, height * _SUPERSAMPLE), Image.NEAREST)
    labels = Image.new("I", (width, height), 0)
    paint, mark = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
    light = np.asarray(scene.light)
    shapes: list[Shape] = []
    bounds = np.zeros((len(scene.people), 4))
    for index, person in enumerate(scene.people):
        own = person_shapes(scene, index, person)
        extents = np.array([extent(shape.outline) for shape in own])
        bounds[index] = [*extents[:, :2].min(axis=0), *extents[:, 2:].max(axis=0)]
        shapes += own
    for occluder in scene.occluders:
        layers = shaded_polygon(np.asarray(occluder.polygon, dtype=float), occluder.colour, light)
        shapes.append(Shape(occluder.depth, 1, layers[0][0], tuple(layers)))
    for shape in sorted(shapes, key=lambda s: -s.key):  # stable: equal depths keep their build order
        for geometry, colour in shape.layers:
            draw_geometry(paint, geometry, colour, _SUPERSAMPLE)
        draw_geometry(mark, shape.outline, shape.label, 1)
    image = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
    if scene.grain > 0:  # luminance grain: one draw per pixel for all three channels
        image += scene.grain * np.random.default_rng(scene.grain_seed).standard_normal((height, width, 1), np.float32)
    label = np.asarray(labels, dtype=np.int64)
    person, part = np.divmod(label - FIRST_PERSON_LABEL, len(PART_NAMES))
    is_person = label >= FIRST_PERSON_LABEL
    owner = np.where(is_person, person, np.where(label == 1, OCCLUDER, BACKGROUND)).astype(np.int16)
    return Rendering(
        image=Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)),
        owner=owner, part=np.where(is_person, part, -1).astype(np.int8), bounds=bounds,
    )  # fmt: skip


def annotate(scene: Scene, rendering: Rendering) -> list[PersonLabel]:
    """COCO labels of every person of ``scene`` (in order) from its ``rendering``; see the module docstring."""
    width, height = scene.size
    result = []
    for index, person in enumerate(scene.people):
        points, normals = keypoints_and_normals(person.joints)
        xy = scene.project(points)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        col = np.clip(np.floor(xy[:, 0]), 0, width - 1).astype(int)
        row = np.clip(np.floor(xy[:, 1]), 0, height - 1).astype(int)
        own_part = KEYPOINT_PARTS[np.arange(len(points)), rendering.part[row, col]]
        shows = (rendering.owner[row, col] == index) & own_part
        cosines = np.einsum("kd,kd->k", normals, points / np.linalg.norm(points, axis=1, keepdims=True))
        facing = np.concatenate([cosines[:5] < FACING, np.ones(len(points) - 5, dtype=bool)])
        visibility = np.where(inside, np.where(shows & facing, 2, 1), 0)
        keypoints = np.concatenate([np.where(inside[:, None], xy, 0.0), visibility[:, None]], axis=1)
        x0, y0, x1, y1 = rendering.bounds[index]
        x0, x1 = np.clip([x0, x1], 0, width)
        y0, y1 = np.clip([y0, y1], 0, height)
        area = float(np.count_nonzero(rendering.owner == index))
        result.append(PersonLabel(keypoints=keypoints, bbox=(x0, y0, x1 - x0, y1 - y0), area=area))
    return result
