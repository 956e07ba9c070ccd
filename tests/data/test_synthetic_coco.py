"""The synthetic COCO set reads like COCO, its keypoints sit on the drawn people, visibility follows what was drawn
(frame, occluders, other people, the back of the head), and a seed fixes every byte."""

from __future__ import annotations

import colorsys
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from flexheads.data import coco, synthetic_coco
from flexheads.data.motion import ACTION_NAMES, generate_sequence, sample_subject
from flexheads.data.synthetic_coco import OCCLUDER, PART_NAMES, Occluder, Person, Scene, annotate, render

SEED, N_TRAIN, N_VAL = 3, 10, 5
KNEES_AND_ELBOWS = {
    "left_elbow": ("left_upper_arm", "left_forearm"), "right_elbow": ("right_upper_arm", "right_forearm"),
    "left_knee": ("left_thigh", "left_shin"), "right_knee": ("right_thigh", "right_shin"),
}  # fmt: skip
# The drawn parts each body keypoint belongs to: the joint sits where these meet (shoulders and hips also on the
# trunk's outline, which may be drawn over the limb's end).
OWN_PARTS = {
    **KNEES_AND_ELBOWS,
    "left_shoulder": ("left_upper_arm", "torso"), "right_shoulder": ("right_upper_arm", "torso"),
    "left_wrist": ("left_forearm", "left_hand"), "right_wrist": ("right_forearm", "right_hand"),
    "left_hip": ("left_thigh", "pelvis", "torso"), "right_hip": ("right_thigh", "pelvis", "torso"),
    "left_ankle": ("left_shin", "left_foot"), "right_ankle": ("right_shin", "right_foot"),
}  # fmt: skip
K = {name: k for k, name in enumerate(coco.KEYPOINT_NAMES)}
SHADES = (0.62, 0.65, 1.0, 1.25, 1.3)  # the drawing's dark rims, mid tones and highlights (> 1: toward white)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synthetic_coco")
    return synthetic_coco.generate(out, n_train_images=N_TRAIN, n_val_images=N_VAL, seed=SEED)


def _annotations(path: Path) -> list[dict]:
    return json.loads(path.read_text())["annotations"]


def _tones(colours: list[tuple[int, int, int]]) -> np.ndarray:
    """``(n, 3)`` every shade the drawing gives these colours."""
    base = np.array(colours, dtype=float)
    return np.concatenate([base * f if f <= 1 else base + (f - 1) * (255 - base) for f in SHADES])


def _sampled(index: int) -> Scene:
    return synthetic_coco.sample_scene(np.random.default_rng([17, 0, index]))


def _posed(facing: float) -> Scene:
    """One walking person 3.5 m in front of a level camera 1.2 m high, the body turned so its forward points at world
    angle ``facing`` (π: toward the camera, 0: away, π/2: to the image left, showing the person's left side)."""
    rng = np.random.default_rng(0)
    world = generate_sequence(sample_subject(rng), "Walking", 1, rng)[0]
    world[:, :2] -= world[0, :2]
    forward = np.cross(world[4] - world[1], [0.0, 0.0, 1.0])  # H36M 4 = left hip, 1 = right hip; z up
    turn = facing - np.arctan2(forward[1], forward[0])
    c, s = np.cos(turn), np.sin(turn)
    world[:, :2] = world[:, :2] @ np.array([[c, s], [-s, c]]) + [3.5, 0.0]
    camera = np.stack([-world[:, 1], 1.2 - world[:, 2], world[:, 0]], axis=1)  # camera at the origin looking +x
    colours = {name: (200, 60, 60) for name in PART_NAMES} | {"hair": (30, 20, 10), "eyes": (0, 0, 0)}
    person = Person(joints=camera, colours=colours)
    return Scene(background=np.full((240, 320, 3), 128, np.uint8), focal=300.0, light=(0.0, -1.0), people=(person,))


# --- the files -------------------------------------------------------------------------------------------------


def test_files_load_in_pycocotools_and_the_coco_loader(dataset: dict[str, Path]) -> None:
    assert dataset["train_annotations"].name == "person_keypoints_train2017.json"
    assert dataset["val_images"].parts[-2:] == ("images", "val2017")
    ids: list[int] = []
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        index = COCO(str(dataset[f"{split}_annotations"]))
        assert len(index.getImgIds()) == count
        assert list(index.cats) == [1] and index.cats[1]["name"] == "person"
        assert index.cats[1]["keypoints"] == list(coco.KEYPOINT_NAMES)
        assert index.cats[1]["skeleton"] == [list(pair) for pair in coco.SKELETON]
        annotations = index.loadAnns(index.getAnnIds(catIds=[1]))
        assert len(annotations) >= count  # 1-3 people per image, a few of them too small or hidden
        records = coco.load_person_keypoints(dataset[f"{split}_annotations"], dataset[f"{split}_images"],
                                             verify_images=True)  # fmt: skip
        assert len(records) == len(annotations)
        ids += [ann["id"] for ann in annotations]
        for ann in annotations:
            v = np.array(ann["keypoints"]).reshape(17, 3)[:, 2]
            assert ann["num_keypoints"] == np.count_nonzero(v) > 0 and (v == 2).any()
            assert ann["iscrowd"] == 0 and ann["segmentation"] == [] and ann["category_id"] == 1
            assert min(ann["bbox"][2:]) >= 8
    assert len(set(ids)) == len(ids)


def test_images_decode_at_the_declared_size(dataset: dict[str, Path]) -> None:
    for split in ("train", "val"):
        images = json.loads(dataset[f"{split}_annotations"].read_text())["images"]
        for image in images:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
            with Image.open(dataset[f"{split}_images"] / image["file_name"]) as decoded:
                decoded.load()
                assert decoded.format == "JPEG" and decoded.mode == "RGB"
                assert decoded.size == (image["width"], image["height"]) == (320, 240)


def test_boxes_hold_every_labelled_keypoint_and_v0_means_outside(dataset: dict[str, Path]) -> None:
    for ann in _annotations(dataset["train_annotations"]) + _annotations(dataset["val_annotations"]):
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 320 + 0.01 and y + h <= 240 + 0.01
        assert 0 < ann["area"] <= w * h
        labelled = keypoints[keypoints[:, 2] > 0]
        assert np.all((labelled[:, 0] >= x - 0.01) & (labelled[:, 0] <= x + w + 0.01))
        assert np.all((labelled[:, 1] >= y - 0.01) & (labelled[:, 1] <= y + h + 0.01))
        assert np.all((labelled[:, 0] < 320) & (labelled[:, 1] < 240)) and np.all(labelled[:, :2] >= 0)
        np.testing.assert_array_equal(keypoints[keypoints[:, 2] == 0, :2], 0)


def test_visible_knees_and_elbows_show_the_persons_clothes(dataset: dict[str, Path]) -> None:
    """Re-create each image's scene (image i of a split is seeded by (seed, split, i)), match the file's people to
    it, and compare the JPEG colour at every visible knee and elbow with that person's limb colours."""
    images = json.loads(dataset["train_annotations"].read_text())["images"]
    by_image: dict[int, list[dict]] = {}
    for ann in _annotations(dataset["train_annotations"]):
        by_image.setdefault(ann["image_id"], []).append(ann)
    distances, shifted = [], []
    for index, image in enumerate(images):
        scene = synthetic_coco.sample_scene(np.random.default_rng([SEED, 0, index]))
        labels = annotate(scene, render(scene))
        pixels = np.asarray(Image.open(dataset["train_images"] / image["file_name"]), dtype=float)
        for ann in by_image.get(image["id"], []):
            keypoints = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
            match = [i for i, label in enumerate(labels) if np.allclose(label.keypoints, keypoints, atol=0.006)]
            assert len(match) == 1
            person = scene.people[match[0]]
            for name, parts in KNEES_AND_ELBOWS.items():
                x, y, v = keypoints[K[name]]
                if v != 2:
                    continue
                tones = _tones([person.colours[part] for part in parts])
                for offset, store in ((0, distances), (12, shifted)):
                    col, row = min(int(x) + offset, 318), int(y)
                    colour = pixels[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].reshape(-1, 3).mean(axis=0)
                    store.append(np.linalg.norm(tones - colour, axis=1).min())
    assert len(distances) >= 20
    on_limb, off_limb = np.mean(np.array(distances) < 40), np.mean(np.array(shifted) < 40)
    assert on_limb >= 0.85 and off_limb <= on_limb - 0.15


def test_seed_fixes_every_byte(dataset: dict[str, Path], tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    small = {"n_train_images": 3, "n_val_images": 2}
    first = files(synthetic_coco.generate(tmp_path / "a", **small, seed=SEED)["train_images"].parents[1])
    again = files(synthetic_coco.generate(tmp_path / "b", **small, seed=SEED)["train_images"].parents[1])
    other = files(synthetic_coco.generate(tmp_path / "c", **small, seed=SEED + 1)["train_images"].parents[1])
    assert len(first) == 7 and first == again
    assert sorted(other) == sorted(first) and all(other[name] != first[name] for name in first)
    # Image i of a split does not depend on how many images the splits have.
    original = dataset["train_images"].parents[1]
    assert first["images/train2017/000000000002.jpg"] == (original / "images/train2017/000000000002.jpg").read_bytes()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_people"):
        synthetic_coco.generate(tmp_path, n_train_images=1, n_val_images=1, max_people=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        synthetic_coco.generate(tmp_path, n_train_images=1, n_val_images=1, jpeg_quality=0)


# --- geometry and visibility -----------------------------------------------------------------------------------


def test_keypoints_land_on_the_persons_own_limbs() -> None:
    """Each person drawn alone on black with one colour per part: every keypoint the person does not hide from
    itself has its own limb's colour (the head's, hair's or eyes' for the face) within 2 px of it."""
    names = (*PART_NAMES, "hair", "eyes")
    palette = {name: tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / len(names), 1.0, 0.9))
               for i, name in enumerate(names)}  # fmt: skip
    own = {**OWN_PARTS, **{name: ("head", "hair", "eyes") for name in coco.KEYPOINT_NAMES[:5]}}
    checked = self_hidden = 0
    for index in range(5):
        scene = _sampled(index)
        for person in scene.people:
            alone = replace(scene, background=np.zeros_like(scene.background), occluders=(), grain=0.0,
                            people=(replace(person, colours=palette),))  # fmt: skip
            rendering = render(alone)
            pixels = np.asarray(rendering.image, dtype=float)
            keypoints = annotate(alone, rendering)[0].keypoints
            for name, parts in own.items():
                x, y, v = keypoints[K[name]]
                self_hidden += v == 1
                if v != 2:
                    continue
                tones = _tones([palette[part] for part in parts])
                window = pixels[max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3].reshape(-1, 1, 3)
                assert (np.abs(window - tones).max(axis=-1) <= 3).any(), (index, name)
                checked += 1
    assert checked > 100 and self_hidden < 0.4 * (checked + self_hidden)  # far arm behind the trunk, back of the head


def test_v0_exactly_for_keypoints_outside_the_image() -> None:
    scene = _posed(np.pi)
    person = scene.people[0]
    pelvis = scene.project(person.joints[0])
    shift = (320 - pelvis[0]) * person.joints[0, 2] / scene.focal  # camera-frame x that puts the pelvis on the edge
    straddling = replace(scene, people=(replace(person, joints=person.joints + [shift, 0.0, 0.0]),))
    for case in [straddling] + [_sampled(index) for index in range(4)]:
        for person, label in zip(case.people, annotate(case, render(case))):
            xy = case.project(synthetic_coco.coco_keypoints_3d(person.joints))
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < 320) & (xy[:, 1] >= 0) & (xy[:, 1] < 240)
            np.testing.assert_array_equal(label.keypoints[:, 2] == 0, ~inside)
            np.testing.assert_allclose(label.keypoints[inside, :2], xy[inside])
    v = annotate(straddling, render(straddling))[0].keypoints[:, 2]
    assert 3 <= np.count_nonzero(v == 0) <= 14  # the right half of the body is out of the frame


def test_an_occluder_in_front_hides_a_keypoint_and_one_behind_does_not() -> None:
    scene = _posed(np.pi)
    person = scene.people[0]
    before = annotate(scene, render(scene))[0].keypoints
    assert before[K["left_knee"], 2] == 2
    x, y = before[K["left_knee"], :2]
    square = np.array([[x - 4, y - 4], [x + 4, y - 4], [x + 4, y + 4], [x - 4, y + 4]])
    front = replace(scene, occluders=(Occluder(square, float(person.joints[:, 2].min()) - 0.1, (0, 0, 0)),))
    rendering = render(front)
    after = annotate(front, rendering)[0].keypoints
    assert rendering.owner[int(y), int(x)] == OCCLUDER
    assert after[K["left_knee"], 2] == 1
    np.testing.assert_array_equal(np.delete(after, K["left_knee"], axis=0), np.delete(before, K["left_knee"], axis=0))
    behind = replace(scene, occluders=(Occluder(square, float(person.joints[:, 2].max()) + 0.5, (0, 0, 0)),))
    np.testing.assert_array_equal(annotate(behind, render(behind))[0].keypoints, before)


def test_a_person_hidden_behind_another_gets_v1() -> None:
    """A copy 1.5× as far and 1.5× as large projects onto the same place, thinner: it is drawn, then covered."""
    scene = _posed(np.pi)
    near = scene.people[0]
    both = replace(scene, people=(near, replace(near, joints=near.joints * 1.5)))
    rendering = render(both)
    near_label, far_label = annotate(both, rendering)
    assert far_label.area == 0 and set(far_label.keypoints[:, 2]) == {1}
    np.testing.assert_array_equal(near_label.keypoints, annotate(scene, render(scene))[0].keypoints)


@pytest.mark.parametrize(
    ("facing", "hidden"),
    [(np.pi, ()), (0.0, ("nose", "left_eye", "right_eye")), (np.pi / 2, ("right_eye", "right_ear"))],
    ids=["front", "back", "left-side"],
)
def test_the_face_shows_only_toward_the_camera(facing: float, hidden: tuple[str, ...]) -> None:
    scene = _posed(facing)
    v = annotate(scene, render(scene))[0].keypoints[:, 2]
    for name in coco.KEYPOINT_NAMES[:5]:
        assert v[K[name]] == (1 if name in hidden else 2), name
    assert v[K["left_shoulder"]] == 2


def test_left_and_right_are_the_persons_own() -> None:
    """Seen from the front a person's left shoulder is on the image right; from behind, on the image left."""
    for facing, left_on_right in ((np.pi, True), (0.0, False)):
        scene = _posed(facing)
        keypoints = annotate(scene, render(scene))[0].keypoints
        assert (keypoints[K["left_shoulder"], 0] > keypoints[K["right_shoulder"], 0]) == left_on_right
        assert (keypoints[K["left_hip"], 0] > keypoints[K["right_hip"], 0]) == left_on_right


def test_face_keypoints_follow_the_body_in_3d() -> None:
    """In world poses from every action the face looks where the body faces (forward = left hip→right hip × up,
    which also puts seated knees in front of the hips) and the eyes sit above the nose."""
    rng = np.random.default_rng(0)
    for action in ACTION_NAMES:
        for joints in generate_sequence(sample_subject(rng), action, 30, rng)[::10]:
            keypoints = synthetic_coco.coco_keypoints_3d(joints)
            up = (keypoints[K["left_shoulder"]] + keypoints[K["right_shoulder"]]) / 2 - joints[0]
            forward = np.cross(keypoints[K["left_hip"]] - keypoints[K["right_hip"]], up)
            forward /= np.linalg.norm(forward)
            ears = (keypoints[K["left_ear"]] + keypoints[K["right_ear"]]) / 2
            assert (keypoints[K["nose"]] - ears) @ forward > 0.05, action
            assert min(keypoints[K["left_eye"], 2], keypoints[K["right_eye"], 2]) > keypoints[K["nose"], 2]
            if action == "Sitting":
                assert (keypoints[K["left_knee"]] - keypoints[K["left_hip"]]) @ forward > 0.2


def test_generate_leaves_nothing_of_an_earlier_run(tmp_path: Path) -> None:
    def entries(root: Path) -> dict[str, bytes | None]:
        return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}

    tiny = {"n_val_images": 1, "image_size": (64, 48)}
    out, real = tmp_path / "out", tmp_path / "coco" / "train2017"
    real.mkdir(parents=True)
    (real / "000000000009.jpg").write_bytes(b"a real COCO image")
    synthetic_coco.generate(out, **tiny, n_train_images=3, seed=SEED + 1)  # another seed, one more image
    (out / "stray.txt").write_text("stray")
    (out / "annotations" / ".person_keypoints_val2017.json.k1ll3d.json").write_text("{")
    (out / "images" / "val2017").rename(out / "images" / "old_val")
    (out / "images" / "val2017").symlink_to(real)  # as a real-data download leaves it
    synthetic_coco.generate(out, **tiny, n_train_images=2, seed=SEED)
    fresh = synthetic_coco.generate(tmp_path / "fresh", **tiny, n_train_images=2, seed=SEED)
    assert entries(out) == entries(fresh["train_images"].parents[1])
    assert entries(real) == {"000000000009.jpg": b"a real COCO image"}
