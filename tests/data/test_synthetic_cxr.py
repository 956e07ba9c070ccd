"""The procedural radiographs: both sources' exact layouts, a seed fixes every byte, each finding shows where its
mask is and hardly elsewhere, masks sit in the lungs (or the body), prevalences follow NIH's, splits are disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flexheads.data import cxr, synthetic_cxr
from flexheads.data.synthetic_cxr import Study, render, sample_cohort

SEED, SIZE = 3, 64
IN_BODY = ("Cardiomegaly", "Hernia")  # every other finding's mask lies in the lung fields


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synthetic_cxr")
    return synthetic_cxr.generate(out, n_patients=14, n_covid_images=5, image_size=SIZE, seed=SEED)


def _study(findings: tuple[str, ...], patient: int = 5, view: str = "PA") -> Study:
    return Study("nih", patient, 0, 50, "M", view, findings)


# --- the files ------------------------------------------------------------------------------------------------


def test_nih_layout_reads_like_chestxray14(generated: dict[str, Path]) -> None:
    csv = generated["nih_entries"]
    assert csv.parent.name == cxr.NIH_DIR and csv.name == "Data_Entry_2017_v2020.csv"
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
    assert csv.read_text().splitlines()[0] == header + "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    entries = cxr.read_nih_entries(csv)
    assert entries["Patient ID"].nunique() == 14 and set(entries["View Position"]) <= {"PA", "AP"}
    for name in entries["Image Index"]:
        with Image.open(generated["nih_images"] / name) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (SIZE, SIZE))
    split = cxr.nih_splits(entries, generated["nih_train_val"], generated["nih_test"], 0.1)  # raises on overlaps
    assert set(split) >= {"train", "test"}
    boxes = cxr.read_nih_boxes(generated["nih_boxes"])
    assert generated["nih_boxes"].read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert set(boxes["Image Index"]) <= set(entries["Image Index"][split == "test"])


def test_covid_layout_reads_like_the_collection(generated: dict[str, Path]) -> None:
    header = generated["covid_metadata"].read_text().splitlines()[0]
    assert header == ",".join(cxr.COVID_METADATA_COLUMNS) + ","
    covid = cxr.read_covid_metadata(generated["covid_metadata"])
    assert len(covid) == 5 and covid["COVID-19"].all() and covid[list(cxr.NIH_FINDINGS)].sum().sum() == 0
    for name in covid["Image Index"]:
        with Image.open(generated["covid_images"] / name) as image:
            assert (image.format, image.size) == ("JPEG", (SIZE, SIZE))


def test_mask_files_hold_exactly_the_labelled_findings(generated: dict[str, Path]) -> None:
    entries = cxr.read_nih_entries(generated["nih_entries"])
    for _, row in entries.iterrows():
        with np.load(generated["nih_masks"] / f"{Path(row['Image Index']).stem}.npz") as masks:
            assert sorted(masks.files) == sorted(label for label in cxr.NIH_FINDINGS if row[label])
            for name in masks.files:
                assert masks[name].dtype == bool and masks[name].shape == (SIZE, SIZE) and masks[name].any()


def test_split_lists_are_patient_disjoint_and_test_every_finding(generated: dict[str, Path]) -> None:
    entries = cxr.read_nih_entries(generated["nih_entries"]).set_index("Image Index")
    train_val = cxr.read_split_list(generated["nih_train_val"])
    test = cxr.read_split_list(generated["nih_test"])
    assert sorted(train_val + test) == sorted(entries.index)
    assert not set(entries.loc[train_val, "Patient ID"]) & set(entries.loc[test, "Patient ID"])
    assert 0.15 < len(test) / len(entries) < 0.5
    findings = entries[list(cxr.NIH_FINDINGS)]
    assert (findings.loc[test].sum() > 0).equals(findings.sum() > 0)


def test_a_seed_fixes_every_byte(generated: dict[str, Path], tmp_path: Path) -> None:
    again = synthetic_cxr.generate(tmp_path / "again", n_patients=14, n_covid_images=5, image_size=SIZE, seed=SEED)
    for kind in ("nih_entries", "nih_train_val", "nih_test", "nih_boxes", "covid_metadata"):
        assert again[kind].read_bytes() == generated[kind].read_bytes()
    for kind in ("nih_images", "nih_masks", "covid_images", "covid_masks"):
        files = sorted(p.name for p in generated[kind].iterdir())
        assert files == sorted(p.name for p in again[kind].iterdir())
        assert all((again[kind] / f).read_bytes() == (generated[kind] / f).read_bytes() for f in files)
    other = synthetic_cxr.generate(tmp_path / "other", n_patients=14, n_covid_images=5, image_size=SIZE, seed=SEED + 1)
    assert other["nih_entries"].read_bytes() != generated["nih_entries"].read_bytes()


def test_generate_replaces_a_symlinked_image_folder_instead_of_writing_through(tmp_path: Path) -> None:
    real = tmp_path / "real_images"
    real.mkdir()
    (tmp_path / "out" / cxr.NIH_DIR).mkdir(parents=True)
    (tmp_path / "out" / cxr.NIH_DIR / "images").symlink_to(real)
    synthetic_cxr.generate(tmp_path / "out", n_patients=1, n_covid_images=0, image_size=SIZE)
    assert not any(real.iterdir()) and not (tmp_path / "out" / cxr.NIH_DIR / "images").is_symlink()


def test_generate_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size >= 64"):
        synthetic_cxr.generate(tmp_path, n_patients=2, image_size=32)


# --- the pictures ---------------------------------------------------------------------------------------------


def test_radiograph_contrast_lungs_dark_mediastinum_and_abdomen_bright() -> None:
    rendering = render(_study(()), 128, SEED)
    image, lungs = rendering.image.astype(float), rendering.lungs
    rows, cols = np.indices(image.shape)
    abdomen = rendering.body & (rows > 0.85 * 128)
    mediastinum = rendering.body & (np.abs(cols - 64) < 4) & (rows > 0.45 * 128) & (rows < 0.55 * 128)
    outside = ~rendering.body
    assert image[lungs].mean() + 40 < min(image[mediastinum].mean(), image[abdomen].mean())
    assert image[outside].mean() + 40 < image[lungs].mean()
    # The lung fields: two, side by side, in the upper two thirds of the image.
    assert lungs[:, :64].sum() > 0.08 * 64 * 128 and lungs[:, 64:].sum() > 0.05 * 64 * 128
    assert not lungs[int(0.8 * 128) :].any() and not lungs[: int(0.08 * 128)].any()


@pytest.mark.parametrize("finding", cxr.LABELS)
def test_a_finding_changes_the_picture_where_its_mask_is_and_hardly_elsewhere(finding: str) -> None:
    """The same patient and film with and without the finding: every other random draw stays as it was."""
    normal = render(_study(()), SIZE, SEED).image.astype(float)
    sick = render(_study((finding,)), SIZE, SEED)
    mask, change = sick.masks[finding], np.abs(sick.image.astype(float) - normal)
    assert list(sick.masks) == [finding] and mask.any()
    assert change[mask].mean() > 10 and change[mask].mean() > 8 * change[~mask].mean()
    assert not (mask & ~(sick.body if finding in IN_BODY else sick.lungs)).any()


def test_masks_are_non_empty_for_exactly_the_findings_and_inside_the_chest() -> None:
    studies = [s for s in sample_cohort(60, 6, SEED) if s.findings]
    assert {f for s in studies for f in s.findings} >= {"Infiltration", "Effusion", "Atelectasis", "COVID-19"}
    for study in studies:
        rendering = render(study, SIZE, SEED)
        assert set(rendering.masks) == set(study.findings)
        for finding, mask in rendering.masks.items():
            assert mask.shape == (SIZE, SIZE) and mask.any(), (study, finding)
            assert not (mask & ~(rendering.body if finding in IN_BODY else rendering.lungs)).any(), (study, finding)


def test_a_lesion_stays_in_place_on_follow_up_films() -> None:
    first, later = (render(Study("nih", 9, k, 60, "F", "PA", ("Mass",)), SIZE, SEED) for k in (0, 1))
    centres = [np.argwhere(r.masks["Mass"]).mean(0) for r in (first, later)]
    assert np.hypot(*(centres[0] - centres[1])) < 0.08 * SIZE  # positioning differs by a few pixels between films
    assert not np.array_equal(first.image, later.image)


# --- the cohort -----------------------------------------------------------------------------------------------


def test_default_cohort_prevalences_follow_nih() -> None:
    """At the default size every finding is present a handful of times, in NIH's order at the ends: Infiltration
    the most common, Hernia the rarest; about half the images show no finding."""
    studies = sample_cohort(800, 120, 0)
    nih = [s for s in studies if s.source == "nih"]
    counts = pd.Series({f: sum(f in s.findings for s in nih) for f in cxr.NIH_FINDINGS})
    assert counts.idxmax() == "Infiltration" and counts.idxmin() == "Hernia"
    assert counts.min() >= 5 and 0.15 < counts["Infiltration"] / len(nih) < 0.21
    assert counts["Effusion"] > counts["Mass"] > counts["Pneumonia"] > counts["Hernia"]
    assert 0.42 < sum(not s.findings for s in nih) / len(nih) < 0.6
    assert [s.findings for s in studies if s.source == "covid"] == [("COVID-19",)] * 120
    assert {len([s for s in nih if s.patient == p]) for p in range(1, 801)} == {1, 2, 3, 4}


def test_findings_co_occur_as_in_nih() -> None:
    nih = [s for s in sample_cohort(6000, 0, 1)]

    def rate(finding: str, given: str | None = None) -> float:
        pool = [s for s in nih if given is None or given in s.findings]
        return sum(finding in s.findings for s in pool) / len(pool)

    assert rate("Effusion", "Cardiomegaly") > 2 * rate("Effusion")
    assert rate("Effusion", "Edema") > 2 * rate("Effusion")
    assert rate("Nodule", "Mass") > 2 * rate("Nodule")
    assert rate("Infiltration", "Pneumonia") > 1.5 * rate("Infiltration")


def test_generate_leaves_nothing_of_an_earlier_run(tmp_path: Path) -> None:
    def entries(root: Path) -> dict[str, bytes | None]:
        return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}

    out, real = tmp_path / "out", tmp_path / "chestxray14"
    real.mkdir()
    (real / "Data_Entry_2017_v2020.csv").write_text("the real one")
    synthetic_cxr.generate(out, n_patients=4, n_covid_images=2, image_size=SIZE, seed=SEED + 1)  # another seed
    (out / "stray.txt").write_text("stray")
    (out / cxr.NIH_DIR / "images" / ".00000001_000.png.k1ll3d.png").write_bytes(b"half written")
    (out / cxr.FOLDER_DIR).mkdir()
    (out / cxr.FOLDER_DIR / "labels.csv").symlink_to(real / "Data_Entry_2017_v2020.csv")  # a 'folder' source run
    synthetic_cxr.generate(out, n_patients=3, n_covid_images=1, image_size=SIZE, seed=SEED)
    fresh = synthetic_cxr.generate(tmp_path / "fresh", n_patients=3, n_covid_images=1, image_size=SIZE, seed=SEED)
    assert entries(out) == entries(fresh["nih_entries"].parents[1])
    assert entries(real) == {"Data_Entry_2017_v2020.csv": b"the real one"}
