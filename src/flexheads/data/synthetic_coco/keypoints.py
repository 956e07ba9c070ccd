"""The 17 COCO keypoints of a posed person and the rules for when one shows: the parts that own it and, for the face,
how far the head surface there may turn from the camera.

H36M → COCO keypoints: shoulders, elbows, wrists, hips, knees and ankles are H36M joints 11/14, 12/15, 13/16, 4/1,
5/2, 6/3 (left/right).  Nose, eyes and ears come from a head model: a sphere of radius ``0.8 |j10 - j9|`` (about
9.5 cm) whose top touches the head joint 10.  Its up axis is the neck-to-head bone ``j10 - j9`` tilted forward by
``atan(0.2)`` (that bone's rest lean in ``motion``), its left axis is the normal of the plane of ``j8, j9, j10``
(the head's sagittal plane), signed and, where that plane is degenerate, steadied by the shoulder line ``j11 - j14``.
Facial keypoints sit 0.9 radii out from the centre along fixed directions (nose forward and a little down, eyes
forward ±25° sideways, ears sideways and a little back), i.e. inside the drawn head disc.
"""

from __future__ import annotations

import numpy as np

from flexheads.data.coco import KEYPOINT_NAMES
from flexheads.data.synthetic_coco.scene import PART_INDEX, PART_NAMES

# COCO keypoints 5-16 (shoulders ... ankles, left before right) as H36M joints; 0-4 come from the head model.
_BODY_FROM_H36M = (11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3)
# Nose, left/right eye, left/right ear as directions in the head frame (forward, left, up).
_FACE = np.array([[1, 0, -0.25], [0.85, 0.42, 0.12], [0.85, -0.42, 0.12], [-0.1, 1, 0], [-0.1, -1, 0]])
_FACE /= np.linalg.norm(_FACE, axis=1, keepdims=True)
_FACE_DEPTH = 0.9  # keypoint distance from the head centre in radii: inside the drawn disc
_HEAD_TILT = np.arctan(0.2)  # motion's head-top bone leans back by this from the head's up axis
# A face point shows while the cosine between its outward normal and the viewing ray is below these (nose, eyes,
# eyes, ears, ears): the protruding nose and ears show a little past the head's outline, recessed eyes do not.
FACING = np.array([0.4, 0.0, 0.0, 0.5, 0.5])


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
        table[k, [PART_INDEX[part] for part in parts]] = True
    return table


KEYPOINT_PARTS = _keypoint_parts()


def unit(v: np.ndarray) -> np.ndarray:
    """``v / max(|v|, 1e-9)``: ``v`` at unit length, a zero vector left at zero."""
    return v / max(float(np.linalg.norm(v)), 1e-9)


def head_sphere(joints: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Head sphere of the module docstring: centre ``(3,)``, radius, and axes ``(3, 3)`` rows forward, left, up."""
    bone = joints[10] - joints[9]
    top = unit(bone)
    shoulders = unit(joints[11] - joints[14])
    sagittal = np.cross(top, unit(joints[9] - joints[8]))  # points left while the head is not bent past the neck
    left = (1.0 if sagittal @ shoulders >= 0 else -1.0) * sagittal + 0.1 * shoulders
    left = unit(left - (left @ top) * top)
    forward0 = np.cross(left, top)
    up = np.cos(_HEAD_TILT) * top + np.sin(_HEAD_TILT) * forward0
    forward = np.cos(_HEAD_TILT) * forward0 - np.sin(_HEAD_TILT) * top
    radius = 0.8 * float(np.linalg.norm(bone))
    return joints[10] - radius * up, radius, np.stack([forward, left, up])


def keypoints_and_normals(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO keypoints ``(17, 3)`` and the head-surface normal of the 5 face points (zeros for body keypoints)."""
    centre, radius, axes = head_sphere(joints)
    normals = np.zeros((len(KEYPOINT_NAMES), 3))
    normals[:5] = _FACE @ axes
    points = np.concatenate([centre + _FACE_DEPTH * radius * normals[:5], joints[list(_BODY_FROM_H36M)]])
    return points, normals


def coco_keypoints_3d(joints: np.ndarray) -> np.ndarray:
    """The 17 COCO keypoints ``(17, 3)`` of one H36M pose ``(17, 3)`` (any right-handed frame, metres)."""
    return keypoints_and_normals(joints)[0]
