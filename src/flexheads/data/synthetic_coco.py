"""Synthetic COCO person keypoints: people posed by the 3D motion generator, drawn with PIL and written in the COCO
2017 ``person_keypoints`` format, so the COCO loader and pycocotools are the code path of the embedded default.

Writes, under ``out_dir``: ``images/{train,val}2017/<12-digit image id>.jpg`` and
``annotations/person_keypoints_{train,val}2017.json``.

Scene (``sample_scene``): a pinhole camera at 0.6-2.2 m height, focal length 0.8-1.5 image widths, principal point
at the image centre, 6° of roll at most, pitched to aim at the people.  1..``max_people`` people, each a random
frame of a random action (``motion.generate_sequence``) turned to a random heading, stand at least 0.8 m apart at
distances that make them 0.3-1.1 image heights tall, so some are cut by the frame.  Behind them a room traced per
pixel through the same camera: a floor and a (turned) wall with perspective-correct tiles, stripes or grids, a
plain band above, low-frequency colour noise and random flat or shaded clutter shapes.  Random occluding objects
(rotated rectangles, ellipses) stand in front of some people.

Coordinates: the camera frame is x right, y down, z forward (metres).  Pixel coordinates are continuous with
(0, 0) the top-left corner of the image, so pixel ``(col, row)`` covers ``[col, col + 1) × [row, row + 1)``
(PIL's drawing convention and COCO's bbox convention); a keypoint is in the image iff ``0 <= x < W, 0 <= y < H``.

H36M → COCO keypoints: shoulders, elbows, wrists, hips, knees and ankles are H36M joints 11/14, 12/15, 13/16, 4/1,
5/2, 6/3 (left/right).  Nose, eyes and ears come from a head model: a sphere of radius ``0.8 |j10 - j9|`` (about
9.5 cm) whose top touches the head joint 10.  Its up axis is the neck-to-head bone ``j10 - j9`` tilted forward by
``atan(0.2)`` (that bone's rest lean in ``motion``), its left axis is the normal of the plane of ``j8, j9, j10``
(the head's sagittal plane), signed and, where that plane is degenerate, steadied by the shoulder line ``j11 - j14``.
Facial keypoints sit 0.9 radii out from the centre along fixed directions (nose forward and a little down, eyes
forward ±25° sideways, ears sideways and a little back), i.e. inside the drawn head disc.

Drawing: each person is a list of shapes (limb capsules with three-tone cylinder shading toward the image light,
torso and pelvis as convex hulls of 3D rings, a shaded head disc with a hair cap and eyes when facing the camera)
with per-person skin, hair, shirt, sleeve, trouser and shoe colours.  All shapes of all people and the occluders
are drawn far to near (painter's order by camera depth), at 2× and box-filtered down; a 1× label buffer of the
same shapes records which person part owns each pixel.

Annotation (``annotate``): ``v = 0`` for keypoints outside the image (then ``x = y = 0``); ``v = 2`` when the label
buffer at its pixel shows one of that keypoint's own parts (an elbow: the same-side upper arm or forearm) and, for
nose, eyes and ears, the head surface there faces the camera (``_FACING``); otherwise ``v = 1`` (behind an occluder,
another person, or the person's own trunk, limbs or the back of the head).  ``bbox`` is the box of the person's
whole drawn shapes (occluded parts included, so it holds every labelled keypoint) clipped to the image; ``area`` is
the count of pixels the person shows (there is no segmentation).  ``generate`` skips people with no labelled
keypoint, none visible, or a box side under 8 px, as COCO leaves tiny or hidden people unannotated.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flexheads.data.coco import KEYPOINT_NAMES, SKELETON
from flexheads.data.motion import ACTION_NAMES, generate_sequence, sample_subject
from flexheads.io import atomic_path, empty_output_folder

__all__ = [
    "BACKGROUND",
    "OCCLUDER",
    "PART_NAMES",
    "SPLITS",
    "Occluder",
    "Person",
    "PersonLabel",
    "Rendering",
    "Scene",
    "annotate",
    "coco_keypoints_3d",
    "generate",
    "render",
    "sample_scene",
]

SPLITS = ("train2017", "val2017")
PART_NAMES = (
    "torso", "pelvis", "neck", "head", "left_upper_arm", "left_forearm", "left_hand", "right_upper_arm",
    "right_forearm", "right_hand", "left_thigh", "left_shin", "left_foot", "right_thigh", "right_shin", "right_foot",
)  # fmt: skip
BACKGROUND, OCCLUDER = -1, -2  # ``Rendering.owner`` values of pixels no person shows
_PART = {name: index for index, name in enumerate(PART_NAMES)}
_FIRST_PERSON_LABEL = 2  # label buffer: 0 background, 1 occluder, then (person, part) pairs

# COCO keypoints 5-16 (shoulders ... ankles, left before right) as H36M joints; 0-4 come from the head model.
_BODY_FROM_H36M = (11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3)
# Nose, left/right eye, left/right ear as directions in the head frame (forward, left, up).
_FACE = np.array([[1, 0, -0.25], [0.85, 0.42, 0.12], [0.85, -0.42, 0.12], [-0.1, 1, 0], [-0.1, -1, 0]])
_FACE /= np.linalg.norm(_FACE, axis=1, keepdims=True)
_FACE_DEPTH = 0.9  # keypoint distance from the head centre in radii: inside the drawn disc
_HEAD_TILT = np.arctan(0.2)  # motion's head-top bone leans back by this from the head's up axis
# A face point shows while the cosine between its outward normal and the viewing ray is below these (nose, eyes,
# eyes, ears, ears): the protruding nose and ears show a little past the head's outline, recessed eyes do not.
_FACING = np.array([0.4, 0.0, 0.0, 0.5, 0.5])


def _keypoint_parts() -> np.ndarray:
    """``(17, parts)`` bool: the parts whose pixels show each COCO keypoint (where its limbs meet; shoulders and
    hips also on the trunk's outline, the face on the head)."""
    table = np.zeros((len(KEYPOINT_NAMES), len(PART_NAMES)), dtype=bool)
    for k, name in enumerate(KEYPOINT_NAMES):
        side, _, joint = name.partition("_")
        parts = {
            "shoulder": ("torso", f"{side}_upper_arm"), "elbow": (f"{side}_upper_arm", f"{side}_forearm"),
            "wrist": (f"{side}_forearm", f"{side}_hand"), "hip": ("torso", "pelvis", f"{side}_thigh"),
            "knee": (f"{side}_thigh", f"{side}_shin"), "ankle": (f"{side}_shin", f"{side}_foot"),
        }.get(joint, ("head",))  # fmt: skip
        table[k, [_PART[part] for part in parts]] = True
    return table


_KEYPOINT_PARTS = _keypoint_parts()
# Limb capsules: part → (H36M joint from, joint to, radius in metres before the person's girth factor).
_LIMBS = {
    "left_upper_arm": (11, 12, 0.048), "left_forearm": (12, 13, 0.038), "right_upper_arm": (14, 15, 0.048),
    "right_forearm": (15, 16, 0.038), "left_thigh": (4, 5, 0.075), "left_shin": (5, 6, 0.055),
    "right_thigh": (1, 2, 0.075), "right_shin": (2, 3, 0.055),
}  # fmt: skip
_STATURE = 1.75  # metres, to turn a wanted on-screen height into a camera distance
_SUPERSAMPLE = 2
_CLIP_FRAMES = 10
_NEAR = 0.05  # metres: depths are clamped here before dividing
_SKIN = ((255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))
_HAIR = ((20, 17, 15), (59, 38, 27), (110, 72, 45), (200, 160, 100), (150, 150, 150), (120, 50, 30))
_TROUSERS = ((40, 60, 110), (30, 30, 35), (110, 110, 115), (170, 150, 110), (80, 60, 45), (20, 40, 70))


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors spread evenly over the sphere (golden-angle spiral)."""
    z = np.linspace(-1, 1, n)
    angle = np.pi * (3 - np.sqrt(5)) * np.arange(n)
    return np.stack([np.sqrt(1 - z**2) * np.cos(angle), np.sqrt(1 - z**2) * np.sin(angle), z], axis=1)


_SPHERE = _fibonacci_sphere(160)  # head-frame directions (forward, left, up) sampled for the hair cap
_HAIR_AXIS = np.array([-0.45, 0.0, 1.0]) / np.hypot(0.45, 1.0)  # the cap is centred up and back

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
        depth = np.maximum(points[..., 2:], _NEAR)
        return self.focal * points[..., :2] / depth + np.array([width / 2, height / 2])


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


# --- geometry ----------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _head(joints: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Head sphere of the module docstring: centre ``(3,)``, radius, and axes ``(3, 3)`` rows forward, left, up."""
    bone = joints[10] - joints[9]
    top = _unit(bone)
    shoulders = _unit(joints[11] - joints[14])
    sagittal = np.cross(top, _unit(joints[9] - joints[8]))  # points left while the head is not bent past the neck
    left = (1.0 if sagittal @ shoulders >= 0 else -1.0) * sagittal + 0.1 * shoulders
    left = _unit(left - (left @ top) * top)
    forward0 = np.cross(left, top)
    up = np.cos(_HEAD_TILT) * top + np.sin(_HEAD_TILT) * forward0
    forward = np.cos(_HEAD_TILT) * forward0 - np.sin(_HEAD_TILT) * top
    radius = 0.8 * float(np.linalg.norm(bone))
    return joints[10] - radius * up, radius, np.stack([forward, left, up])


def _keypoints_and_normals(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO keypoints ``(17, 3)`` and the head-surface normal of the 5 face points (zeros for body keypoints)."""
    centre, radius, axes = _head(joints)
    normals = np.zeros((len(KEYPOINT_NAMES), 3))
    normals[:5] = _FACE @ axes
    points = np.concatenate([centre + _FACE_DEPTH * radius * normals[:5], joints[list(_BODY_FROM_H36M)]])
    return points, normals


def coco_keypoints_3d(joints: np.ndarray) -> np.ndarray:
    """The 17 COCO keypoints ``(17, 3)`` of one H36M pose ``(17, 3)`` (any right-handed frame, metres)."""
    return _keypoints_and_normals(joints)[0]


def _camera_rotation(pitch: float, roll: float) -> np.ndarray:
    """World (z up) → camera (x right, y down, z forward) for a camera looking along world +x, pitched down by
    ``pitch`` then rolled by ``roll`` (radians)."""
    base = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    return np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]) @ base


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull ``(m, 2)`` of 2D points, counter-clockwise (Andrew's monotone chain, on floats for speed)."""
    unique = sorted(set(map(tuple, np.round(points, 4).tolist())))
    if len(unique) < 3:
        return np.array(unique)

    def half(sequence: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for x, y in sequence:
            while len(chain) >= 2 and (
                (chain[-1][0] - chain[-2][0]) * (y - chain[-2][1]) - (chain[-1][1] - chain[-2][1]) * (x - chain[-2][0])
                <= 0
            ):
                chain.pop()
            chain.append((x, y))
        return chain[:-1]

    return np.array(half(unique) + half(unique[::-1]))


# --- shapes ------------------------------------------------------------------------------------------------

# A geometry is ("disc", centre, radius), ("capsule", a, b, radius) or ("polygon", points), in 1× pixels.
_Geometry = tuple


@dataclass(frozen=True, eq=False)
class _Shape:
    key: float  # painter's depth (metres): larger is drawn first
    label: int  # label-buffer value of its outline
    outline: _Geometry
    layers: tuple[tuple[_Geometry, Colour], ...]


def _tone(colour: Colour, factor: float) -> Colour:
    """Darker (< 1) or lighter (> 1, toward white) ``colour``."""
    c = np.asarray(colour, dtype=float)
    c = c * factor if factor <= 1 else c + (factor - 1) * (255 - c)
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _toward_light(direction: np.ndarray, light: np.ndarray) -> np.ndarray:
    """The unit normal of a 2D ``direction`` on the light's side."""
    normal = _unit(np.array([-direction[1], direction[0]]))
    return normal if normal @ light >= 0 else -normal


def _shaded_capsule(a: np.ndarray, b: np.ndarray, r: float, colour: Colour, light: np.ndarray) -> list:
    """Cylinder shading: dark rim, mid-tone body and a highlight stripe shifted toward the light."""
    side = _toward_light(b - a, light) if np.linalg.norm(b - a) > 1e-6 else light
    return [(("capsule", a, b, r), _tone(colour, 0.62)),
            (("capsule", a + 0.22 * r * side, b + 0.22 * r * side, 0.72 * r), colour),
            (("capsule", a + 0.5 * r * side, b + 0.5 * r * side, 0.28 * r), _tone(colour, 1.3))]  # fmt: skip


def _shaded_disc(c: np.ndarray, r: float, colour: Colour, light: np.ndarray) -> list:
    return [(("disc", c, r), _tone(colour, 0.65)), (("disc", c + 0.2 * r * light, 0.75 * r), colour),
            (("disc", c + 0.5 * r * light, 0.3 * r), _tone(colour, 1.25))]  # fmt: skip


def _shaded_polygon(points: np.ndarray, colour: Colour, light: np.ndarray) -> list:
    """Two-tone: a darker outline and a mid-tone copy shrunk toward the centroid and shifted toward the light."""
    centre = points.mean(axis=0)
    shift = 0.04 * float(np.ptp(points, axis=0).min()) * light
    inner = centre + 0.82 * (points - centre) + shift
    return [(("polygon", points), _tone(colour, 0.65)), (("polygon", inner), colour)]


def _extent(geometry: _Geometry) -> np.ndarray:
    """``(4,)`` x0, y0, x1, y1 of a geometry."""
    kind, *args = geometry
    if kind == "disc":
        return np.concatenate([args[0] - args[1], args[0] + args[1]])
    if kind == "capsule":
        a, b, r = args
        return np.concatenate([np.minimum(a, b) - r, np.maximum(a, b) + r])
    return np.concatenate([args[0].min(axis=0), args[0].max(axis=0)])


def _draw(draw: ImageDraw.ImageDraw, geometry: _Geometry, fill: Colour | int, scale: float) -> None:
    kind, *args = geometry
    if kind == "polygon":
        draw.polygon([tuple(p) for p in args[0] * scale], fill=fill)
        return
    ends = args[:-1]
    r = args[-1] * scale
    for c in ends:
        x, y = c * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    if kind == "capsule" and np.linalg.norm(ends[1] - ends[0]) > 1e-6:
        a, b = ends[0] * scale, ends[1] * scale
        n = r * _unit(np.array([a[1] - b[1], b[0] - a[0]]))
        draw.polygon([tuple(a + n), tuple(b + n), tuple(b - n), tuple(a - n)], fill=fill)


def _rings(levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]) -> np.ndarray:
    """Corner points of horizontal body sections: (centre, left, forward, half width, half depth) → ``(4n, 3)``."""
    return np.array([c + sw * w * l + sd * d * f for c, l, f, w, d in levels for sw in (-1, 1) for sd in (-1, 1)])


def _person_shapes(scene: Scene, index: int, person: Person) -> list[_Shape]:
    """Every shape of one person with its painter's key: the camera depth of its middle, except that the trunk sits
    4 cm back (limbs level with it hang beside it, not inside), and neck then head come just in front of the nearer
    of trunk and head, so a head is never drawn under its own shirt."""
    j, g, light = person.joints, person.girth, np.asarray(scene.light)
    label = {part: _FIRST_PERSON_LABEL + index * len(PART_NAMES) + k for part, k in _PART.items()}

    def capsule(part: str, a3: np.ndarray, b3: np.ndarray, radius: float, key: float | None = None) -> _Shape:
        z = max((a3[2] + b3[2]) / 2, _NEAR)
        a, b, r = scene.project(a3), scene.project(b3), max(scene.focal * radius * g / z, 0.6)
        layers = _shaded_capsule(a, b, r, person.colours[part], light)
        return _Shape(z if key is None else key, label[part], layers[0][0], tuple(layers))

    def hull(part: str, points3: np.ndarray, key: float) -> _Shape:
        layers = _shaded_polygon(_hull(scene.project(points3)), person.colours[part], light)
        return _Shape(key, label[part], layers[0][0], tuple(layers))

    pelvis, spine, thorax = j[0], j[7], j[8]
    up = _unit(thorax - pelvis)
    hip_left, shoulder_left = _unit(j[4] - j[1]), _unit(j[11] - j[14])
    hip_forward, shoulder_forward = _unit(np.cross(hip_left, up)), _unit(np.cross(shoulder_left, up))
    mid_left, mid_forward = _unit(hip_left + shoulder_left), _unit(hip_forward + shoulder_forward)
    hip_half, shoulder_half = np.linalg.norm(j[4] - j[1]) / 2, np.linalg.norm(j[11] - j[14]) / 2
    torso = _rings([
        ((j[11] + j[14]) / 2, shoulder_left, shoulder_forward, shoulder_half + 0.01 * g, 0.08 * g),
        (thorax + 0.4 * (spine - thorax), shoulder_left, shoulder_forward, 0.14 * g, 0.11 * g),
        (spine, mid_left, mid_forward, 0.12 * g, 0.1 * g),
        (pelvis, hip_left, hip_forward, hip_half + 0.04 * g, 0.09 * g),
    ])  # fmt: skip
    belt = pelvis + 0.45 * (spine - pelvis)
    hips = _rings([
        (belt, mid_left, mid_forward, 0.135 * g, 0.1 * g),
        (pelvis, hip_left, hip_forward, hip_half + 0.05 * g, 0.095 * g),
        (pelvis - 0.06 * up, hip_left, hip_forward, hip_half + 0.03 * g, 0.08 * g),
    ])  # fmt: skip
    trunk_z = float(np.mean([pelvis[2], spine[2], thorax[2]]))
    torso_key = trunk_z + 0.04
    centre, radius, axes = _head(j)
    shapes = [hull("torso", torso, torso_key), hull("pelvis", hips, torso_key - 0.01)]
    shapes += [capsule(part, j[a], j[b], r) for part, (a, b, r) in _LIMBS.items()]
    front = min(trunk_z, centre[2])
    shapes.append(capsule("neck", thorax, j[9], 0.05, key=front - 0.015))
    for side, (elbow, wrist, knee, ankle) in (("left", (12, 13, 5, 6)), ("right", (15, 16, 2, 3))):
        forearm = _unit(j[wrist] - j[elbow])
        palm = j[wrist] + 0.05 * forearm
        shapes.append(capsule(f"{side}_hand", palm - 0.03 * forearm, palm + 0.03 * forearm, 0.04, key=palm[2] - 0.01))
        shin = _unit(j[ankle] - j[knee])
        toes = _unit(hip_forward - (hip_forward @ shin) * shin)
        heel = j[ankle] + 0.03 * shin - 0.03 * toes
        shapes.append(capsule(f"{side}_foot", heel, heel + 0.02 * shin + 0.15 * toes, 0.04))

    # Head: shaded skin disc, the visible part of the hair cap as a hull, eyes while they face the camera.
    c, r = scene.project(centre), scene.focal * radius / max(centre[2], _NEAR)
    layers = _shaded_disc(c, max(r, 0.8), person.colours["head"], light)
    directions = _SPHERE @ axes
    surface = centre + radius * directions
    seen = np.einsum("nd,nd->n", directions, surface) < 0  # outward normal against the viewing ray
    cap = seen & (_SPHERE @ _HAIR_AXIS > person.hair)
    if cap.sum() >= 3:
        layers.append((("polygon", _hull(scene.project(surface[cap]))), person.colours["hair"]))
    face, normals = _keypoints_and_normals(j)
    for eye in (1, 2):
        if normals[eye] @ _unit(face[eye]) < _FACING[eye]:
            layers.append((("disc", scene.project(face[eye]), max(0.13 * r, 0.5)), person.colours["eyes"]))
    shapes.append(_Shape(front - 0.03, label["head"], layers[0][0], tuple(layers)))
    return shapes


# --- rendering and labels ----------------------------------------------------------------------------------


def render(scene: Scene) -> Rendering:
    """Draw ``scene``: shapes far to near at ``_SUPERSAMPLE``× then box-filtered, outlines into a 1× label buffer."""
    width, height = scene.size
    canvas = Image.fromarray(scene.background).resize((width * _SUPERSAMPLE, height * _SUPERSAMPLE), Image.NEAREST)
    labels = Image.new("I", (width, height), 0)
    paint, mark = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
    light = np.asarray(scene.light)
    shapes: list[_Shape] = []
    bounds = np.zeros((len(scene.people), 4))
    for index, person in enumerate(scene.people):
        own = _person_shapes(scene, index, person)
        extents = np.array([_extent(shape.outline) for shape in own])
        bounds[index] = [*extents[:, :2].min(axis=0), *extents[:, 2:].max(axis=0)]
        shapes += own
    for occluder in scene.occluders:
        layers = _shaded_polygon(np.asarray(occluder.polygon, dtype=float), occluder.colour, light)
        shapes.append(_Shape(occluder.depth, 1, layers[0][0], tuple(layers)))
    for shape in sorted(shapes, key=lambda s: -s.key):  # stable: equal depths keep their build order
        for geometry, colour in shape.layers:
            _draw(paint, geometry, colour, _SUPERSAMPLE)
        _draw(mark, shape.outline, shape.label, 1)
    image = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
    if scene.grain > 0:  # luminance grain: one draw per pixel for all three channels
        image += scene.grain * np.random.default_rng(scene.grain_seed).standard_normal((height, width, 1), np.float32)
    label = np.asarray(labels, dtype=np.int64)
    person, part = np.divmod(label - _FIRST_PERSON_LABEL, len(PART_NAMES))
    is_person = label >= _FIRST_PERSON_LABEL
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
        points, normals = _keypoints_and_normals(person.joints)
        xy = scene.project(points)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        col = np.clip(np.floor(xy[:, 0]), 0, width - 1).astype(int)
        row = np.clip(np.floor(xy[:, 1]), 0, height - 1).astype(int)
        own_part = _KEYPOINT_PARTS[np.arange(len(points)), rendering.part[row, col]]
        shows = (rendering.owner[row, col] == index) & own_part
        cosines = np.einsum("kd,kd->k", normals, points / np.linalg.norm(points, axis=1, keepdims=True))
        facing = np.concatenate([cosines[:5] < _FACING, np.ones(len(points) - 5, dtype=bool)])
        visibility = np.where(inside, np.where(shows & facing, 2, 1), 0)
        keypoints = np.concatenate([np.where(inside[:, None], xy, 0.0), visibility[:, None]], axis=1)
        x0, y0, x1, y1 = rendering.bounds[index]
        x0, x1 = np.clip([x0, x1], 0, width)
        y0, y1 = np.clip([y0, y1], 0, height)
        area = float(np.count_nonzero(rendering.owner == index))
        result.append(PersonLabel(keypoints=keypoints, bbox=(x0, y0, x1 - x0, y1 - y0), area=area))
    return result


# --- scene sampling ----------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> Colour:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(int(round(255 * c)) for c in rgb)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> Colour:
    return tuple(int(v) for v in np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0, 255))  # type: ignore


def _clothes(rng: np.random.Generator) -> dict[str, Colour]:
    """Skin and hair from natural ranges; shirt any colour; trousers mostly denim, black, grey, khaki or brown;
    half the people in short sleeves, some in shorts."""
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 12)
    shirt = _random_colour(rng, (0.1, 0.9), (0.25, 0.95))
    trousers = (_jitter(rng, _TROUSERS[rng.integers(len(_TROUSERS))], 15) if rng.random() < 0.7
                else _random_colour(rng, (0.1, 0.7), (0.15, 0.8)))  # fmt: skip
    sleeves = shirt if rng.random() < 0.5 else skin
    shins = skin if rng.random() < 0.15 else trousers
    shoes = _random_colour(rng, (0.0, 0.5), (0.05, 0.9))
    colours = {"torso": shirt, "pelvis": trousers, "neck": skin, "head": skin,
               "hair": _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 10), "eyes": (35, 25, 25)}  # fmt: skip
    for side in ("left", "right"):
        colours |= {f"{side}_upper_arm": shirt, f"{side}_forearm": sleeves, f"{side}_hand": skin,
                    f"{side}_thigh": trousers, f"{side}_shin": shins, f"{side}_foot": shoes}  # fmt: skip
    return colours


def _posed_joints(rng: np.random.Generator, floor_xy: np.ndarray) -> np.ndarray:
    """A random frame of a random action by a random subject, turned to a random heading, at ``floor_xy``."""
    clip = generate_sequence(sample_subject(rng), ACTION_NAMES[rng.integers(len(ACTION_NAMES))], _CLIP_FRAMES, rng)
    pose = clip[rng.integers(_CLIP_FRAMES)]
    pose[:, :2] -= pose[0, :2]
    heading = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(heading), np.sin(heading)
    pose[:, :2] = pose[:, :2] @ np.array([[c, s], [-s, c]]) + floor_xy
    return pose


def _pattern(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """A surface pattern in [-1, 1] over surface coordinates ``a, b`` (metres): checker, stripes, tile grid or none,
    faded where a pixel's ``footprint`` (metres) exceeds a third of a tile (it would alias)."""
    kind, tile = rng.integers(4), rng.uniform(0.15, 1.0)
    if kind == 0:
        value = np.sign(np.sin(np.pi * a / tile) * np.sin(np.pi * b / tile))
    elif kind == 1:
        value = np.sin(2 * np.pi * a / tile)
    elif kind == 2:
        value = -((np.mod(a / tile, 1) < 0.06) | (np.mod(b / tile, 1) < 0.06)).astype(float)
    else:
        return np.zeros_like(a)
    return value * np.clip(1 - 3 * footprint / tile, 0, 1)


def _room(rng: np.random.Generator, size: tuple[int, int], focal: float, rotation: np.ndarray,
          camera_height: float, wall_distance: float) -> np.ndarray:  # fmt: skip
    """Background ``(H, W, 3)`` uint8: floor, a wall turned up to ±40°, the band above, seen through the camera."""
    width, height = size
    u = ((np.arange(width) + 0.5 - width / 2) / focal)[None, :]
    v = ((np.arange(height) + 0.5 - height / 2) / focal)[:, None]

    def along(direction: np.ndarray) -> np.ndarray:
        """``(H, W)`` dot products of each pixel's world ray (camera z = 1) with a world ``direction``."""
        coefficients = rotation @ direction
        return u * coefficients[0] + v * coefficients[1] + coefficients[2]

    yaw = rng.uniform(-0.7, 0.7)
    ray_x, ray_y, ray_z = along(np.array([1.0, 0, 0])), along(np.array([0, 1.0, 0])), along(np.array([0, 0, 1.0]))
    toward_wall = along(np.array([np.cos(yaw), np.sin(yaw), 0.0]))
    t_wall = wall_distance / np.maximum(toward_wall, 1e-6)
    t_floor = camera_height / np.maximum(-ray_z, 1e-6)
    floor = (ray_z < 0) & (t_floor < t_wall)
    wall_z = camera_height + t_wall * ray_z
    wall = ~floor & (toward_wall > 0) & (wall_z < rng.uniform(2.4, 3.5))
    wall_s = t_wall * along(np.array([-np.sin(yaw), np.cos(yaw), 0.0]))  # metres along the wall
    shade = np.ones((height, width))
    shade[floor] = 1 + rng.uniform(0.05, 0.3) * _pattern(
        rng, (t_floor * ray_x)[floor], (t_floor * ray_y)[floor], t_floor[floor] / focal)
    shade[wall] = (1 + rng.uniform(0.05, 0.3) * _pattern(rng, wall_s[wall], wall_z[wall], t_wall[wall] / focal)) * (
        1 - 0.05 * np.clip(wall_z[wall], 0, 3))  # walls dim a little upward
    above = np.array(_random_colour(rng, (0.0, 0.3), (0.4, 1.0)), dtype=float)  # the band above the wall
    floor_colour = np.array(_random_colour(rng, (0.0, 0.5), (0.2, 0.8)), dtype=float)
    wall_colour = np.array(_random_colour(rng, (0.0, 0.4), (0.3, 0.95)), dtype=float)
    image = np.where(floor[..., None], floor_colour, np.where(wall[..., None], wall_colour, above)) * shade[..., None]
    smooth = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
    image += (np.asarray(smooth, dtype=float) - 127.5) * rng.uniform(0.05, 0.25)
    return np.clip(image, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, background: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Draw 3-14 random flat shapes and shaded poles (limb-like distractors) onto ``background``."""
    height, width = background.shape[:2]
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(3, 15)):
        colour = _random_colour(rng, (0.0, 1.0), (0.1, 1.0))
        centre = rng.uniform(0, 1, 2) * (width, height)
        extent = rng.uniform(0.02, 0.25) * width
        kind = rng.integers(4)
        if kind == 0:
            corners = centre + rng.uniform(-1, 1, (2, 2)) * extent
            draw.rectangle([*corners.min(axis=0), *corners.max(axis=0)], fill=colour)
        elif kind == 1:
            draw.polygon([tuple(p) for p in centre + rng.uniform(-1, 1, (rng.integers(3, 7), 2)) * extent], fill=colour)
        elif kind == 2:
            end = centre + rng.uniform(-1, 1, 2) * 2 * extent
            for geometry, tone in _shaded_capsule(centre, end, rng.uniform(1.5, 6), colour, light):
                _draw(draw, geometry, tone, 1)
        else:
            draw.ellipse([*(centre - extent), *(centre + rng.uniform(0.3, 1, 2) * extent)], fill=colour)
    return np.asarray(canvas)


def _occluders(rng: np.random.Generator, scene: Scene) -> tuple[Occluder, ...]:
    """0-2 rectangles or ellipses, each over a random keypoint of a random person, 0.3-1 m in front of them."""
    result = []
    for _ in range(rng.choice(3, p=[0.5, 0.35, 0.15])):
        person = scene.people[rng.integers(len(scene.people))]
        xy = scene.project(coco_keypoints_3d(person.joints))
        person_height = float(np.ptp(xy[:, 1]))
        centre = xy[rng.integers(len(xy))] + rng.normal(0, 0.08 * person_height, 2)
        half = rng.uniform(0.06, 0.2, 2) * person_height + 2
        if rng.random() < 0.5:
            outline = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        else:
            angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            outline = np.stack([np.cos(angles), np.sin(angles)], axis=1) * half
        turn = rng.uniform(-0.5, 0.5)
        c, s = np.cos(turn), np.sin(turn)
        polygon = centre + outline @ np.array([[c, s], [-s, c]])
        depth = max(person.joints[0, 2] - rng.uniform(0.3, 1.0), 0.5)
        result.append(Occluder(polygon=polygon, depth=depth, colour=_random_colour(rng, (0.0, 0.9), (0.1, 1.0))))
    return tuple(result)


def sample_scene(rng: np.random.Generator, image_size: tuple[int, int] = (320, 240), max_people: int = 3) -> Scene:
    """A random scene (camera, people, room, occluders, light, grain) as described in the module docstring."""
    width, height = image_size
    focal = width * rng.uniform(0.8, 1.5)
    # On-screen standing height log-uniform in [0.3, 1.1] image heights: distant figures to ones cut by the frame.
    screen_heights = height * np.exp(rng.uniform(np.log(0.3), np.log(1.1), rng.integers(1, max_people + 1)))
    distances = focal * _STATURE / screen_heights
    camera_height = rng.uniform(0.6, 2.2)
    pitch = np.arctan2(camera_height - 0.9, np.median(distances)) + np.deg2rad(rng.normal(0, 3))
    rotation = _camera_rotation(pitch, np.deg2rad(rng.uniform(-6, 6)))
    placed: list[np.ndarray] = []
    people = []
    for distance in distances:
        for _ in range(10):  # lateral position for an image column in [5%, 95%]; keep people 0.8 m apart
            floor_xy = np.array([distance, -(rng.uniform(0.05, 0.95) - 0.5) * width * distance / focal])
            if all(np.linalg.norm(floor_xy - other) > 0.8 for other in placed):
                placed.append(floor_xy)
                world = _posed_joints(rng, floor_xy)
                camera = (world - np.array([0.0, 0.0, camera_height])) @ rotation.T
                hair = 2.0 if rng.random() < 0.1 else rng.uniform(-0.15, 0.15)
                people.append(Person(camera, _clothes(rng), girth=rng.uniform(0.85, 1.15), hair=hair))
                break
    angle = rng.uniform(np.deg2rad(200), np.deg2rad(340))  # light from above (image y points down)
    light = (float(np.cos(angle)), float(np.sin(angle)))
    background = _room(rng, image_size, focal, rotation, camera_height, distances.max() + rng.uniform(1, 6))
    background = _clutter(rng, background, np.asarray(light))
    scene = Scene(background=background, focal=focal, light=light, people=tuple(people),
                  grain=rng.uniform(1, 4), grain_seed=int(rng.integers(2**63)))  # fmt: skip
    return replace(scene, occluders=_occluders(rng, scene))


# --- COCO files --------------------------------------------------------------------------------------------


def _coco_annotation(label: PersonLabel) -> dict | None:
    """The COCO annotation fields of ``label`` (without ids), or None for people COCO would leave unannotated."""
    visibility = label.keypoints[:, 2]
    if not (visibility == 2).any() or min(label.bbox[2:]) < 8:
        return None
    keypoints = [round(float(x), 2) if i % 3 < 2 else int(x) for i, x in enumerate(label.keypoints.ravel())]
    return {"segmentation": [], "num_keypoints": int(np.count_nonzero(visibility)), "area": label.area,
            "iscrowd": 0, "keypoints": keypoints, "bbox": [round(float(v), 2) for v in label.bbox],
            "category_id": 1}  # fmt: skip


def generate(
    out_dir: Path,
    *,
    n_train_images: int = 160,
    n_val_images: int = 40,
    image_size: tuple[int, int] = (320, 240),
    max_people: int = 3,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` (layout in the module docstring), after deleting everything an
    earlier run left there: an interrupted or other-seed run's files cannot mix with this one's, and a folder that
    is a link (e.g. ``images/train2017`` to a real COCO download) is unlinked, never written through.

    Image ``i`` of a split draws from its own generator seeded by ``(seed, split, i)``, so its pixels do not depend
    on the other split's size; image and annotation ids count up from 1 over train then val, as in one COCO release.

    Returns:
        ``{'train_images': dir, 'train_annotations': json, 'val_images': dir, 'val_annotations': json}``: the
        ``image_dir`` and ``annotation_json`` arguments of ``coco.load_person_keypoints``.
    """
    if n_train_images < 0 or n_val_images < 0 or max_people < 1 or seed < 0:
        raise ValueError(f"need image counts >= 0, max_people >= 1, seed >= 0; got {n_train_images}, "
                         f"{n_val_images}, {max_people}, {seed}")  # fmt: skip
    if min(image_size) < 16 or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"need an image size of at least 16x16 and jpeg_quality in [1, 100]; got {image_size}, "
                         f"{jpeg_quality}")  # fmt: skip
    out_dir = empty_output_folder(out_dir)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                "skeleton": [list(pair) for pair in SKELETON]}  # fmt: skip
    paths: dict[str, Path] = {}
    image_id = annotation_id = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train_images, n_val_images))):
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id += 1
            scene = sample_scene(np.random.default_rng([seed, split_index, index]), image_size, max_people)
            rendering = render(scene)
            file_name = f"{image_id:012d}.jpg"
            with atomic_path(image_dir / file_name) as tmp:
                rendering.image.save(tmp, format="JPEG", quality=jpeg_quality)
            images.append({"id": image_id, "file_name": file_name, "width": image_size[0], "height": image_size[1]})
            for label in annotate(scene, rendering):
                record = _coco_annotation(label)
                if record is not None:
                    annotation_id += 1
                    annotations.append({**record, "image_id": image_id, "id": annotation_id})
        dataset = {
            "info": {"description": f"flexheads synthetic COCO person keypoints, seed {seed}", "version": "1.0",
                     "year": 2017, "contributor": "flexheads.data.synthetic_coco"},
            "licenses": [], "images": images, "annotations": annotations, "categories": [category],
        }  # fmt: skip
        json_path = out_dir / "annotations" / f"person_keypoints_{split}.json"
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(dataset, separators=(",", ":")))
        paths[f"{split[:-4]}_images"], paths[f"{split[:-4]}_annotations"] = image_dir, json_path
    return paths
