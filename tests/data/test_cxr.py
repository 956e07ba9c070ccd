"""Chest radiograph sources on hand-written files: ChestX-ray14's two CSV headers, its labels and split lists, the
COVID-19 collection's metadata mapping, a user's folder, and the downloads against a local server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flexheads.data import cxr
from flexheads.data.cxr import CxrFormatError
from flexheads.data.download import ChecksumError, RemoteFile

from .test_download import serve

HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
ROWS = [  # Image Index, Finding Labels, Follow-up #, Patient ID, Age, Sex, View (as in the release)
    ("00000001_000.png", "Cardiomegaly", "0", "1", "58", "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "M", "PA"),
    ("00000002_000.png", "No Finding", "0", "2", "81", "M", "PA"),
    ("00000003_000.png", "Effusion|Infiltration", "0", "3", "74", "F", "AP"),
    ("00000003_001.png", "Hernia", "1", "3", "75", "F", "PA"),
    ("00000004_000.png", "Mass|Nodule", "0", "4", "82", "M", "AP"),
]


def _nih_csv(path: Path, rows=ROWS, header: str = HEADER_2017) -> Path:
    lines = [header] + [",".join([*row, "2500", "2048", "0.168", "0.168", ""]) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _lists(folder: Path, train_val: list[str], test: list[str]) -> tuple[Path, Path]:
    (folder / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (folder / "test_list.txt").write_text("\n".join(test) + "\n")
    return folder / "train_val_list.txt", folder / "test_list.txt"


# --- labels and entries ---------------------------------------------------------------------------------------


def test_label_set() -> None:
    assert len(cxr.NIH_FINDINGS) == 14 and cxr.LABELS == (*cxr.NIH_FINDINGS, "COVID-19")
    assert "Pleural_Thickening" in cxr.NIH_FINDINGS and "No Finding" not in cxr.LABELS


@pytest.mark.parametrize("text, expected", [
    ("Effusion|Infiltration", ("Effusion", "Infiltration")),
    ("No Finding", ()),
    ("Pleural_Thickening", ("Pleural_Thickening",)),
    ("Atelectasis|Effusion|Infiltration|Pneumothorax", ("Atelectasis", "Effusion", "Infiltration", "Pneumothorax")),
])  # fmt: skip
def test_finding_labels_parse(text: str, expected: tuple[str, ...]) -> None:
    assert cxr.parse_finding_labels(text) == expected


@pytest.mark.parametrize("text", ["Effusion|Flu", "Pleural Thickening", "No Finding|Effusion", "", "COVID-19"])
def test_bad_finding_labels_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="allowed"):
        cxr.parse_finding_labels(text)


def test_entries_have_one_column_per_finding(tmp_path: Path) -> None:
    entries = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017.csv"))
    assert list(entries.columns) == [*cxr.ENTRY_COLUMNS, *cxr.NIH_FINDINGS]
    row = entries.set_index("Image Index").loc["00000003_000.png"]
    assert row[list(cxr.NIH_FINDINGS)].to_dict() == {f: int(f in ("Effusion", "Infiltration")) for f in
                                                     cxr.NIH_FINDINGS}
    assert entries.loc[entries["Finding Labels"] == "No Finding", list(cxr.NIH_FINDINGS)].sum().sum() == 0
    assert entries["Patient ID"].tolist() == ["1", "1", "2", "3", "3", "4"]
    assert entries["Patient Age"].dtype == "Int64" and entries["Patient Sex"].tolist()[3] == "F"
    assert entries[list(cxr.NIH_FINDINGS)].dtypes.eq(np.uint8).all()


def test_2017_and_v2020_headers_and_any_column_order_give_the_same_frame(tmp_path: Path) -> None:
    old = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017.csv"))
    header_2020 = HEADER_2017.replace("Patient Gender", "Patient Sex")
    new = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017_v2020.csv", header=header_2020))
    pd.testing.assert_frame_equal(old, new)
    shuffled = pd.read_csv(tmp_path / "Data_Entry_2017_v2020.csv", dtype=str, keep_default_na=False)
    shuffled = shuffled[list(reversed(shuffled.columns))]  # no trailing empty column in this one
    shuffled.to_csv(tmp_path / "reordered.csv", index=False)
    pd.testing.assert_frame_equal(old, cxr.read_nih_entries(tmp_path / "reordered.csv"))


def test_unknown_label_names_file_line_image_and_allowed_labels(tmp_path: Path) -> None:
    rows = ROWS[:2] + [("00000002_000.png", "Effusion|Pneumonitis", "0", "2", "81", "M", "PA")]
    path = _nih_csv(tmp_path / "Data_Entry_2017.csv", rows)
    with pytest.raises(CxrFormatError) as err:
        cxr.read_nih_entries(path)
    message = str(err.value)
    assert str(path) in message and "line 4" in message and "00000002_000.png" in message
    assert "Pneumonitis" in message and "Pleural_Thickening" in message and "No Finding" in message


def test_missing_columns_and_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("Image Index,Finding Labels\n00000001_000.png,Hernia\n")
    with pytest.raises(CxrFormatError, match=r"missing column\(s\) \['Patient ID', 'View Position'\]") as err:
        cxr.read_nih_entries(path)
    assert str(path) in str(err.value)
    with pytest.raises(CxrFormatError, match="file not found"):
        cxr.read_nih_entries(tmp_path / "absent.csv")


def test_an_image_listed_twice_is_an_error(tmp_path: Path) -> None:
    path = _nih_csv(tmp_path / "Data_Entry_2017.csv", ROWS + [ROWS[0]])
    with pytest.raises(CxrFormatError, match="duplicate Image Index.*00000001_000.png"):
        cxr.read_nih_entries(path)


def test_bounding_box_list_is_read_by_position(tmp_path: Path) -> None:
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00013118_008.png,Atelectasis,225.08,547.02,86.78,"
                    "79.19,,,\n00000003_000.png,Infiltrate,10,20,30,40,,,\n")
    boxes = cxr.read_nih_boxes(path)
    assert boxes["Finding Label"].tolist() == ["Atelectasis", "Infiltration"]
    assert boxes.loc[0, ["x", "y", "w", "h"]].tolist() == pytest.approx([225.08, 547.02, 86.78, 79.19])


# --- splits ---------------------------------------------------------------------------------------------------


def test_official_split_lists_are_respected(tmp_path: Path) -> None:
    entries = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017.csv"))
    names = entries["Image Index"].tolist()
    train_val, test = _lists(tmp_path, names[:5], names[5:])
    split = cxr.nih_splits(entries, train_val, test, val_fraction=0.5)
    assert split.tolist()[5] == "test" and set(split.tolist()[:5]) <= {"train", "val"}
    by_patient = split.groupby(entries["Patient ID"]).nunique()
    assert (by_patient == 1).all()  # validation takes whole patients
    assert split.equals(cxr.nih_splits(entries, train_val, test, val_fraction=0.5))


def test_a_patient_in_both_lists_is_named(tmp_path: Path) -> None:
    entries = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017.csv"))
    names = entries["Image Index"].tolist()
    train_val, test = _lists(tmp_path, names[:4], names[4:])  # patient 3 has an image on each side
    with pytest.raises(CxrFormatError, match=r"1 patient\(s\) in more than one split, e.g. Patient ID \['3'\]"):
        cxr.nih_splits(entries, train_val, test, 0.1)


@pytest.mark.parametrize("train_val, test, expected", [
    (["00000001_000.png", "00000009_000.png"], ["00000002_000.png"], r"train_val_list.txt: 1 Image Index.*not in"),
    (["00000001_000.png", "00000001_001.png"], ["00000001_000.png"], "also in train_val_list.txt"),
    (["00000001_000.png"], ["00000004_000.png"], r"in neither"),
])  # fmt: skip
def test_split_lists_must_match_the_csv(tmp_path: Path, train_val: list[str], test: list[str], expected: str) -> None:
    entries = cxr.read_nih_entries(_nih_csv(tmp_path / "Data_Entry_2017.csv"))
    with pytest.raises(CxrFormatError, match=expected):
        cxr.nih_splits(entries, *_lists(tmp_path, train_val, test), 0.1)


def test_a_split_list_that_is_a_web_page_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test_list.txt"
    path.write_text("<!DOCTYPE html>\n<html><body>Sign in to Box</body></html>\n")
    with pytest.raises(CxrFormatError, match="line 1 is not an image file name"):
        cxr.read_split_list(path)


# --- COVID-19 collection --------------------------------------------------------------------------------------


def test_covid_metadata_keeps_frontal_xrays_and_maps_findings(tmp_path: Path) -> None:
    def row(pid: str, finding: str, view: str, modality: str, filename: str, folder: str = "images",
            notes: str = "") -> str:
        values = dict.fromkeys(cxr.COVID_METADATA_COLUMNS, "")
        values.update(patientid=pid, finding=finding, view=view, modality=modality, filename=filename,
                      folder=folder, license="CC BY-NC-SA 4.0", clinical_notes=notes)
        return ",".join(values.values()) + ","

    lines = [",".join(cxr.COVID_METADATA_COLUMNS) + ",",
             row("2", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "covid-a.jpeg", notes='"fever, cough\nday 3"'),
             row("2", "Pneumonia/Viral/COVID-19", "L", "X-ray", "covid-a-lateral.jpeg"),
             row("17", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "covid-b.png"),
             row("17", "Pneumonia/Viral/COVID-19", "Axial", "CT", "covid-b-ct.jpg"),
             row("30", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "strep.jpg"),
             row("31", "No Finding", "PA", "X-ray", "normal.png"),
             row("32", "Tuberculosis", "PA", "X-ray", "tb.png"),
             row("33", "todo", "PA", "X-ray", "todo.png"),
             row("34", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "volume.nii.gz", folder="volumes")]
    path = tmp_path / "metadata.csv"
    path.write_text("\n".join(lines) + "\n")
    covid = cxr.read_covid_metadata(path)
    assert covid["Image Index"].tolist() == ["covid-a.jpeg", "covid-b.png", "strep.jpg", "normal.png"]
    assert covid["Patient ID"].tolist() == ["2", "17", "30", "31"]
    assert covid["COVID-19"].tolist() == [1, 1, 0, 0] and covid["Pneumonia"].tolist() == [0, 0, 1, 0]
    assert covid[list(cxr.LABELS)].sum(axis=1).tolist() == [1, 1, 1, 0]
    assert covid["license"].eq("CC BY-NC-SA 4.0").all()


def test_covid_metadata_without_required_columns_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metadata.csv"
    path.write_text("patientid,finding,view,filename\n1,COVID-19,PA,a.jpg\n")
    with pytest.raises(CxrFormatError, match=r"missing column\(s\) \['modality'\]"):
        cxr.read_covid_metadata(path)


# --- a user's folder ------------------------------------------------------------------------------------------


def test_folder_labels_allow_covid_and_split_by_patient_or_by_lists(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("Image Index,Finding Labels,Patient ID\n" + "".join(
        f"img{k}.png,{'COVID-19|Effusion' if k % 3 == 0 else 'No Finding'},p{k // 2}\n" for k in range(60)))
    entries = cxr.read_folder_entries(path)
    assert list(entries.columns[-15:]) == list(cxr.LABELS)
    assert entries["COVID-19"].sum() == 20 and entries.loc[0, "Effusion"] == 1
    split = cxr.folder_splits(entries, path, test_fraction=0.3, val_fraction=0.2)
    assert set(split) == {"train", "val", "test"}
    assert (split.groupby(entries["Patient ID"]).nunique() == 1).all()
    _lists(tmp_path, [f"img{k}.png" for k in range(40)], [f"img{k}.png" for k in range(40, 60)])
    listed = cxr.folder_splits(entries, path, test_fraction=0.3, val_fraction=0.2)
    assert (listed[40:] == "test").all() and not (listed[:40] == "test").any()


# --- downloads ------------------------------------------------------------------------------------------------


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _nih_server_files(tmp_path: Path) -> dict[str, bytes]:
    names = [row[0] for row in ROWS]
    return {
        "/images_001.tar.gz": _tar_gz({f"images/{n}": n.encode() for n in names[:3]}),
        "/images_002.tar.gz": _tar_gz({f"images/{n}": n.encode() for n in names[3:]}),
        "/entries.csv": _nih_csv(tmp_path / "served.csv").read_bytes(),
        "/train_val.txt": ("\n".join(names[:3]) + "\n").encode(),
        "/test.txt": ("\n".join(names[3:]) + "\n").encode(),
        "/boxes.csv": b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000003_000.png,Effusion,1,2,3,4,,,\n",
    }


def _nih_catalogs(url: str, files: dict[str, bytes]) -> tuple[dict[str, RemoteFile], dict[str, RemoteFile]]:
    archives = {name[1:]: RemoteFile(url + name, size=len(files[name]), md5=hashlib.md5(files[name]).hexdigest())
                for name in ("/images_001.tar.gz", "/images_002.tar.gz")}
    metadata = {cxr.NIH_CSV: RemoteFile(url + "/entries.csv"),
                cxr.NIH_TRAIN_VAL_LIST: RemoteFile(url + "/train_val.txt"),
                cxr.NIH_TEST_LIST: RemoteFile(url + "/test.txt"), cxr.NIH_BBOX_CSV: RemoteFile(url + "/boxes.csv")}
    return archives, metadata


def test_official_catalog_pins_twelve_archives() -> None:
    assert sorted(cxr.NIH_ARCHIVES) == [f"images_{k:03d}.tar.gz" for k in range(1, 13)]
    assert all(r.md5 and r.size and r.url.startswith("https://nihcc.box.com/shared/static/")
               for r in cxr.NIH_ARCHIVES.values())
    assert cxr.COVID_COMMIT in cxr.COVID_ARCHIVE.url and len(cxr.COVID_COMMIT) == 40


def test_download_nih_verifies_unpacks_and_records_first_digests(tmp_path: Path) -> None:
    files = _nih_server_files(tmp_path)
    root = tmp_path / "nih"
    with serve(files) as server:
        archives, metadata = _nih_catalogs(server.url, files)
        assert cxr.download_nih(root, progress=False, archives=archives, metadata=metadata) == root
        assert len(server.requests) == 6
        cxr.download_nih(root, progress=False, archives=archives, metadata=metadata)  # all verified: no request
        assert len(server.requests) == 6
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(row[0] for row in ROWS)
    record = json.loads((root / cxr.CHECKSUMS).read_text())
    assert record[cxr.NIH_CSV]["sha256"] == hashlib.sha256(files["/entries.csv"]).hexdigest()
    assert cxr.nih_splits(cxr.read_nih_entries(root / cxr.NIH_CSV), root / cxr.NIH_TRAIN_VAL_LIST,
                          root / cxr.NIH_TEST_LIST, 0.1).tolist()[3:] == ["test"] * 3


def test_a_changed_upstream_file_fails_against_its_first_digest(tmp_path: Path) -> None:
    files = _nih_server_files(tmp_path)
    root = tmp_path / "nih"
    with serve(files) as server:
        archives, metadata = _nih_catalogs(server.url, files)
        cxr.download_nih(root, progress=False, archives=archives, metadata=metadata)
        (root / cxr.NIH_TEST_LIST).unlink()
        files["/test.txt"] += b"00000009_000.png\n"  # NIH re-uploads a list under the same link
        with pytest.raises(ChecksumError, match="test_list.txt: size mismatch"):
            cxr.download_nih(root, progress=False, archives=archives, metadata=metadata)


def test_a_web_page_instead_of_the_csv_is_not_trusted(tmp_path: Path) -> None:
    files = {**_nih_server_files(tmp_path), "/entries.csv": b"<!DOCTYPE html><html><body>Box</body></html>\n"}
    root = tmp_path / "nih"
    with serve(files) as server:
        archives, metadata = _nih_catalogs(server.url, files)
        with pytest.raises(CxrFormatError, match="not the expected file"):
            cxr.download_nih(root, progress=False, archives=archives, metadata=metadata)
    assert not (root / cxr.NIH_CSV).exists() and not (root / cxr.CHECKSUMS).exists()


def test_download_covid_unpacks_metadata_and_images_of_the_pinned_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = f"covid-chestxray-dataset-{commit}"
    metadata = ",".join(cxr.COVID_METADATA_COLUMNS) + ",\n"
    metadata += "1,0,M,65,Pneumonia/Viral/COVID-19" + "," * 14 + "PA,X-ray,2020,,images,a.jpg" + "," * 6 + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/metadata.csv", metadata)
        archive.writestr(f"{folder}/images/a.jpg", b"jpeg bytes")
        archive.writestr(f"{folder}/volumes/ct.nii.gz", b"not wanted")
        archive.writestr(f"{folder}/README.md", b"readme")
    root = tmp_path / "covid"
    with serve({"/covid.zip": buffer.getvalue()}) as server:
        remote = RemoteFile(server.url + "/covid.zip")
        repo = cxr.download_covid(root, progress=False, remote=remote, commit=commit)
        assert cxr.download_covid(root, progress=False, remote=remote, commit=commit) == repo
        assert len(server.requests) == 1
    assert repo == root / folder and (repo / "images" / "a.jpg").read_bytes() == b"jpeg bytes"
    assert not (repo / "volumes").exists() and not (repo / "README.md").exists()
    assert cxr.read_covid_metadata(repo / "metadata.csv")["Image Index"].tolist() == ["a.jpg"]
