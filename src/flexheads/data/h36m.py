"""Human3.6M in the VideoPose3D preprocessed format: skeleton, cameras, projection, and the two npz files.

Files (Pavllo et al. 2019, ``data/prepare_data_h36m.py``):

* ``data_3d_h36m.npz``: key ``positions_3d`` = pickled dict ``subject -> sequence -> float32 (T, 32, 3)``,
  world coordinates in metres (z up), 50 fps.
* ``data_2d_h36m_<keypoints>.npz``: key ``positions_2d`` = dict ``subject -> sequence -> [4 x float32 (T, 17, 2)]``
  in pixels, one array per camera in ``CAMERA_IDS`` order; key ``metadata`` = dict with ``num_joints`` (17),
  ``keypoints_symmetry`` (left, right joint lists) and, in detector files, ``layout_name`` (``'h36m'``).

Sequence names are the capture's (``'Walking 1'``, ``'Photo'``, ``'WalkDog 1'``); ``action_label`` maps them
onto the 15 ``ACTIONS``.  Every loader failure is an ``H36MFormatError`` naming the file, the sequence, and what
was expected versus found.

The module is longer than ~400 lines because a hundred of them are the published camera calibration (data, not
code); the rest is the one dataset's skeleton, projection and files, which its callers use together.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexheads.errors import DataError
from flexheads.io import atomic_path

__all__ = [
    "ACTIONS",
    "CAMERA_EXTRINSICS",
    "CAMERA_IDS",
    "CAMERA_INTRINSICS",
    "FILE_3D",
    "FPS",
    "JOINT_NAMES",
    "KEPT_JOINTS",
    "KEYPOINTS_SYMMETRY",
    "PARENTS",
    "TEST_SUBJECTS",
    "TRAIN_SUBJECTS",
    "H36MFormatError",
    "action_label",
    "align_2d_to_3d",
    "camera_to_world",
    "cameras",
    "check_subjects",
    "file_2d",
    "image_coordinates",
    "load_positions_2d",
    "load_positions_3d",
    "normalize_screen_coordinates",
    "project_to_2d",
    "require_user_files",
    "select_joints",
    "world_to_camera",
    "write_positions_2d",
    "write_positions_3d",
]

FPS = 50
FILE_3D = "data_3d_h36m.npz"
NUM_MOCAP_JOINTS = 32
# Indices of the 17 joints kept from the 32 mocap markers (VideoPose3D drops the static/duplicate ones).
KEPT_JOINTS = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
JOINT_NAMES = (
    "Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Neck/Nose", "Head",
    "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)  # fmt: skip
KEYPOINTS_SYMMETRY = ((4, 5, 6, 11, 12, 13), (1, 2, 3, 14, 15, 16))  # (left joints, right joints)
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
ACTIONS = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)  # fmt: skip
# Older exports name two actions differently; VideoPose3D canonicalises them the same way.
_ACTION_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}

CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")
# Published calibration as listed in VideoPose3D common/h36m_dataset.py: pixels; azimuth (deg) is for display only.
CAMERA_INTRINSICS = (
    {"id": "54138969", "center": (512.54150390625, 515.4514770507812),
     "focal_length": (1145.0494384765625, 1143.7811279296875),
     "radial_distortion": (-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043),
     "tangential_distortion": (-0.0009756988729350269, -0.00142447161488235),
     "res_w": 1000, "res_h": 1002, "azimuth": 70},
    {"id": "55011271", "center": (508.8486328125, 508.0649108886719),
     "focal_length": (1149.6756591796875, 1147.5916748046875),
     "radial_distortion": (-0.1942136287689209, 0.2404085397720337, 0.006819975562393665),
     "tangential_distortion": (-0.0016190266469493508, -0.0027408944442868233),
     "res_w": 1000, "res_h": 1000, "azimuth": -70},
    {"id": "58860488", "center": (519.8158569335938, 501.40264892578125),
     "focal_length": (1149.1407470703125, 1148.7989501953125),
     "radial_distortion": (-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427),
     "tangential_distortion": (0.0014843869721516967, -0.0007599993259645998),
     "res_w": 1000, "res_h": 1000, "azimuth": 110},
    {"id": "60457274", "center": (514.9682006835938, 501.88201904296875),
     "focal_length": (1145.5113525390625, 1144.77392578125),
     "radial_distortion": (-0.198384091258049, 0.21832367777824402, -0.008947807364165783),
     "tangential_distortion": (-0.0005872055771760643, -0.0018133620033040643),
     "res_w": 1000, "res_h": 1002, "azimuth": -110},
)  # fmt: skip
# Per subject and camera: orientation quaternion (w, x, y, z), camera-to-world; translation = camera centre, mm.
CAMERA_EXTRINSICS = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}  # fmt: skip


class H36MFormatError(DataError):
    """A Human3.6M npz file is missing or does not match the VideoPose3D layout; the message says where and how."""


def action_label(sequence_name: str) -> str:
    """Map a sequence name to one of the 15 ``ACTIONS``: ``'Walking 1' -> 'Walking'``, ``'TakingPhoto' -> 'Photo'``."""
    base = sequence_name.split(" ")[0]
    label = _ACTION_ALIASES.get(base, base)
    if label not in ACTIONS:
        raise ValueError(f"sequence {sequence_name!r} is not one of the Human3.6M actions {ACTIONS}")
    return label


# --- cameras and projection -------------------------------------------------------------------------------


def cameras(subject: str) -> list[dict[str, Any]]:
    """The 4 calibrated cameras of ``subject``, in ``CAMERA_IDS`` order.

    Returns:
        dicts with ``id`` (str), ``res_w``/``res_h`` (int pixels), float64 arrays ``center`` and ``focal_length``
        (pixels), ``radial_distortion`` (k1, k2, k3), ``tangential_distortion`` (p1, p2), ``orientation``
        (quaternion w, x, y, z; rotates camera axes into world axes) and ``translation`` (camera centre in world
        coordinates, metres).
    """
    if subject not in CAMERA_EXTRINSICS:
        raise ValueError(f"no camera calibration for subject {subject!r}; known: {sorted(CAMERA_EXTRINSICS)}")
    result = []
    for intrinsic, (orientation, translation_mm) in zip(CAMERA_INTRINSICS, CAMERA_EXTRINSICS[subject]):
        camera: dict[str, Any] = {k: v for k, v in intrinsic.items() if k != "azimuth"}
        for key in ("center", "focal_length", "radial_distortion", "tangential_distortion"):
            camera[key] = np.asarray(camera[key], dtype=np.float64)
        camera["orientation"] = np.asarray(orientation, dtype=np.float64)
        camera["translation"] = np.asarray(translation_mm, dtype=np.float64) / 1000.0
        result.append(camera)
    return result


def _rotate(quaternion: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rotate ``points (..., 3)`` by the unit quaternion ``(w, x, y, z)``: ``v + 2 (w u×v + u×(u×v))``."""
    q = np.asarray(quaternion, dtype=np.float64)
    q = q / np.linalg.norm(q)
    w, u = q[0], q[1:]
    uv = np.cross(u, points)
    return points + 2.0 * (w * uv + np.cross(u, uv))


def world_to_camera(points: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """World ``(..., 3)`` metres → camera frame (x right, y down, z along the optical axis): ``R⁻¹(X - t)``."""
    inverse = np.asarray(orientation, dtype=np.float64) * np.array([1.0, -1.0, -1.0, -1.0])
    return _rotate(inverse, np.asarray(points, dtype=np.float64) - translation)


def camera_to_world(points: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera ``(..., 3)`` metres → world coordinates: ``R X + t`` (inverse of ``world_to_camera``)."""
    return _rotate(orientation, np.asarray(points, dtype=np.float64)) + translation


def project_to_2d(points_camera: np.ndarray, camera: Mapping[str, Any]) -> np.ndarray:
    """Project camera-frame points ``(..., 3)`` to pixels ``(..., 2)`` with Human3.6M's distortion model.

    With ``(x, y) = clip(X/Z, Y/Z; -1, 1)`` and ``r² = x² + y²``:
    ``radial = 1 + k1 r² + k2 r⁴ + k3 r⁶``, ``tan = p1 x + p2 y``,
    ``x_d = x (radial + tan) + p1 r²``, ``y_d = y (radial + tan) + p2 r²``, pixels ``= f * (x_d, y_d) + c``.

    This is VideoPose3D's ``project_to_2d`` term for term (its tangential term is not OpenCV's
    ``2 p1 x y + p2 (r² + 2x²)``; we keep it so our 2D ground truth equals the published one), except that it
    returns pixels instead of ``[-1, 1]`` screen units (``image_coordinates`` of its output).  The clip at
    ``|X/Z| <= 1`` (45°, far outside the ~24° half field of view) keeps the polynomial from exploding for points
    beside or behind the camera; such points project to nonsense either way.
    """
    points = np.asarray(points_camera, dtype=np.float64)
    xy = np.clip(points[..., :2] / points[..., 2:], -1.0, 1.0)
    r2 = np.sum(xy**2, axis=-1, keepdims=True)
    k, p = camera["radial_distortion"], camera["tangential_distortion"]
    radial = 1.0 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
    tangential = np.sum(p * xy, axis=-1, keepdims=True)
    distorted = xy * (radial + tangential) + np.asarray(p) * r2
    return camera["focal_length"] * distorted + camera["center"]


def normalize_screen_coordinates(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixels ``(..., 2)`` → screen units: ``x / w * 2 - [1, h / w]`` (x in [-1, 1], aspect ratio kept)."""
    if np.shape(x)[-1] != 2:
        raise ValueError(f"expected (..., 2) coordinates, got shape {np.shape(x)}")
    return np.asarray(x) / w * 2 - np.array([1.0, h / w])


def image_coordinates(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """Screen units ``(..., 2)`` → pixels: ``(x + [1, h / w]) * w / 2``, the inverse of the function above."""
    if np.shape(x)[-1] != 2:
        raise ValueError(f"expected (..., 2) coordinates, got shape {np.shape(x)}")
    return (np.asarray(x) + np.array([1.0, h / w])) * w / 2


def select_joints(positions_32: np.ndarray) -> np.ndarray:
    """``(..., 32, 3)`` mocap markers → ``(..., 17, 3)`` lifting joints (``KEPT_JOINTS``)."""
    if np.ndim(positions_32) < 2 or np.shape(positions_32)[-2] != NUM_MOCAP_JOINTS:
        raise ValueError(f"expected (..., {NUM_MOCAP_JOINTS}, 3) positions, got shape {np.shape(positions_32)}")
    return np.asarray(positions_32)[..., KEPT_JOINTS, :]


# --- files ----------------------------------------------------------------------------------------------


def file_2d(keypoints: str) -> str:
    """File name of the 2D keypoints from source ``keypoints`` (``'gt'``, ``'cpn_ft_h36m_dbb'``, ...)."""
    return f"data_2d_h36m_{keypoints}.npz"


def require_user_files(root: Path, keypoints: str) -> dict[str, Path]:
    """Paths of the user-supplied real dataset under ``root``: ``{'3d': ..., '2d': ...}``.

    Human3.6M is licensed per user and cannot be downloaded by the pipeline, so a missing file raises
    ``DataError`` with the steps to obtain it.
    """
    root = Path(root)
    paths = {"3d": root / FILE_3D, "2d": root / file_2d(keypoints)}
    missing = [path for path in paths.values() if not path.is_file()]
    if missing:
        raise DataError(
            "The real Human3.6M files are missing:\n"
            + "".join(f"  - {path}\n" for path in missing)
            + "Human3.6M is licensed per user and cannot be downloaded by this pipeline. To use it:\n"
            "  1. Register and download the poses at http://vision.imar.ro/human3.6m/ (D3_Positions per subject).\n"
            "  2. Convert them with VideoPose3D (https://github.com/facebookresearch/VideoPose3D, DATASETS.md):\n"
            "     cd data && python prepare_data_h36m.py --from-source-cdf /path/to/h36m\n"
            f"     This writes {FILE_3D} and {file_2d('gt')}.\n"
            "  3. For detected keypoints, download VideoPose3D's CPN detections\n"
            f"     (e.g. {file_2d('cpn_ft_h36m_dbb')}, linked from its DATASETS.md).\n"
            f"  4. Copy {FILE_3D} and {file_2d(keypoints)} to {root}/\n"
            f"  5. In params.yaml set data.pose3d.source: h36m, data.pose3d.h36m_dir: {root} and\n"
            f"     data.pose3d.keypoints: {keypoints} (the part of the 2D file name after data_2d_h36m_)."
        )
    return paths


def _load_dicts(path: Path, keys: Sequence[str]) -> list[dict]:
    """The pickled dicts stored under ``keys`` in the npz file ``path`` (0-d object arrays written by np.savez),
    unpickled by ``_ArrayUnpickler``: a file that names any other function or class is refused, never run."""
    if not path.is_file():
        raise H36MFormatError(f"{path}: file not found (expected a VideoPose3D npz file with keys {list(keys)})")
    try:
        with zipfile.ZipFile(path) as npz:
            found = sorted(name.removesuffix(".npy") for name in npz.namelist())
            values = {key: _read_npy(npz, f"{key}.npy") for key in keys if key in found}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise H36MFormatError(f"{path}: not a readable npz file ({err})") from err
    missing = [key for key in keys if key not in values]
    if missing:
        raise H36MFormatError(f"{path}: expected keys {missing}, found keys {found}")
    for key, value in values.items():
        if value.shape != () or not isinstance(value.item(), dict):
            raise H36MFormatError(f"{path}: key {key!r} must hold a pickled dict, found {value!r:.80}")
    return [values[key].item() for key in keys]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numbers of numpy arrays only; any other global is refused (no code runs)."""

    ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def _read_npy(npz: zipfile.ZipFile, member: str) -> np.ndarray:
    """One ``.npy`` member: numeric arrays as numpy reads them, object arrays through ``_ArrayUnpickler``."""
    with npz.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(f)
        if dtype.hasobject:  # numpy writes an object array as one pickle of the array
            return _ArrayUnpickler(f).load()
    with npz.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _check_sequence(path: Path, where: str, array: Any, joints: int, dims: int) -> None:
    """Raise ``H36MFormatError`` unless ``array`` is a finite float ``(T, joints, dims)`` array with T >= 1."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise H36MFormatError(f"{path}: {where}: expected a float array (T, {joints}, {dims}), found {type(array)}")
    if array.ndim != 3 or array.shape[1:] != (joints, dims) or array.shape[0] == 0:
        raise H36MFormatError(f"{path}: {where}: expected shape (T, {joints}, {dims}), found {array.shape}")
    if not np.all(np.isfinite(array)):
        raise H36MFormatError(f"{path}: {where}: {np.size(array) - np.isfinite(array).sum()} non-finite values")


def _check_subject_dicts(path: Path, positions: Mapping) -> None:
    for subject, sequences in positions.items():
        if not isinstance(sequences, dict):
            raise H36MFormatError(f"{path}: subject {subject!r}: expected a dict of sequences, found {type(sequences)}")


def _check_positions_3d(path: Path, positions: Mapping) -> None:
    _check_subject_dicts(path, positions)
    for subject, sequences in positions.items():
        for name, array in sequences.items():
            _check_sequence(path, f"{subject}/{name}", array, NUM_MOCAP_JOINTS, 3)


def _check_positions_2d(path: Path, positions: Mapping) -> None:
    _check_subject_dicts(path, positions)
    for subject, sequences in positions.items():
        for name, views in sequences.items():
            if not isinstance(views, (list, tuple)) or len(views) != len(CAMERA_IDS):
                found = f"{len(views)} entries" if isinstance(views, (list, tuple)) else type(views)
                raise H36MFormatError(
                    f"{path}: {subject}/{name}: expected a list of {len(CAMERA_IDS)} camera arrays, found {found}"
                )
            for camera_id, array in zip(CAMERA_IDS, views):
                _check_sequence(path, f"{subject}/{name} camera {camera_id}", array, len(KEPT_JOINTS), 2)


def _check_metadata(path: Path, metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise H36MFormatError(f"{path}: key 'metadata' must hold a dict, found {type(metadata)}")
    if metadata.get("num_joints") != len(KEPT_JOINTS):
        found = metadata.get("num_joints")
        raise H36MFormatError(f"{path}: metadata num_joints: expected {len(KEPT_JOINTS)}, found {found!r}")
    if metadata.get("layout_name", "h36m") != "h36m":
        raise H36MFormatError(f"{path}: metadata layout_name: expected 'h36m', found {metadata['layout_name']!r}")
    if "keypoints_symmetry" not in metadata:
        raise H36MFormatError(f"{path}: metadata: expected key 'keypoints_symmetry', found keys {sorted(metadata)}")


def load_positions_3d(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Load and validate ``data_3d_h36m.npz``: ``subject -> sequence -> (T, 32, 3)`` metres, world frame."""
    path = Path(path)
    (positions,) = _load_dicts(path, ["positions_3d"])
    _check_positions_3d(path, positions)
    return positions


def load_positions_2d(path: Path) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict]:
    """Load and validate ``data_2d_h36m_<keypoints>.npz``: ``(subject -> sequence -> 4 x (T, 17, 2) pixels, metadata)``.

    Cameras of one sequence may differ in length (some Human3.6M videos have extra frames); ``align_2d_to_3d``
    trims them to the mocap.
    """
    path = Path(path)
    positions, metadata = _load_dicts(path, ["positions_2d", "metadata"])
    _check_positions_2d(path, positions)
    _check_metadata(path, metadata)
    return positions, metadata


def check_subjects(positions: Mapping[str, Any], subjects: Iterable[str], path: Path) -> None:
    """Raise ``H36MFormatError`` naming each of ``subjects`` that ``positions`` (loaded from ``path``) lacks."""
    missing = [subject for subject in subjects if subject not in positions]
    if missing:
        raise H36MFormatError(f"{path}: missing subjects {missing}; found {sorted(positions)}")


def align_2d_to_3d(
    positions_3d: Mapping[str, Mapping[str, np.ndarray]],
    positions_2d: Mapping[str, Mapping[str, Sequence[np.ndarray]]],
    path_2d: Path,
) -> dict[str, dict[str, list[np.ndarray]]]:
    """The 2D sequences matching every 3D sequence, each camera trimmed to the mocap length.

    Follows VideoPose3D ``run.py``: every 3D subject/sequence must be in the 2D file and every camera must have at
    least as many frames as the mocap (a few Human3.6M videos run longer; detector files keep those frames).  2D
    sequences without 3D ground truth (e.g. S11 'Directions', whose video is corrupt) are dropped.
    """
    aligned: dict[str, dict[str, list[np.ndarray]]] = {}
    for subject, sequences in positions_3d.items():
        if subject not in positions_2d:
            raise H36MFormatError(
                f"{path_2d}: subject {subject!r} of the 3D file is missing; found {sorted(positions_2d)}"
            )
        aligned[subject] = {}
        for name, mocap in sequences.items():
            if name not in positions_2d[subject]:
                raise H36MFormatError(
                    f"{path_2d}: {subject}/{name} of the 3D file is missing; found {sorted(positions_2d[subject])}"
                )
            views = positions_2d[subject][name]
            for camera_id, view in zip(CAMERA_IDS, views):
                if len(view) < len(mocap):
                    raise H36MFormatError(
                        f"{path_2d}: {subject}/{name} camera {camera_id}: expected at least {len(mocap)} frames "
                        f"(the 3D sequence), found {len(view)}"
                    )
            aligned[subject][name] = [view[: len(mocap)] for view in views]
    return aligned


def write_positions_3d(path: Path, positions: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Write ``positions`` as ``data_3d_h36m.npz`` layout (float32, compressed) atomically, exactly at ``path``.

    The data go through a file handle, so numpy does not append ``.npz`` to a name without it.
    """
    positions = {s: {n: np.asarray(a, dtype=np.float32) for n, a in seqs.items()} for s, seqs in positions.items()}
    _check_positions_3d(Path(path), positions)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, positions_3d=positions)
    return Path(path)


def write_positions_2d(
    path: Path, positions_2d: Mapping[str, Mapping[str, Sequence[np.ndarray]]], metadata: Mapping[str, Any]
) -> Path:
    """Write ``positions_2d`` and ``metadata`` in the ``data_2d_h36m_<keypoints>.npz`` layout, atomically."""
    positions = {
        s: {n: [np.asarray(v, dtype=np.float32) for v in views] for n, views in seqs.items()}
        for s, seqs in positions_2d.items()
    }
    _check_positions_2d(Path(path), positions)
    _check_metadata(Path(path), dict(metadata))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, positions_2d=positions, metadata=dict(metadata))
    return Path(path)
