"""A person as shaded 2D shapes in painter's order (``person_shapes``), and the drawing of shapes with PIL.

Each person is a list of shapes (limb capsules with three-tone cylinder shading toward the image light, torso and
pelvis as convex hulls of 3D rings, a shaded head disc with a hair cap and eyes when facing the camera) with
per-person skin, hair, shirt, sleeve, trouser and shoe colours.  A shape's outline is also drawn into a label
buffer, valued ``FIRST_PERSON_LABEL + person * len(PART_NAMES) + part`` (0 is the background, 1 an occluder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from flexheads.data.synthetic_coco.keypoints import FACING, head_sphere, keypoints_and_normals, unit
from flexheads.data.synthetic_coco.scene import NEAR, PART_INDEX, PART_NAMES, Colour, Person, Scene

FIRST_PERSON_LABEL = 2  # label buffer: 0 background, 1 occluder, then (person, part) pairs


# Limb capsules: part → (H36M joint from, joint to, radius in metres before the person's girth factor).
_LIMBS = {
    "left_upper_arm": (11, 12, 0.048), "left_forearm": (12, 13, 0.038), "right_upper_arm": (14, 15, 0.048),
    "right_forearm": (15, 16, 0.038), "left_thigh": (4, 5, 0.075), "left_shin": (5, 6, 0.055),
    "right_thigh": (1, 2, 0.075), "right_shin": (2, 3, 0.055),
}  # fmt: skip


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors spread evenly over the sphere (golden-angle spiral)."""
    z = np.linspace(-1, 1, n)
    angle = np.pi * (3 - np.sqrt(5)) * np.arange(n)
    return np.stack([np.sqrt(1 - z**2) * np.cos(angle), np.sqrt(1 - z**2) * np.sin(angle), z], axis=1)


_SPHERE = _fibonacci_sphere(160)  # head-frame directions (forward, left, up) sampled for the hair cap
_HAIR_AXIS = np.array([-0.45, 0.0, 1.0]) / np.hypot(0.45, 1.0)  # the cap is centred up and back


# A geometry is ("disc", centre, radius), ("capsule", a, b, radius) or ("polygon", points), in 1× pixels.
Geometry = tuple


@dataclass(frozen=True, eq=False)
class Shape:
    key: float  # painter's depth (metres): larger is drawn first
    label: int  # label-buffer value of its outline
    outline: Geometry
    layers: tuple[tuple[Geometry, Colour], ...]


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


def _tone(colour: Colour, factor: float) -> Colour:
    """Darker (< 1) or lighter (> 1, toward white) ``colour``."""
    c = np.asarray(colour, dtype=float)
    c = c * factor if factor <= 1 else c + (factor - 1) * (255 - c)
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _toward_light(direction: np.ndarray, light: np.ndarray) -> np.ndarray:
    """The unit normal of a 2D ``direction`` on the light's side."""
    normal = unit(np.array([-direction[1], direction[0]]))
    return normal if normal @ light >= 0 else -normal


def shaded_capsule(a: np.ndarray, b: np.ndarray, r: float, colour: Colour, light: np.ndarray) -> list:
    """Cylinder shading: dark rim, mid-tone body and a highlight stripe shifted toward the light."""
    side = _toward_light(b - a, light) if np.linalg.norm(b - a) > 1e-6 else light
    return [(("capsule", a, b, r), _tone(colour, 0.62)),
            (("capsule", a + 0.22 * r * side, b + 0.22 * r * side, 0.72 * r), colour),
            (("capsule", a + 0.5 * r * side, b + 0.5 * r * side, 0.28 * r), _tone(colour, 1.3))]  # fmt: skip


def _shaded_disc(c: np.ndarray, r: float, colour: Colour, light: np.ndarray) -> list:
    return [(("disc", c, r), _tone(colour, 0.65)), (("disc", c + 0.2 * r * light, 0.75 * r), colour),
            (("disc", c + 0.5 * r * light, 0.3 * r), _tone(colour, 1.25))]  # fmt: skip


def shaded_polygon(points: np.ndarray, colour: Colour, light: np.ndarray) -> list:
    """Two-tone: a darker outline and a mid-tone copy shrunk toward the centroid and shifted toward the light."""
    centre = points.mean(axis=0)
    shift = 0.04 * float(np.ptp(points, axis=0).min()) * light
    inner = centre + 0.82 * (points - centre) + shift
    return [(("polygon", points), _tone(colour, 0.65)), (("polygon", inner), colour)]


def extent(geometry: Geometry) -> np.ndarray:
    """``(4,)`` x0, y0, x1, y1 of a geometry."""
    kind, *args = geometry
    if kind == "disc":
        return np.concatenate([args[0] - args[1], args[0] + args[1]])
    if kind == "capsule":
        a, b, r = args
        return np.concatenate([np.minimum(a, b) - r, np.maximum(a, b) + r])
    return np.concatenate([args[0].min(axis=0), args[0].max(axis=0)])


def draw_geometry(draw: ImageDraw.ImageDraw, geometry: Geometry, fill: Colour | int, scale: float) -> None:
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
        n = r * unit(np.array([a[1] - b[1], b[0] - a[0]]))
        draw.polygon([tuple(a + n), tuple(b + n), tuple(b - n), tuple(a - n)], fill=fill)


def _rings(levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]) -> np.ndarray:
    """Corner points of horizontal body sections: (centre, left, forward, half width, half depth) → ``(4n, 3)``."""
    return np.array([c + sw * w * l + sd * d * f for c, l, f, w, d in levels for sw in (-1, 1) for sd in (-1, 1)])


def person_shapes(scene: Scene, index: int, person: Person) -> list[Shape]:
    """Every shape of one person with its painter's key: the camera depth of its middle, except that the trunk sits
    4 cm back (limbs level with it hang beside it, not inside), and neck then head come just in front of the nearer
    of trunk and head, so a head is never drawn under its own shirt."""
    j, g, light = person.joints, person.girth, np.asarray(scene.light)
    label = {part: FIRST_PERSON_LABEL + index * len(PART_NAMES) + k for part, k in PART_INDEX.items()}

    def capsule(part: str, a3: np.ndarray, b3: np.ndarray, radius: float, key: float | None = None) -> Shape:
        z = max((a3[2] + b3[2]) / 2, NEAR)
        a, b, r = scene.project(a3), scene.project(b3), max(scene.focal * radius * g / z, 0.6)
        layers = shaded_capsule(a, b, r, person.colours[part], light)
        return Shape(z if key is None else key, label[part], layers[0][0], tuple(layers))

    def hull(part: str, points3: np.ndarray, key: float) -> Shape:
        layers = shaded_polygon(_hull(scene.project(points3)), person.colours[part], light)
        return Shape(key, label[part], layers[0][0], tuple(layers))

    pelvis, spine, thorax = j[0], j[7], j[8]
    up = unit(thorax - pelvis)
    hip_left, shoulder_left = unit(j[4] - j[1]), unit(j[11] - j[14])
    hip_forward, shoulder_forward = unit(np.cross(hip_left, up)), unit(np.cross(shoulder_left, up))
    mid_left, mid_forward = unit(hip_left + shoulder_left), unit(hip_forward + shoulder_forward)
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
    centre, radius, axes = head_sphere(j)
    shapes = [hull("torso", torso, torso_key), hull("pelvis", hips, torso_key - 0.01)]
    shapes += [capsule(part, j[a], j[b], r) for part, (a, b, r) in _LIMBS.items()]
    front = min(trunk_z, centre[2])
    shapes.append(capsule("neck", thorax, j[9], 0.05, key=front - 0.015))
    for side, (elbow, wrist, knee, ankle) in (("left", (12, 13, 5, 6)), ("right", (15, 16, 2, 3))):
        forearm = unit(j[wrist] - j[elbow])
        palm = j[wrist] + 0.05 * forearm
        shapes.append(capsule(f"{side}_hand", palm - 0.03 * forearm, palm + 0.03 * forearm, 0.04, key=palm[2] - 0.01))
        shin = unit(j[ankle] - j[knee])
        toes = unit(hip_forward - (hip_forward @ shin) * shin)
        heel = j[ankle] + 0.03 * shin - 0.03 * toes
        shapes.append(capsule(f"{side}_foot", heel, heel + 0.02 * shin + 0.15 * toes, 0.04))

    # Head: shaded skin disc, the visible part of the hair cap as a hull, eyes while they face the camera.
    c, r = scene.project(centre), scene.focal * radius / max(centre[2], NEAR)
    layers = _shaded_disc(c, max(r, 0.8), person.colours["head"], light)
    directions = _SPHERE @ axes
    surface = centre + radius * directions
    seen = np.einsum("nd,nd->n", directions, surface) < 0  # outward normal against the viewing ray
    cap = seen & (_SPHERE @ _HAIR_AXIS > person.hair)
    if cap.sum() >= 3:
        layers.append((("polygon", _hull(scene.project(surface[cap]))), person.colours["hair"]))
    face, normals = keypoints_and_normals(j)
    for eye in (1, 2):
        if normals[eye] @ unit(face[eye]) < FACING[eye]:
            layers.append((("disc", scene.project(face[eye]), max(0.13 * r, 0.5)), person.colours["eyes"]))
    shapes.append(Shape(front - 0.03, label["head"], layers[0][0], tuple(layers)))
    return shapes
