"""Random scenes (``sample_scene``): camera, people, room, clutter, occluders, light and grain.

A pinhole camera at 0.6-2.2 m height, focal length 0.8-1.5 image widths, principal point at the image centre, 6° of
roll at most, pitched to aim at the people.  1..``max_people`` people, each a random frame of a random action
(``motion.generate_sequence``) turned to a random heading, stand at least 0.8 m apart at distances that make them
0.3-1.1 image heights tall, so some are cut by the frame.  Behind them a room traced per pixel through the same
camera: a floor and a (turned) wall with perspective-correct tiles, stripes or grids, a plain band above,
low-frequency colour noise and random flat or shaded clutter shapes.  Random occluding objects (rotated rectangles,
ellipses) stand in front of some people.
"""

from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from flexheads.data.motion import ACTION_NAMES, generate_sequence, sample_subject
from flexheads.data.synthetic_coco.keypoints import coco_keypoints_3d
from flexheads.data.synthetic_coco.scene import Colour, Occluder, Person, Scene
from flexheads.data.synthetic_coco.shapes import draw_geometry, shaded_capsule

_STATURE = 1.75  # metres, to turn a wanted on-screen height into a camera distance
_CLIP_FRAMES = 10
_SKIN = ((255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))
_HAIR = ((20, 17, 15), (59, 38, 27), (110, 72, 45), (200, 160, 100), (150, 150, 150), (120, 50, 30))
_TROUSERS = ((40, 60, 110), (30, 30, 35), (110, 110, 115), (170, 150, 110), (80, 60, 45), (20, 40, 70))


def _camera_rotation(pitch: float, roll: float) -> np.ndarray:
    """World (z up) → camera (x right, y down, z forward) for a camera looking along world +x, pitched down by
    ``pitch`` then rolled by ``roll`` (radians)."""
    base = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    return np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]) @ base


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
            for geometry, tone in shaded_capsule(centre, end, rng.uniform(1.5, 6), colour, light):
                draw_geometry(draw, geometry, tone, 1)
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
