"""Seeded human motion on the 17-joint Human3.6M skeleton: subjects, joint angles, forward kinematics, actions.

World frame as in the Human3.6M mocap: metres, z up, floor at ``z = 0``.  Every bone has a rest direction in its
parent bone's frame (pelvis frame: x forward, y left, z up; limbs hang down) and a rotation relative to that
parent; a joint's position is ``p_j = p_parent + G_j @ offset_j`` with ``G_j = G_parent @ L_j``.  Rotations are
named degrees of freedom in degrees, clipped to ``DOF_LIMITS`` (knees and elbows bend one way only), so every
pose is anatomically possible whatever an action asks for.  The pelvis height is not animated: it is set each
frame so the lower foot stands on the floor, which lowers the pelvis by itself when the hips and knees flex
(sitting) and makes it bob during gait.

Motions are sums of sinusoids and raised-cosine pulses (smooth, no jumps) with per-sequence tempo, amplitude,
phase, heading and position drawn from the caller's generator, plus a few degrees of slow noise on every degree
of freedom, so no two sequences are alike.

The module is longer than ~400 lines because it holds the recipes of all 15 actions (short functions over shared
private primitives, listed in one table); adding an action means adding one recipe here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flexheads.data.h36m import PARENTS

__all__ = [
    "ACTION_NAMES",
    "BONE_MEANS",
    "DOF_LIMITS",
    "SubjectModel",
    "forward_kinematics",
    "generate_sequence",
    "sample_subject",
]

# Mean bone lengths (m) of an H36M-like adult, indexed by the child joint of the bone (0: the pelvis, no bone).
BONE_MEANS = np.array(
    [0.0, 0.13, 0.45, 0.45, 0.13, 0.45, 0.45, 0.23, 0.25, 0.11, 0.12, 0.15, 0.28, 0.25, 0.15, 0.28, 0.25]
)
# Bone types: left and right bones share one jitter, as the mocap skeletons are symmetric.
_BONE_TYPE = np.array([0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 8, 9, 10])
# Rest direction of each bone in its parent's frame: hips and shoulders sideways, legs and arms hanging, spine
# up, the nose a little forward of the thorax and the head top a little behind the nose.
_REST = np.array(
    [[0, 0, 0], [0, -1, -0.1], [0, 0, -1], [0, 0, -1], [0, 1, -0.1], [0, 0, -1], [0, 0, -1], [0, 0, 1], [0, 0, 1],
     [0.3, 0, 1], [-0.2, 0, 1], [0, 1, -0.15], [0, 0, -1], [0, 0, -1], [0, -1, -0.15], [0, 0, -1], [0, 0, -1]],
    dtype=np.float64,
)  # fmt: skip
_REST[1:] /= np.linalg.norm(_REST[1:], axis=1, keepdims=True)
_FEET = (3, 6)

# Degrees of freedom (degrees) and their anatomical ranges.  Flexion is positive forward for hips, shoulders and
# the spine; knee flexion moves the foot backward and elbow flexion the hand forward, both only one way.
_PAIRED_LIMITS = {
    "hip_flex": (-30, 125), "hip_abd": (-15, 45), "hip_rot": (-30, 40), "knee": (0, 150),
    "clavicle": (-10, 25), "shoulder_flex": (-50, 170), "shoulder_abd": (-10, 160), "shoulder_rot": (-60, 80),
    "elbow": (0, 150),
}  # fmt: skip
DOF_LIMITS: dict[str, tuple[float, float]] = {
    "pelvis_tilt": (-20, 30), "pelvis_roll": (-15, 15),
    "spine_flex": (-25, 70), "spine_bend": (-25, 25), "spine_twist": (-40, 40), "chest_flex": (-15, 30),
    "neck_flex": (-40, 50), "neck_turn": (-70, 70), "head_flex": (-30, 30),
    **{f"{dof}_{side}": limits for side in "lr" for dof, limits in _PAIRED_LIMITS.items()},
}  # fmt: skip
# Standing rest posture: knees and elbows slightly bent, arms slightly away from the body.
_STANDING = {"hip_flex": 3, "hip_abd": 3, "knee": 5, "shoulder_abd": 8, "elbow": 12, "neck_flex": 5}


@dataclass(frozen=True, eq=False)
class SubjectModel:
    """Body proportions of one subject.

    Attributes:
        bone_lengths: ``(17,)`` metres, the bone from ``PARENTS[j]`` to joint ``j`` (0 for the pelvis).
        ankle_height: height of the ankle ("foot") joint above the floor when the foot stands flat, metres.
    """

    bone_lengths: np.ndarray
    ankle_height: float

    def rest_offsets(self) -> np.ndarray:
        """``(17, 3)`` bone vectors in their parents' frames: rest direction × length."""
        return _REST * self.bone_lengths[:, None]


def sample_subject(rng: np.random.Generator) -> SubjectModel:
    """A subject scaled by ``U(0.9, 1.1)`` with each bone type (left = right) jittered by ``U(0.95, 1.05)``."""
    scale = rng.uniform(0.9, 1.1)
    jitter = rng.uniform(0.95, 1.05, size=_BONE_TYPE.max() + 1)
    return SubjectModel(bone_lengths=BONE_MEANS * scale * jitter[_BONE_TYPE], ankle_height=0.08 * scale)


# --- kinematics --------------------------------------------------------------------------------------------


def _rotation(axis: int, degrees: np.ndarray) -> np.ndarray:
    """``(T, 3, 3)`` right-handed rotations by ``degrees (T,)`` about the x (0), y (1) or z (2) axis."""
    radians = np.deg2rad(degrees)
    c, s = np.cos(radians), np.sin(radians)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rotation = np.zeros((len(radians), 3, 3))
    rotation[:, axis, axis] = 1.0
    rotation[:, i, i], rotation[:, i, j], rotation[:, j, i], rotation[:, j, j] = c, -s, s, c
    return rotation


def _limb(angles: dict[str, np.ndarray], joint: str, side: str) -> np.ndarray:
    """Ball joint of a hanging limb: ``R_y(-flex) R_x(±abd) R_z(∓rot)``, abduction outward, rotation inward."""
    sign = 1.0 if side == "l" else -1.0  # the left side is +y
    return (
        _rotation(1, -angles[f"{joint}_flex_{side}"])
        @ _rotation(0, sign * angles[f"{joint}_abd_{side}"])
        @ _rotation(2, -sign * angles[f"{joint}_rot_{side}"])
    )


def _bone_rotations(angles: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Rotation ``L_j (T, 3, 3)`` of every bone relative to its parent; ``L_0`` is the pelvis tilt and roll."""
    identity = _rotation(0, np.zeros_like(angles["knee_l"]))
    rotations = [_rotation(1, angles["pelvis_tilt"]) @ _rotation(0, angles["pelvis_roll"])]
    for side in "rl":  # joints 1-3 are the right leg, 4-6 the left (Human3.6M order)
        rotations += [identity, _limb(angles, "hip", side), _rotation(1, angles[f"knee_{side}"])]
    rotations += [
        _rotation(1, angles["spine_flex"]) @ _rotation(0, angles["spine_bend"]) @ _rotation(2, angles["spine_twist"]),
        _rotation(1, angles["chest_flex"]),
        _rotation(1, angles["neck_flex"]) @ _rotation(2, angles["neck_turn"]),
        _rotation(1, angles["head_flex"]),
    ]
    for side, sign in (("l", 1.0), ("r", -1.0)):  # joints 11-13 are the left arm, 14-16 the right
        rotations += [
            _rotation(0, sign * angles[f"clavicle_{side}"]),
            _limb(angles, "shoulder", side),
            _rotation(1, -angles[f"elbow_{side}"]),
        ]
    return rotations


def forward_kinematics(
    subject: SubjectModel, angles: dict[str, np.ndarray], heading: np.ndarray, root_xy: np.ndarray
) -> np.ndarray:
    """World joint positions ``(T, 17, 3)`` metres from joint angles.

    Args:
        angles: every key of ``DOF_LIMITS`` → ``(T,)`` degrees (clipped to the limits here).
        heading: ``(T,)`` radians, the pelvis forward axis's angle from world +x about +z.
        root_xy: ``(T, 2)`` pelvis position on the floor plane, metres.
    Returns:
        positions with the pelvis height chosen per frame so that the lower ankle (a soft minimum over both feet,
        2 cm temperature, which keeps the height smooth when the feet swap) sits ``ankle_height`` above the floor.
    """
    angles = {name: np.clip(angles[name], lo, hi) for name, (lo, hi) in DOF_LIMITS.items()}
    local = _bone_rotations(angles)
    offsets = subject.rest_offsets()
    frames = len(heading)
    rotations = [_rotation(2, np.rad2deg(heading)) @ local[0]]
    positions = np.zeros((frames, len(PARENTS), 3))
    for joint in range(1, len(PARENTS)):
        parent = PARENTS[joint]
        rotations.append(rotations[parent] @ local[joint])
        positions[:, joint] = positions[:, parent] + rotations[joint] @ offsets[joint]
    temperature = 0.02
    feet_z = positions[:, _FEET, 2]
    lowest = -temperature * np.logaddexp(-feet_z[:, 0] / temperature, -feet_z[:, 1] / temperature)
    positions[..., :2] += root_xy[:, None, :]
    positions[..., 2] += (subject.ankle_height - lowest)[:, None]
    return positions


# --- motion primitives -------------------------------------------------------------------------------------


class _Style:
    """Per-sequence randomness shared by all actions: the generator, a tempo and an amplitude factor."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.tempo = rng.uniform(0.85, 1.15)
        self.amp = rng.uniform(0.8, 1.2)

    def phase(self) -> float:
        return self.rng.uniform(0, 2 * np.pi)

    def side(self) -> str:
        return "lr"[self.rng.integers(2)]


def _other(side: str) -> str:
    return "r" if side == "l" else "l"


def _standing(frames: int) -> dict[str, np.ndarray]:
    """Every degree of freedom at the standing rest posture."""
    angles = {name: np.zeros(frames) for name in DOF_LIMITS}
    for dof, value in _STANDING.items():
        for name in (dof, f"{dof}_l", f"{dof}_r"):
            if name in angles:
                angles[name] += value
    return angles


def _noise(t: np.ndarray, style: _Style, amplitude: float, max_hz: float = 0.5) -> np.ndarray:
    """Slow smooth noise: 3 sinusoids of random frequency in [0.05, max_hz] Hz and phase, peak ≤ ``amplitude``."""
    hz = style.rng.uniform(0.05, max_hz, size=3)
    phases = style.rng.uniform(0, 2 * np.pi, size=3)
    return amplitude / 3 * np.sin(2 * np.pi * hz * t[:, None] + phases).sum(axis=1)


def _pulse(t: np.ndarray, period: float, phase: float, sharpness: float = 1.0) -> np.ndarray:
    """Smooth periodic bump in [0, 1]: ``((1 - cos(2πt/period + phase)) / 2) ** sharpness`` (sharper = briefer)."""
    return ((1 - np.cos(2 * np.pi * t / period + phase)) / 2) ** sharpness


def _in_place(t: np.ndarray, style: _Style, turn_deg: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Heading and floor position of a subject staying near one spot within 0.6 m of the capture centre."""
    radius, angle = 0.6 * np.sqrt(style.rng.uniform()), style.phase()
    heading = style.phase() + np.deg2rad(_noise(t, style, turn_deg, max_hz=0.2))
    sway = np.stack([_noise(t, style, 0.04, max_hz=0.3), _noise(t, style, 0.04, max_hz=0.3)], axis=1)
    return heading, radius * np.array([np.cos(angle), np.sin(angle)]) + sway


def _loop(t: np.ndarray, style: _Style, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """Heading and position walking at ``speed`` m/s around a circle (radius 0.8-1.3 m) near the capture centre,
    as Human3.6M subjects walk loops inside the camera views."""
    radius = style.rng.uniform(0.8, 1.3)
    centre = style.rng.uniform(-0.25, 0.25, size=2)
    direction = style.rng.choice([-1.0, 1.0])
    angle = style.phase() + direction * speed * t / radius
    position = centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return angle + direction * np.pi / 2, position


def _gait(angles: dict[str, np.ndarray], t: np.ndarray, style: _Style, cadence: float, arm_swing: float) -> None:
    """Add a walking cycle at ``cadence`` strides/s: hip flexion ±20°, knee flexion peaking at ~60° in swing,
    arms swinging against the opposite leg, trunk counter-rotation."""
    phi = 2 * np.pi * cadence * t + style.phase()
    for side, shift in (("l", 0.0), ("r", np.pi)):
        psi = phi + shift
        angles[f"hip_flex_{side}"] += 6 + 20 * style.amp * np.sin(psi)
        angles[f"knee_{side}"] += 50 * style.amp * ((1 + np.cos(psi)) / 2) ** 3 + 10 * _pulse(psi, 2 * np.pi, 1.1, 4)
        angles[f"shoulder_flex_{_other(side)}"] += 18 * arm_swing * style.amp * np.sin(psi)
        angles[f"elbow_{_other(side)}"] += 8 * arm_swing * (1 + np.sin(psi))
    angles["spine_twist"] += 6 * style.amp * np.sin(phi)
    angles["pelvis_roll"] += 3 * np.sin(2 * phi)


def _weight_shift(angles: dict[str, np.ndarray], t: np.ndarray, style: _Style, amplitude: float) -> None:
    """Add a slow sideways shift of weight from one leg to the other (pelvis roll, hip ab/adduction, free knee)."""
    shift = np.sin(2 * np.pi * t * style.rng.uniform(0.08, 0.2) * style.tempo + style.phase())
    angles["pelvis_roll"] += amplitude * shift
    angles["hip_abd_l"] -= amplitude * shift
    angles["hip_abd_r"] += amplitude * shift
    angles["knee_l"] += 2 * amplitude * np.clip(shift, 0, None)
    angles["knee_r"] += 2 * amplitude * np.clip(-shift, 0, None)


def _seated(angles: dict[str, np.ndarray], t: np.ndarray, style: _Style) -> None:
    """Sit on a chair: hips and knees at ~90° so the thighs are level and the shins upright; hands on the thighs."""
    for side in "lr":
        angles[f"hip_flex_{side}"] += 85 + _noise(t, style, 8)
        angles[f"knee_{side}"] += 85 + _noise(t, style, 10)
        angles[f"hip_abd_{side}"] += 6
        angles[f"shoulder_flex_{side}"] += 25
        angles[f"elbow_{side}"] += 45
    angles["spine_flex"] += 10 + _noise(t, style, 10)


# Arm postures (degrees), fitted so the wrist lands where named on the mean skeleton.
_HAND_AT_MOUTH = {"shoulder_flex": 80, "shoulder_abd": 5, "shoulder_rot": 40, "elbow": 145}  # ~13 cm from nose
_HANDS_AT_EYES = {"shoulder_flex": 80, "shoulder_abd": 15, "shoulder_rot": 35, "elbow": 110}  # 22 cm before face
_HAND_ON_HIP = {"shoulder_flex": -20, "shoulder_abd": 50, "shoulder_rot": 60, "elbow": 100}  # elbow out sideways


def _arm_toward(angles: dict[str, np.ndarray], side: str, posture: dict[str, float], amount: np.ndarray) -> None:
    """Move the ``side`` arm from its current angles toward ``posture`` by ``amount`` in [0, 1]."""
    for dof, target in posture.items():
        name = f"{dof}_{side}"
        angles[name] = angles[name] + amount * (target - angles[name])


# --- actions -----------------------------------------------------------------------------------------------

_Motion = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]  # angles, heading, root_xy


def _walking(t: np.ndarray, style: _Style) -> _Motion:
    """Walking loops at ~1.2 m/s with full arm swing."""
    angles = _standing(len(t))
    cadence = 0.9 * style.tempo
    _gait(angles, t, style, cadence, arm_swing=1.0)
    return angles, *_loop(t, style, speed=1.35 * cadence * style.amp)


def _walk_dog(t: np.ndarray, style: _Style) -> _Motion:
    """Slower walking, one arm held forward on a tugging leash, trunk leaning slightly forward."""
    angles = _standing(len(t))
    cadence, leash = 0.8 * style.tempo, style.side()
    _gait(angles, t, style, cadence, arm_swing=0.5)
    angles[f"shoulder_flex_{leash}"] += 35 + _noise(t, style, 12, max_hz=1.0)
    angles[f"elbow_{leash}"] += 25
    angles["spine_flex"] += 8
    return angles, *_loop(t, style, speed=1.3 * cadence * style.amp)


def _walk_together(t: np.ndarray, style: _Style) -> _Motion:
    """Slower walking beside a companion: reduced arm swing, head turned toward them."""
    angles = _standing(len(t))
    cadence = 0.8 * style.tempo
    _gait(angles, t, style, cadence, arm_swing=0.6)
    angles["neck_turn"] += style.rng.choice([-1, 1]) * (20 + _noise(t, style, 10))
    return angles, *_loop(t, style, speed=1.3 * cadence * style.amp)


def _sitting(t: np.ndarray, style: _Style) -> _Motion:
    """Seated on a chair, one hand gesturing now and then, looking around."""
    angles = _standing(len(t))
    _seated(angles, t, style)
    gesturing = style.side()
    angles[f"shoulder_flex_{gesturing}"] += 20 * style.amp * _pulse(t, 4 / style.tempo, style.phase())
    angles[f"elbow_{gesturing}"] += 30 * style.amp * _pulse(t, 4 / style.tempo, style.phase())
    angles["neck_turn"] += _noise(t, style, 25)
    return angles, *_in_place(t, style)


def _sitting_down(t: np.ndarray, style: _Style) -> _Motion:
    """Cycles of sitting down (to the floor: hips ~105°, knees ~120°) and standing up, leaning forward between."""
    angles = _standing(len(t))
    down = _pulse(t, style.rng.uniform(5, 8) / style.tempo, style.phase())
    transit = 4 * down * (1 - down)  # 1 half-way down, where the trunk leans forward for balance
    for side in "lr":
        angles[f"hip_flex_{side}"] += 100 * down
        angles[f"knee_{side}"] += 115 * down
        angles[f"shoulder_flex_{side}"] += 40 * transit + 15 * down
        angles[f"elbow_{side}"] += 30 * down
    angles["spine_flex"] += 30 * style.amp * transit + 10 * down
    return angles, *_in_place(t, style, turn_deg=10)


def _eating(t: np.ndarray, style: _Style) -> _Motion:
    """Seated at a table, bringing one hand to the mouth every few seconds; the other forearm rests forward."""
    angles = _standing(len(t))
    _seated(angles, t, style)
    hand = style.side()
    _arm_toward(angles, hand, _HAND_AT_MOUTH, _pulse(t, style.rng.uniform(3, 5) / style.tempo, style.phase(), 2))
    angles[f"shoulder_flex_{_other(hand)}"] += 15
    angles[f"elbow_{_other(hand)}"] += 35
    angles["spine_flex"] += 8
    return angles, *_in_place(t, style, turn_deg=8)


def _phoning(t: np.ndarray, style: _Style) -> _Motion:
    """Standing, one hand held at the ear throughout, shifting weight and turning slowly."""
    angles = _standing(len(t))
    _arm_toward(angles, style.side(), _HAND_AT_MOUTH, 0.95 + _noise(t, style, 0.05))
    _weight_shift(angles, t, style, 4)
    angles["neck_flex"] += _noise(t, style, 10)
    return angles, *_in_place(t, style, turn_deg=40)


def _smoking(t: np.ndarray, style: _Style) -> _Motion:
    """Standing, the cigarette hand going to the mouth every 4-6 s and held there briefly."""
    angles = _standing(len(t))
    puff = _pulse(t, style.rng.uniform(4, 6) / style.tempo, style.phase(), 3)
    _arm_toward(angles, style.side(), _HAND_AT_MOUTH, puff)
    _weight_shift(angles, t, style, 4)
    return angles, *_in_place(t, style)


def _directions(t: np.ndarray, style: _Style) -> _Motion:
    """Pointing out directions: each arm in turn raised forward-sideways, the head following it."""
    angles = _standing(len(t))
    period = style.rng.uniform(3, 5) / style.tempo
    phase = style.phase()
    for side, offset in (("l", 0.0), ("r", np.pi)):
        point = style.amp * _pulse(t, period, phase + offset, 2)
        angles[f"shoulder_flex_{side}"] += 75 * point
        angles[f"shoulder_abd_{side}"] += 25 * point
        angles[f"elbow_{side}"] += 15 * point
        angles["neck_turn"] += (30 if side == "l" else -30) * point
    _weight_shift(angles, t, style, 3)
    return angles, *_in_place(t, style, turn_deg=30)


def _discussion(t: np.ndarray, style: _Style) -> _Motion:
    """Talking with both hands: forearms up in front, gesturing at ~1 Hz; trunk and head turning."""
    angles = _standing(len(t))
    for side in "lr":
        gesture = np.sin(2 * np.pi * style.rng.uniform(0.6, 1.0) * style.tempo * t + style.phase())
        angles[f"shoulder_flex_{side}"] += 25 + 15 * style.amp * gesture
        angles[f"shoulder_rot_{side}"] += 20
        angles[f"elbow_{side}"] += 70 + 20 * style.amp * gesture
    angles["spine_twist"] += _noise(t, style, 15)
    angles["neck_turn"] += _noise(t, style, 30)
    _weight_shift(angles, t, style, 3)
    return angles, *_in_place(t, style, turn_deg=25)


def _greeting(t: np.ndarray, style: _Style) -> _Motion:
    """Bouts of waving (upper arm out to the side, forearm up, elbow swinging at ~2 Hz) and a slight bow."""
    angles = _standing(len(t))
    hand = style.side()
    bout = _pulse(t, style.rng.uniform(4, 6) / style.tempo, style.phase(), 2)
    wave = np.sin(2 * np.pi * 2.0 * style.tempo * t + style.phase())
    angles[f"shoulder_abd_{hand}"] += 80 * bout
    angles[f"shoulder_flex_{hand}"] += 90 * bout
    angles[f"elbow_{hand}"] += bout * (80 + 25 * style.amp * wave)
    angles["spine_flex"] += 15 * _pulse(t, style.rng.uniform(4, 6) / style.tempo, style.phase(), 2)
    return angles, *_in_place(t, style, turn_deg=30)


def _photo(t: np.ndarray, style: _Style) -> _Motion:
    """Holding a camera before the face with both hands, lowering it between shots, turning to the scene."""
    angles = _standing(len(t))
    up = 1 - 0.4 * _pulse(t, style.rng.uniform(4, 7) / style.tempo, style.phase(), 3)
    for side in "lr":
        _arm_toward(angles, side, _HANDS_AT_EYES, up)
    angles["neck_flex"] += 5
    angles["spine_twist"] += _noise(t, style, 20)
    return angles, *_in_place(t, style, turn_deg=40)


def _posing(t: np.ndarray, style: _Style) -> _Motion:
    """Near-static poses: hands on the hips, now and then one arm raised high; weight on one leg."""
    angles = _standing(len(t))
    raised = style.side()
    high = _pulse(t, style.rng.uniform(5, 8) / style.tempo, style.phase(), 2)
    _arm_toward(angles, _other(raised), _HAND_ON_HIP, np.ones_like(t))
    _arm_toward(angles, raised, _HAND_ON_HIP, 1 - high)
    angles[f"shoulder_flex_{raised}"] += 150 * high
    _weight_shift(angles, t, style, 6)
    return angles, *_in_place(t, style, turn_deg=10)


def _waiting(t: np.ndarray, style: _Style) -> _Motion:
    """Standing around: weight shifts, head looking about, hands clasped in front now and then."""
    angles = _standing(len(t))
    clasp = _pulse(t, style.rng.uniform(6, 10) / style.tempo, style.phase(), 2)
    for side in "lr":
        angles[f"shoulder_rot_{side}"] += 35 * clasp
        angles[f"elbow_{side}"] += 50 * clasp
    _weight_shift(angles, t, style, 6)
    angles["neck_turn"] += _noise(t, style, 40, max_hz=0.3)
    return angles, *_in_place(t, style, turn_deg=20)


def _purchases(t: np.ndarray, style: _Style) -> _Motion:
    """Reaching down and forward as if taking items from a shelf, bending at the hips and knees."""
    angles = _standing(len(t))
    reach = style.amp * _pulse(t, style.rng.uniform(3, 5) / style.tempo, style.phase())
    angles["spine_flex"] += 40 * reach
    angles["neck_flex"] += 15 * reach
    for side in "lr":
        angles[f"hip_flex_{side}"] += 25 * reach
        angles[f"knee_{side}"] += 20 * reach
        angles[f"shoulder_flex_{side}"] += 50 * reach + _noise(t, style, 8)
        angles[f"elbow_{side}"] += 10 * reach
    return angles, *_in_place(t, style, turn_deg=35)


_ACTION_MOTIONS: dict[str, Callable[[np.ndarray, _Style], _Motion]] = {
    "Directions": _directions, "Discussion": _discussion, "Eating": _eating, "Greeting": _greeting,
    "Phoning": _phoning, "Photo": _photo, "Posing": _posing, "Purchases": _purchases, "Sitting": _sitting,
    "SittingDown": _sitting_down, "Smoking": _smoking, "Waiting": _waiting, "WalkDog": _walk_dog,
    "Walking": _walking, "WalkTogether": _walk_together,
}  # fmt: skip
ACTION_NAMES = tuple(_ACTION_MOTIONS)


def generate_sequence(
    subject: SubjectModel, action: str, n_frames: int, rng: np.random.Generator, fps: float = 50
) -> np.ndarray:
    """One sequence of ``action`` (one of ``ACTION_NAMES``) by ``subject``: ``(n_frames, 17, 3)`` world metres.

    All randomness (tempo, amplitude, phases, heading, position, 2° noise on every degree of freedom) comes from
    ``rng``, so a seed fixes the sequence bit for bit.
    """
    if action not in _ACTION_MOTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTION_NAMES}")
    t = np.arange(n_frames) / fps
    style = _Style(rng)
    angles, heading, root_xy = _ACTION_MOTIONS[action](t, style)
    for name in angles:
        angles[name] = angles[name] + _noise(t, style, 2.0)
    return forward_kinematics(subject, angles, heading, root_xy)
