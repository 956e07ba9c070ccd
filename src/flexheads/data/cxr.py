"""Chest radiograph sources for the cxr task: label set, file formats, patient-level splits and verified downloads.

**NIH ChestX-ray14** (Wang et al., CVPR 2017; https://nihcc.app.box.com/v/ChestXray-NIHCC): 112,120 frontal PNGs
(1024x1024, 8-bit) of 30,805 patients in 12 ``images_001.tar.gz`` ... ``images_012.tar.gz`` archives (each unpacks
to ``images/``), with ``Data_Entry_2017_v2020.csv`` (one row per image; ``Finding Labels`` holds findings joined by
``|`` or ``No Finding``), the official patient-disjoint ``train_val_list.txt``/``test_list.txt`` (one Image Index a
line) and ``BBox_List_2017.csv`` (radiologists' boxes for about a thousand findings of test images).  NIH's FAQ:
"The usage of the data set is unrestricted. But you should provide the link to our original download site,
acknowledge the NIH Clinical Center and provide a citation to our CVPR 2017 paper."  Both CSV headers are read:
the 2017 file's ``Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,
OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],`` and the v2020 file's (the one NIH serves now), which
renames ``Patient Gender`` to ``Patient Sex`` (and corrects ages); the bracketed headers split into two columns
each and the trailing comma adds an empty one.  Columns are found by name, so their order is free.

**COVID-19 image data collection** (Cohen et al., arXiv:2003.11597; https://github.com/ieee8023/covid-chestxray-dataset,
pinned at ``COVID_COMMIT``): ``metadata.csv`` + ``images/``.  Licences: each image carries its own in the
``license`` column (Apache 2.0, CC BY-NC-SA 4.0, CC BY 4.0, ... or blank when unknown: check before any
redistribution); the metadata, scripts and documents are CC BY-NC-SA 4.0 (non-commercial).  Rows used
(``read_covid_metadata``): ``modality`` X-ray, ``view`` PA, AP or AP Supine, ``folder`` images (where the column
exists); ``finding`` is a ``/``-separated path such as ``Pneumonia/Viral/COVID-19``: one naming COVID-19 gets the
COVID-19 label only (the pneumonia it causes is what the label means), any other pneumonia (viral, bacterial, fungal,
lipoid, aspiration ...) gets NIH's Pneumonia, ``No Finding`` no label, everything else (tuberculosis, ``todo``,
``Unknown``, ...) is dropped as it has no ChestX-ray14 counterpart.

**A folder** (``data.cxr.folder``): images plus a CSV shaped like ChestX-ray14's, with at least ``Image Index``,
``Finding Labels`` (NIH's labels and COVID-19) and ``Patient ID``.

**Splits**, always by patient: NIH's official test list, validation = the train_val patients whose hash falls
below ``val_fraction``; the COVID-19 source and a folder without split files by hash too (``COVID_TEST_FRACTION``,
``test_fraction``).  The hash of a patient id (``flexheads.data.splits``) is the same on every machine and does not
depend on the order or the number of rows, so adding images never moves a patient between splits.

**Downloads** go through ``download.download_file`` (resumable, verified, atomic) and ``extract.extract_once``.
NIH's image archives are pinned by the MD5s NIH publishes (FAQ_CHESTXRAY.pdf, Q07) and by their sizes (the server's
Content-Length as recorded by independent downloaders).  NIH publishes no digests of its CSV and list files and
GitHub none of its archive zips: the first download records their size and SHA-256 in ``<root>/checksums.json`` after
checking their content, and every later run verifies against that record (trust on first use), so a changed upstream
file fails loudly instead of silently changing the data.

The module is longer than ~400 lines because it is the one description of these sources (labels, file formats,
patient splits, pinned files) that the cxr task, the synthetic generator and the tests all import from; its download
section (the last quarter) is the seam along which it would split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flexheads.data.download import RemoteFile, download_file, file_digest
from flexheads.data.extract import extract_once
from flexheads.data.splits import hashed_splits
from flexheads.errors import DataError
from flexheads.io import read_json_object, write_json

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
COVID = "COVID-19"
LABELS = (*NIH_FINDINGS, COVID)  # the model's 15 outputs, in this order; all zero = "No Finding"
NO_FINDING = "No Finding"

# The raw layout that the cxr download stage writes (and the synthetic generator), one folder per source
NIH_DIR, COVID_DIR, FOLDER_DIR = "chestxray14", "covid-chestxray-dataset", "folder"

# ChestX-ray14 files and their columns
NIH_CSV = "Data_Entry_2017_v2020.csv"
NIH_TRAIN_VAL_LIST = "train_val_list.txt"
NIH_TEST_LIST = "test_list.txt"
NIH_BBOX_CSV = "BBox_List_2017.csv"
NIH_IMAGES_DIR = "images"
MASKS_DIR = "masks"  # synthetic data only: <image stem>.npz, one bool array per finding
NIH_COLUMNS_2017 = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)  # fmt: skip
NIH_COLUMNS_2020 = tuple("Patient Sex" if c == "Patient Gender" else c for c in NIH_COLUMNS_2017)
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Sex",
                 "View Position")  # what read_nih_entries keeps, before one 0/1 column per finding
NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")
FOLDER_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
BBOX_LABELS = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv spells this one finding differently

# covid-chestxray-dataset
COVID_METADATA = "metadata.csv"
COVID_IMAGES_DIR = "images"
COVID_METADATA_COLUMNS = (
    "patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated", "intubation_present",
    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation", "leukocyte_count",
    "neutrophil_count", "lymphocyte_count", "view", "modality", "date", "location", "folder", "filename", "doi",
    "url", "license", "clinical_notes", "other_notes",
)  # fmt: skip  (the header at COVID_COMMIT, then a trailing comma)
COVID_REQUIRED = ("patientid", "finding", "view", "modality", "filename")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
COVID_TEST_FRACTION = 0.2  # patients of the COVID-19 source held out for test
SPLITS = ("train", "val", "test")


class CxrFormatError(DataError):
    """A chest radiograph file or record does not match its format; the message names the file and the record."""


# --- labels ---------------------------------------------------------------------------------------------------


def parse_finding_labels(text: str, allowed: Sequence[str] = NIH_FINDINGS) -> tuple[str, ...]:
    """The findings of a ``Finding Labels`` value: ``"Effusion|Infiltration"`` → ``("Effusion", "Infiltration")``,
    ``"No Finding"`` → ``()``.  ``ValueError`` for an empty value, an unknown label or "No Finding" with findings."""
    labels = [label.strip() for label in str(text).split("|")]
    if labels == [NO_FINDING]:
        return ()
    unknown = [label for label in labels if label not in allowed]
    if unknown:
        raise ValueError(f"unknown finding label(s) {unknown} in {text!r}; allowed: {[*allowed, NO_FINDING]}")
    return tuple(labels)


def _label_columns(frame: pd.DataFrame, path: Path, allowed: Sequence[str]) -> pd.DataFrame:
    """One uint8 column per ``allowed`` label, parsed from ``Finding Labels`` (each distinct value once)."""
    parsed = {}
    for text in frame["Finding Labels"].unique():
        try:
            parsed[text] = parse_finding_labels(text, allowed)
        except ValueError as err:
            row = int(np.flatnonzero(frame["Finding Labels"].to_numpy() == text)[0])
            raise CxrFormatError(f"{path}: line {row + 2} (Image Index {frame['Image Index'].iloc[row]!r}): "
                                 f"{err}") from None
    rows = [parsed[text] for text in frame["Finding Labels"]]
    return pd.DataFrame({name: np.fromiter((name in r for r in rows), np.uint8, len(rows)) for name in allowed},
                        index=frame.index)


# --- reading --------------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """All cells as stripped strings (no NaN), NIH's empty trailing column dropped; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CxrFormatError(f"{path}: file not found (expected {what})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CxrFormatError(f"{path}: not a readable CSV ({type(err).__name__}: {err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    empty = [c for c in frame.columns if c.startswith("Unnamed:") and not frame[c].str.strip().any()]
    frame = frame.drop(columns=empty)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CxrFormatError(f"{path}: missing column(s) {missing} (expected {what}); found {list(frame.columns)}")
    return frame.apply(lambda column: column.str.strip())


def _check_unique(frame: pd.DataFrame, path: Path, column: str) -> None:
    duplicated = frame[column][frame[column].duplicated()]
    if len(duplicated):
        raise CxrFormatError(f"{path}: {len(duplicated)} duplicate {column} value(s), e.g. {duplicated.iloc[0]!r}")


def _read_entries(path: Path, required: Sequence[str], allowed: Sequence[str], what: str) -> pd.DataFrame:
    frame = _read_csv(path, required, what).rename(columns={"Patient Gender": "Patient Sex"})
    empty = frame["Image Index"].eq("") | frame["Patient ID"].eq("")
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise CxrFormatError(f"{path}: line {row + 2}: empty Image Index or Patient ID")
    _check_unique(frame, path, "Image Index")
    kept = frame[[c for c in ENTRY_COLUMNS if c in frame.columns]].copy()
    if "Patient Age" in kept:  # whole years; the 2017 file's ages could read "058Y"
        age = pd.to_numeric(kept["Patient Age"].str.rstrip("Yy"), errors="coerce")
        kept["Patient Age"] = age.round().astype("Int64")
    return pd.concat([kept, _label_columns(frame, path, allowed)], axis=1)


def read_nih_entries(csv_path: str | Path) -> pd.DataFrame:
    """One row per image of ChestX-ray14's ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``.

    Returns the ``ENTRY_COLUMNS`` present in the file (``Patient Gender`` of the 2017 file renamed ``Patient Sex``;
    all strings but ``Patient Age``, an integer or <NA>), then one uint8 column per ``NIH_FINDINGS`` entry.

    Raises:
        CxrFormatError: missing file or columns (named), an unknown label (file, line, Image Index and the allowed
            labels), an empty Image Index or Patient ID, or an Image Index listed twice.
    """
    return _read_entries(Path(csv_path), NIH_REQUIRED, NIH_FINDINGS, "ChestX-ray14's Data_Entry_2017 CSV")


def read_folder_entries(csv_path: str | Path) -> pd.DataFrame:
    """A user's labels CSV in ChestX-ray14's shape: like ``read_nih_entries`` with only ``Image Index``,
    ``Finding Labels`` and ``Patient ID`` required and COVID-19 allowed; one uint8 column per ``LABELS`` entry."""
    return _read_entries(Path(csv_path), FOLDER_REQUIRED, LABELS, "a labels CSV in ChestX-ray14's shape")


def read_split_list(path: str | Path) -> list[str]:
    """The Image Indexes of a ``train_val_list.txt``/``test_list.txt``, one file name per line (blank lines
    skipped); ``CxrFormatError`` for a line that is not a file name (e.g. a web page) or a name listed twice."""
    path = Path(path)
    if not path.is_file():
        raise CxrFormatError(f"{path}: file not found (expected one Image Index per line)")
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise CxrFormatError(f"{path}: not a text file ({err})") from err
    bad = [name for name in names if not re.fullmatch(r"[^\s<>\"]+\.\w+", name)]
    if bad:
        raise CxrFormatError(f"{path}: line {names.index(bad[0]) + 1} is not an image file name: {bad[0]!r:.80}")
    if len(set(names)) != len(names):
        raise CxrFormatError(f"{path}: lists an Image Index twice")
    return names


def read_nih_boxes(csv_path: str | Path) -> pd.DataFrame:
    """``BBox_List_2017.csv`` → ``Image Index``, ``Finding Label`` (in ``LABELS`` spelling) and float ``x``, ``y``,
    ``w``, ``h`` in original pixels.  The header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` names the four
    numbers ``Bbox [x``, ``y``, ``w``, ``h]``, so they are read by position."""
    frame = _read_csv(Path(csv_path), ("Image Index", "Finding Label"), "ChestX-ray14's BBox_List_2017.csv")
    if frame.shape[1] < 6:
        raise CxrFormatError(f"{csv_path}: expected Image Index, Finding Label and 4 box numbers per row, found "
                             f"columns {list(frame.columns)}")
    boxes = frame.iloc[:, :6].copy()
    boxes.columns = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    boxes["Finding Label"] = boxes["Finding Label"].replace(BBOX_LABELS)
    unknown = ~boxes["Finding Label"].isin(NIH_FINDINGS)
    numbers = boxes[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
    bad = unknown | numbers.isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CxrFormatError(f"{csv_path}: line {row + 2}: expected a known finding and 4 numbers, found "
                             f"{boxes.iloc[row].tolist()}")
    boxes[["x", "y", "w", "h"]] = numbers
    return boxes


def covid_finding_labels(finding: str) -> tuple[str, ...] | None:
    """``LABELS`` of a covid-chestxray-dataset ``finding`` (see the module docstring); None: not used."""
    parts = {part.strip() for part in str(finding).split("/")}
    if COVID in parts:
        return (COVID,)
    if "Pneumonia" in parts:
        return ("Pneumonia",)
    if parts == {NO_FINDING}:
        return ()
    return None


def read_covid_metadata(csv_path: str | Path) -> pd.DataFrame:
    """The frontal X-rays of the covid-chestxray-dataset with a usable finding, in file order.

    Returns ``Image Index`` (the ``filename``), ``Patient ID``, ``View Position``, ``finding``, ``license`` (blank
    where the column is absent) and one uint8 column per ``LABELS`` entry.  A filename listed twice is kept once.
    """
    path = Path(csv_path)
    frame = _read_csv(path, COVID_REQUIRED, "the covid-chestxray-dataset's metadata.csv")
    keep = frame["modality"].eq("X-ray") & frame["view"].isin(FRONTAL_VIEWS)
    if "folder" in frame:
        keep &= frame["folder"].isin(("images", ""))
    labels = frame["finding"].map(covid_finding_labels)
    frame = frame[keep & labels.notna()].drop_duplicates("filename")
    labels = labels[frame.index]
    empty = frame["filename"].eq("") | frame["patientid"].eq("")
    if empty.any():
        raise CxrFormatError(f"{path}: a used row (finding {frame['finding'][empty].iloc[0]!r}) has no filename or "
                             "patientid")
    out = pd.DataFrame({
        "Image Index": frame["filename"], "Patient ID": frame["patientid"], "View Position": frame["view"],
        "finding": frame["finding"], "license": frame.get("license", ""),
    })  # fmt: skip
    for label in LABELS:
        out[label] = np.fromiter((label in found for found in labels), np.uint8, len(labels))
    return out.reset_index(drop=True)


# --- splits ---------------------------------------------------------------------------------------------------


def check_patients_disjoint(patients: pd.Series, split: pd.Series, where: str) -> None:
    """``CxrFormatError`` naming the patients (the first ten) that have images in more than one split."""
    splits_per_patient = split.groupby(patients.to_numpy()).nunique()
    shared = splits_per_patient.index[splits_per_patient > 1].tolist()
    if shared:
        raise CxrFormatError(f"{where}: {len(shared)} patient(s) in more than one split, e.g. Patient ID "
                             f"{shared[:10]}")


def nih_splits(entries: pd.DataFrame, train_val_list: str | Path, test_list: str | Path,
               val_fraction: float, salt: str = "nih") -> pd.Series:
    """The official split of each entry (``read_nih_entries``): ``test`` from ``test_list``; ``val`` the
    train_val patients below ``val_fraction`` (``hashed_splits``); ``train`` the rest.

    Raises:
        CxrFormatError: a list naming an image the CSV lacks or an image of both lists (file and examples named),
            CSV images in neither list, or a patient in both lists (patients named).
    """
    lists = {"train_val": read_split_list(train_val_list), "test": read_split_list(test_list)}
    paths = {"train_val": Path(train_val_list), "test": Path(test_list)}
    index = pd.Index(entries["Image Index"])
    for name, images in lists.items():
        absent = pd.Index(images).difference(index)
        if len(absent):
            raise CxrFormatError(f"{paths[name]}: {len(absent)} Image Index(es) not in the entries CSV, e.g. "
                                 f"{absent[:5].tolist()}")
    both = set(lists["train_val"]) & set(lists["test"])
    if both:
        raise CxrFormatError(f"{paths['test']}: {len(both)} image(s) also in {paths['train_val'].name}, e.g. "
                             f"{sorted(both)[:5]}")
    is_test = index.isin(lists["test"])
    neither = index[~is_test & ~index.isin(lists["train_val"])]
    if len(neither):
        raise CxrFormatError(f"{paths['test'].parent}: {len(neither)} image(s) of the entries CSV in neither "
                             f"{paths['train_val'].name} nor {paths['test'].name}, e.g. {neither[:5].tolist()}")
    patients = entries["Patient ID"].reset_index(drop=True)
    split = hashed_splits(patients, 0.0, val_fraction, salt).where(~is_test, "test")
    check_patients_disjoint(patients, split.replace("val", "train"), f"{paths['train_val'].name} and "
                            f"{paths['test'].name}")
    return pd.Series(split.to_numpy(), index=entries.index, name="split")


def folder_splits(entries: pd.DataFrame, labels_csv: str | Path, test_fraction: float,
                  val_fraction: float) -> pd.Series:
    """Splits of a folder's entries: NIH's way when ``train_val_list.txt`` and ``test_list.txt`` lie beside the
    labels CSV, else by patient hash with ``test_fraction``."""
    folder = Path(labels_csv).parent
    if (folder / NIH_TRAIN_VAL_LIST).is_file() and (folder / NIH_TEST_LIST).is_file():
        return nih_splits(entries, folder / NIH_TRAIN_VAL_LIST, folder / NIH_TEST_LIST, val_fraction, "folder")
    return hashed_splits(entries["Patient ID"], test_fraction, val_fraction, "folder")


# --- download -------------------------------------------------------------------------------------------------

_NIH_STATIC = "https://nihcc.box.com/shared/static"


def _nih_box_file(file_id: str) -> str:
    """Box's direct-download link of a file of NIH's shared ChestXray-NIHCC folder."""
    return ("https://nihcc.app.box.com/index.php?rm=box_download_shared_file&vanity_name=ChestXray-NIHCC"
            f"&file_id=f_{file_id}")


# The links of NIH's batch_download_zips.py; MD5s from NIH's FAQ_CHESTXRAY.pdf (Q07); sizes in bytes.
NIH_ARCHIVES: dict[str, RemoteFile] = {
    "images_001.tar.gz": RemoteFile(f"{_NIH_STATIC}/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz", 2_008_470_987,
                                    "fe8ed0a6961412fddcbb3603c11b3698"),
    "images_002.tar.gz": RemoteFile(f"{_NIH_STATIC}/i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz", 3_952_623_504,
                                    "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    "images_003.tar.gz": RemoteFile(f"{_NIH_STATIC}/f1t00wrtdk94satdfb9olcolqx20z2jp.gz", 3_929_234_850,
                                    "2301d03bde4c246388bad3876965d574"),
    "images_004.tar.gz": RemoteFile(f"{_NIH_STATIC}/0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz", 3_838_903_983,
                                    "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    "images_005.tar.gz": RemoteFile(f"{_NIH_STATIC}/v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz", 3_935_496_531,
                                    "1861f3cd0ef7734df8104f2b0309023b"),
    "images_006.tar.gz": RemoteFile(f"{_NIH_STATIC}/asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz", 3_986_301_172,
                                    "456b53a8b351afd92a35bc41444c58c8"),
    "images_007.tar.gz": RemoteFile(f"{_NIH_STATIC}/jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz", 4_016_328_426,
                                    "1075121ea20a137b87f290d6a4a5965e"),
    "images_008.tar.gz": RemoteFile(f"{_NIH_STATIC}/tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz", 4_018_347_353,
                                    "b61f34cec3aa69f295fbb593cbd9d443"),
    "images_009.tar.gz": RemoteFile(f"{_NIH_STATIC}/upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz", 4_111_327_929,
                                    "442a3caa61ae9b64e61c561294d1e183"),
    "images_010.tar.gz": RemoteFile(f"{_NIH_STATIC}/l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz", 4_181_556_296,
                                    "09ec81c4c31e32858ad8cf965c494b74"),
    "images_011.tar.gz": RemoteFile(f"{_NIH_STATIC}/hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz", 4_187_084_020,
                                    "499aefc67207a5a97692424cf5dbeed5"),
    "images_012.tar.gz": RemoteFile(f"{_NIH_STATIC}/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz", 2_914_187_733,
                                    "dc9fda1757c2de0032b63347a7d2895c"),
}  # fmt: skip
# No published digests: verified against the first download's record (module docstring).
NIH_METADATA: dict[str, RemoteFile] = {
    NIH_CSV: RemoteFile(_nih_box_file("219760887468")),
    NIH_TRAIN_VAL_LIST: RemoteFile(_nih_box_file("256056636701")),
    NIH_TEST_LIST: RemoteFile(_nih_box_file("256055473534")),
    NIH_BBOX_CSV: RemoteFile(_nih_box_file("219760940956")),
}
COVID_COMMIT = "6a4242344473ccb5ed0d2148d8c7bfb1691e4ed8"
COVID_ARCHIVE = RemoteFile(f"https://github.com/ieee8023/covid-chestxray-dataset/archive/{COVID_COMMIT}.zip")
CHECKSUMS = "checksums.json"  # trust-on-first-use record of the files without published digests


def download_nih(root: str | Path, progress: bool = True, *, archives: Mapping[str, RemoteFile] = NIH_ARCHIVES,
                 metadata: Mapping[str, RemoteFile] = NIH_METADATA) -> Path:
    """Download, verify and unpack ChestX-ray14 into ``root``: ``root/images/*.png`` and the CSV and list files.

    Archives stay in ``root`` (a rerun verifies instead of fetching); after one is unpacked, a marker
    ``<archive>.extracted.json`` records its URL, size and MD5, and a rerun whose marker matches skips it without
    hashing 4 GB again.  The CSV and list files are parsed before their digests are first recorded (Box answering
    with a web page must not become the trusted copy).

    Args:
        archives, metadata: file name → ``RemoteFile`` (the official ones by default; tests pass local servers).

    Returns:
        ``root``.
    """
    root = Path(root)
    checks: dict[str, Callable[[Path], Any]] = {NIH_CSV: read_nih_entries, NIH_TRAIN_VAL_LIST: read_split_list,
                                                NIH_TEST_LIST: read_split_list, NIH_BBOX_CSV: read_nih_boxes}
    for name, remote in metadata.items():
        _download_recorded(root, name, remote, checks.get(name), progress)
    for name, remote in archives.items():
        record = {"url": remote.url, "size": remote.size, "md5": remote.md5}
        fetch = partial(download_file, remote.url, root / name, md5=remote.md5, sha256=remote.sha256,
                        size=remote.size, progress=progress)
        extract_once(root, name, record, fetch, progress=progress)
    return root


def download_covid(root: str | Path, progress: bool = True, *, remote: RemoteFile = COVID_ARCHIVE,
                   commit: str = COVID_COMMIT) -> Path:
    """Download the covid-chestxray-dataset at ``commit`` (GitHub's archive zip) into ``root`` and unpack its
    ``metadata.csv`` and ``images/``; the zip's digest is recorded on first download and verified after.

    Returns:
        The unpacked repository folder, ``root/covid-chestxray-dataset-<commit>``.
    """
    root = Path(root)
    folder = f"covid-chestxray-dataset-{commit}"
    name = f"{folder}.zip"
    archive = _download_recorded(root, name, remote, None, progress)
    record = {"url": remote.url, "sha256": read_json_object(root / CHECKSUMS)[name]["sha256"]}
    members = [f"{folder}/{COVID_METADATA}", f"{folder}/{COVID_IMAGES_DIR}"]
    try:
        extract_once(root, name, record, lambda: archive, members=members, progress=progress,
                     check=lambda: read_covid_metadata(root / folder / COVID_METADATA))
    except DataError:
        raise
    except ValueError as err:  # the zip lacks the folder of that commit, or metadata.csv, or images/
        raise CxrFormatError(f"{archive}: not the covid-chestxray-dataset at {commit} ({err})") from err
    return root / folder


def _download_recorded(root: Path, name: str, remote: RemoteFile, check: Callable[[Path], Any] | None,
                       progress: bool) -> Path:
    """Download ``name`` verified against published digests, else against ``root/checksums.json``; a first download
    is checked by ``check`` (which raises on bad content) and then recorded there."""
    records = read_json_object(root / CHECKSUMS)
    recorded = records.get(name, {}) if remote.url == records.get(name, {}).get("url") else {}
    path = download_file(remote.url, root / name, md5=remote.md5, sha256=remote.sha256 or recorded.get("sha256"),
                         size=remote.size or recorded.get("size"), progress=progress)
    if not recorded:
        if check is not None:
            try:
                check(path)
            except DataError as err:
                path.unlink()
                raise CxrFormatError(f"{remote.url}: the download is not the expected file ({err}); removed") from err
        records[name] = {"url": remote.url, "size": path.stat().st_size, "sha256": file_digest(path)}
        write_json(root / CHECKSUMS, records)
    return path
