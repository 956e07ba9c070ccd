"""The cxr download and prepare stages: synthetic layouts → one HDF5 of resized radiographs, labels, patients and
mask bits per split; a user's folder; a real-data cache reused without the network; corrupt images named."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flexheads.tasks.settings.cxr import CxrData, CxrFolder, SyntheticCxr
from flexheads.data import cxr
from flexheads.data.cxr import LABELS, CxrFormatError
from flexheads.data.cxr_store import CHUNK_ROWS
from flexheads.tasks import cxr as task

SIZE = 64
DATA = CxrData(image_size=SIZE, val_fraction=0.25,
               synthetic=SyntheticCxr(n_patients=24, n_covid_images=10, image_size=128, seed=2))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("cxr")
    task.download(DATA, root / "raw")
    summary = task.prepare(DATA, root / "raw", root / "cxr.h5", root / "cxr.stats.json")
    return root / "raw", root / "cxr.h5", summary


def _split_arrays(h5_path: Path, split: str) -> dict[str, np.ndarray]:
    with h5py.File(h5_path) as h5:
        group = h5[split]
        return {name: group[name][:] if group[name].dtype != object else group[name].asstr()[:] for name in group}


def _expected_labels(raw: Path) -> dict[str, np.ndarray]:
    """Image Index → labels in LABELS order, read from the raw CSVs."""
    frames = [cxr.read_nih_entries(raw / cxr.NIH_DIR / cxr.NIH_CSV),
              cxr.read_covid_metadata(raw / cxr.COVID_DIR / cxr.COVID_METADATA)]
    table = pd.concat([f.reindex(columns=["Image Index", *LABELS], fill_value=0) for f in frames])
    return {row[0]: np.asarray(row[1:], np.uint8) for row in table.itertuples(index=False)}


def test_groups_hold_images_labels_ids_and_mask_bits(prepared) -> None:
    _, h5_path, summary = prepared
    with h5py.File(h5_path) as h5:
        assert list(h5.attrs["labels"]) == list(LABELS) and h5.attrs["image_size"] == SIZE
        assert sorted(h5) == ["test", "train", "val"]
        for split in ("train", "val", "test"):
            g = h5[split]
            n = g["images"].shape[0]
            assert n == summary["splits"][split]["rows"] > 0
            assert (g["images"].shape, g["images"].dtype) == ((n, SIZE, SIZE), np.uint8)
            assert (g["masks"].shape, g["masks"].dtype) == ((n, SIZE, SIZE), np.uint16)
            assert (g["labels"].shape, g["labels"].dtype) == ((n, len(LABELS)), np.uint8)
            assert g["images"].chunks == (CHUNK_ROWS, SIZE, SIZE) and g["images"].compression == "gzip"
            assert {g[name].shape for name in ("patient_id", "image_index", "source")} == {(n,)}
            assert set(g["source"].asstr()[:]) <= {"nih", "covid"}


def test_labels_match_the_csvs_and_mask_bits_match_the_labels(prepared) -> None:
    raw, h5_path, _ = prepared
    expected = _expected_labels(raw)
    seen = []
    for split in ("train", "val", "test"):
        arrays = _split_arrays(h5_path, split)
        for index, labels, bits in zip(arrays["image_index"], arrays["labels"], arrays["masks"]):
            np.testing.assert_array_equal(labels, expected[index])
            present = np.bitwise_or.reduce(bits.ravel())
            assert present == sum(1 << k for k, on in enumerate(labels) if on), index
        seen += list(arrays["image_index"])
    assert sorted(seen) == sorted(expected)  # every image once


def test_images_are_the_files_decoded_to_grayscale_and_resized(prepared) -> None:
    raw, h5_path, _ = prepared
    arrays = _split_arrays(h5_path, "test")
    for k in (0, len(arrays["image_index"]) - 1):
        folder = raw / (cxr.NIH_DIR if arrays["source"][k] == "nih" else cxr.COVID_DIR) / "images"
        with Image.open(folder / arrays["image_index"][k]) as image:
            expected = np.asarray(image.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(arrays["images"][k], expected)


def test_splits_follow_the_official_lists_and_never_share_a_patient(prepared) -> None:
    raw, h5_path, _ = prepared
    test_list = set(cxr.read_split_list(raw / cxr.NIH_DIR / cxr.NIH_TEST_LIST))
    patients = {}
    for split in ("train", "val", "test"):
        arrays = _split_arrays(h5_path, split)
        listed = set(arrays["image_index"][arrays["source"] == "nih"]) & test_list
        assert listed == (set(arrays["image_index"][arrays["source"] == "nih"]) if split == "test" else set())
        patients[split] = set(np.char.add(arrays["source"].astype(str), arrays["patient_id"].astype(str)))
    assert not patients["train"] & patients["val"] and not patients["test"] & (patients["train"] | patients["val"])


def test_statistics_sidecar_counts_and_train_pixel_moments(prepared) -> None:
    _, h5_path, summary = prepared
    assert json.loads((h5_path.parent / "cxr.stats.json").read_text()) == summary
    assert summary["labels"] == list(LABELS) and summary["image_size"] == SIZE and summary["source"] == "synthetic"
    for split, info in summary["splits"].items():
        arrays = _split_arrays(h5_path, split)
        assert info["rows"] == len(arrays["labels"])
        assert info["positives"] == dict(zip(LABELS, arrays["labels"].sum(0).tolist()))
        assert info["patients"] == len(set(zip(arrays["source"], arrays["patient_id"])))
        assert info["no_finding"] == int((arrays["labels"].sum(1) == 0).sum())
    train = _split_arrays(h5_path, "train")["images"] / 255.0
    assert summary["pixel_mean"] == pytest.approx(train.mean(), abs=1e-5)
    assert summary["pixel_std"] == pytest.approx(train.std(), abs=1e-5)
    assert 0.2 < summary["pixel_mean"] < 0.8


def test_corrupt_or_missing_image_is_named_and_no_h5_is_left(prepared, tmp_path: Path) -> None:
    raw, _, _ = prepared
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    victim = sorted((copy / cxr.NIH_DIR / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(CxrFormatError, match="not a readable image") as err:
        task.prepare(DATA, copy, tmp_path / "cxr.h5", tmp_path / "stats.json")
    assert str(victim) in str(err.value)
    assert not (tmp_path / "cxr.h5").exists() and not list(tmp_path.glob(".cxr.h5*"))
    victim.unlink()
    with pytest.raises(CxrFormatError, match=f"{victim}: image file not found"):
        task.prepare(DATA, copy, tmp_path / "cxr.h5", tmp_path / "stats.json")


def test_without_covid_only_chestxray14_is_prepared(prepared, tmp_path: Path) -> None:
    raw, _, _ = prepared
    data = DATA.model_copy(update={"include_covid": False})
    summary = task.prepare(data, raw, tmp_path / "cxr.h5", tmp_path / "stats.json")
    assert sum(info["positives"]["COVID-19"] for info in summary["splits"].values()) == 0
    assert set(_split_arrays(tmp_path / "cxr.h5", "train")["source"]) == {"nih"}


# --- a user's folder ------------------------------------------------------------------------------------------


def _folder(tmp_path: Path, n: int = 30) -> CxrData:
    images = tmp_path / "user" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):  # assorted files: RGB JPEG, 16-bit PNG, 8-bit PNG, not square
        pixels = rng.integers(0, 255, (48, 40)).astype(np.uint8)
        if k % 3 == 0:
            name = f"scan{k}.jpg"
            Image.fromarray(np.stack([pixels] * 3, -1)).save(images / name, quality=95)
        elif k % 3 == 1:
            name = f"scan{k}.png"
            Image.fromarray(pixels.astype(np.uint16) * 257).save(images / name)
        else:
            name = f"scan{k}.png"
            Image.fromarray(pixels).save(images / name)
        rows.append(f"{name},{'COVID-19' if k % 4 == 0 else 'No Finding'},patient{k // 2}\n")
    labels = tmp_path / "user" / "labels.csv"
    labels.write_text("Image Index,Finding Labels,Patient ID\n" + "".join(rows))
    return CxrData(source="folder", image_size=16, val_fraction=0.2,
                   folder=CxrFolder(images=str(images), labels_csv=str(labels), test_fraction=0.3))


def test_a_folder_is_linked_checked_and_prepared(tmp_path: Path) -> None:
    data = _folder(tmp_path)
    files = task.download(data, tmp_path / "raw")
    assert files["folder_images"].is_symlink() and files["folder_labels"].resolve() == Path(data.folder.labels_csv)
    summary = task.prepare(data, tmp_path / "raw", tmp_path / "cxr.h5", tmp_path / "stats.json")
    assert sum(info["rows"] for info in summary["splits"].values()) == 30
    with h5py.File(tmp_path / "cxr.h5") as h5:
        assert "masks" not in h5["train"] and set(h5["train"]["source"].asstr()[:]) == {"folder"}
        assert h5["train"]["images"].shape[1:] == (16, 16)
        covid = sum(h5[s]["labels"][:, LABELS.index("COVID-19")].sum() for s in ("train", "val", "test"))
    assert covid == 8


def test_a_folder_missing_an_image_is_refused_at_download(tmp_path: Path) -> None:
    data = _folder(tmp_path)
    (Path(data.folder.images) / "scan5.png").unlink()
    with pytest.raises(CxrFormatError, match=r"1 listed image\(s\) missing .*scan5.png"):
        task.download(data, tmp_path / "raw")


# --- the real sources, from a download cache ------------------------------------------------------------------


def _cache_as_downloaded(raw: Path, nih_dir: Path, covid_dir: Path) -> None:
    """Fill the download caches the way a finished real download leaves them (files, digests, markers), from a
    synthetic layout, so that the real path runs without the network."""
    shutil.copytree(raw / cxr.NIH_DIR / "images", nih_dir / "images")
    records = {}
    for name, remote in cxr.NIH_METADATA.items():
        shutil.copy(raw / cxr.NIH_DIR / name, nih_dir / name)
        data = (nih_dir / name).read_bytes()
        records[name] = {"url": remote.url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (nih_dir / cxr.CHECKSUMS).write_text(json.dumps(records))
    for name, remote in cxr.NIH_ARCHIVES.items():
        marker = {"url": remote.url, "size": remote.size, "md5": remote.md5, "files": 1}
        (nih_dir / f"{name}.extracted.json").write_text(json.dumps(marker))
    folder = f"covid-chestxray-dataset-{cxr.COVID_COMMIT}"
    shutil.copytree(raw / cxr.COVID_DIR / "images", covid_dir / folder / "images")
    shutil.copy(raw / cxr.COVID_DIR / cxr.COVID_METADATA, covid_dir / folder / cxr.COVID_METADATA)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/{cxr.COVID_METADATA}", b"unpacked already")
    (covid_dir / f"{folder}.zip").write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    (covid_dir / cxr.CHECKSUMS).write_text(json.dumps(
        {f"{folder}.zip": {"url": cxr.COVID_ARCHIVE.url, "size": len(buffer.getvalue()), "sha256": digest}}))
    (covid_dir / f"{folder}.zip.extracted.json").write_text(json.dumps(
        {"url": cxr.COVID_ARCHIVE.url, "sha256": digest, "files": 1}))


def test_real_sources_are_linked_from_their_caches_and_prepared_without_masks(prepared, tmp_path: Path) -> None:
    raw, _, synthetic = prepared
    data = DATA.model_copy(update={"source": "nih", "nih_dir": str(tmp_path / "nih"),
                                   "covid_dir": str(tmp_path / "covid")})
    _cache_as_downloaded(raw, tmp_path / "nih", tmp_path / "covid")
    out = tmp_path / "raw"
    shutil.copytree(raw, out)  # a synthetic run's layout, masks included, which the real one must replace
    files = task.download(data, out)
    assert files["nih_images"].is_symlink() and files["nih_images"].resolve() == (tmp_path / "nih/images").resolve()
    assert files["covid_metadata"].is_symlink() and not (out / cxr.NIH_DIR / cxr.MASKS_DIR).exists()
    summary = task.prepare(data, out, tmp_path / "cxr.h5", tmp_path / "stats.json")
    assert {s: i["rows"] for s, i in summary["splits"].items()} == {s: i["rows"] for s, i in
                                                                    synthetic["splits"].items()}
    with h5py.File(tmp_path / "cxr.h5") as h5:
        assert "masks" not in h5["test"] and h5.attrs["source"] == "nih"
