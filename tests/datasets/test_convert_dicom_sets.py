"""INbreast, CBIS-DDSM and VinDr-Mammo converters on DICOM fixtures in each published layout."""

from __future__ import annotations

import plistlib

import numpy as np
import pytest
from canonical_testing import by_stem
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from common.io import read_json, read_png
from datasets import cbis_ddsm, inbreast, vindr
from datasets.canonical import points_to_mask, polygon_to_mask
from datasets.cbis_ddsm import clean_path, series_uid

H, W = 48, 64


def write_dicom(path, pixels=None, rows=H, cols=W, transfer_syntax=None, **attrs):
    """A minimal MG DICOM file; ``pixels`` uint8/uint16 (rows, cols) or encapsulated bytes."""
    sop_class = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    if pixels is None:
        pixels = np.full((rows, cols), 100, np.uint16)
    if isinstance(pixels, bytes):  # already encoded (e.g. JPEG 2000 stand-in)
        ds.Rows, ds.Columns, bits = rows, cols, 16
        ds.PixelData = pixels
    else:
        ds.Rows, ds.Columns = pixels.shape
        bits = 8 * pixels.dtype.itemsize
        ds.PixelData = pixels.tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _errors(out):
    return [
        p for p in read_json(out / "conversion_report.json")["problems"] if p["level"] == "error"
    ]


def _assert_patient_disjoint(out):
    split = read_json(out / "split.json")
    sets = [set(split["patients"][s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    return split


# ------------------------------------------------------------------------------------------ INbreast


def _roi(name, points):
    return {
        "Name": name,
        "NumberOfPoints": len(points),
        "Point_px": [f"({x:.6f}, {y:.6f})" if not isinstance(x, str) else x for x, y in points],
        "Point_mm": ["(0.0, 0.0, 0.0)"] * len(points),
        "Type": 15,
    }


MASS = [(10, 5), (20, 5), (20, 15), (10, 15)]
CLUSTER = [(28, 35), (38, 35), (38, 42), (28, 42)]


@pytest.fixture
def inbreast_root(tmp_path):
    return build_inbreast_root(tmp_path)


def build_inbreast_root(tmp_path, pixels=None):
    """``tmp_path/INbreast Release 1.0``; ``pixels(rows, cols)`` gives the DICOMs' uint16 pixels."""
    root = tmp_path / "INbreast Release 1.0"
    csv = [
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads",
        "removed;removed;R;CC;201001;1001;2;4c",
        "removed;removed;R;MLO;201001;1002;2;4c",
        "removed;removed;L;CC;201002;1003;;1",
        "removed;removed;L;MLO;201002;1004;3;2",  # no DICOM
        "removed;removed;L;CC;201003;1005;1;2",  # broken XML
        "removed;removed;L;MLO;201003;1006;1;2",  # calcification with a malformed point
        ";;;;;;;",
    ]
    root.mkdir()
    (root / "INbreast.csv").write_text("\n".join(csv) + "\n", encoding="latin-1")
    for key, pat, side, view in [
        (1001, "aaa111", "R", "CC"),
        (1002, "aaa111", "R", "ML"),
        (1003, "bbb222", "L", "CC"),
        (1005, "ccc333", "L", "CC"),
        (1006, "ccc333", "L", "MLO"),
    ]:
        write_dicom(
            root / "AllDICOMs" / f"{key}_{pat}_MG_{side}_{view}_ANON.dcm",
            None if pixels is None else pixels(H, W),
            PixelSpacing=[0.07, 0.07],
            PatientID="anon",
        )
    xml = root / "AllXML"
    xml.mkdir()
    rois = [
        _roi("Mass", MASS),
        _roi("Calcification", [(40, 30)]),
        _roi("Calcification", [(50, 10), (52, 11)]),
        _roi("Cluster", CLUSTER),
        _roi("Spiculated Region", [(1, 1), (3, 1), (3, 3)]),
    ]
    plist = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
    (xml / "1001.xml").write_bytes(plistlib.dumps(plist, fmt=plistlib.FMT_XML))
    (xml / "1005.xml").write_text("<plist><dict><key>Images</key>")
    bad = {"Images": [{"ROIs": [_roi("Calcification", [("(4; 5)", None)])]}]}
    (xml / "1006.xml").write_bytes(plistlib.dumps(bad, fmt=plistlib.FMT_XML))
    return root


def test_inbreast(inbreast_root, tmp_path):
    out = tmp_path / "out"
    summary = inbreast.convert(inbreast_root.parent, out, seed=1, verbose=False)
    assert summary["images"] == 3
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    images, anns = by_stem(masses)
    assert sorted(images) == ["inbreast_1001", "inbreast_1002", "inbreast_1003"]
    im = images["inbreast_1001"]
    assert im["patient_id"] == images["inbreast_1002"]["patient_id"] == "inbreast_aaa111"
    assert (im["laterality"], im["view"], im["density"], im["birads"]) == ("R", "CC", 2, "4c")
    assert im["pixel_spacing"] == [0.07, 0.07] and (im["height"], im["width"]) == (H, W)
    assert images["inbreast_1003"]["density"] is None
    assert im["file_name"].endswith("AllDICOMs/1001_aaa111_MG_R_CC_ANON.dcm")
    (m,) = anns["inbreast_1001"]
    assert m["bbox"] == [10.0, 5.0, 10.0, 10.0] and m["area"] == 100.0
    assert m["segmentation"] == [[10.0, 5.0, 20.0, 5.0, 20.0, 15.0, 10.0, 15.0]]
    assert anns["inbreast_1002"] == [] and anns["inbreast_1003"] == []

    cimages, canns = by_stem(calcs)
    mask = read_png(out / cimages["inbreast_1001"]["mask_file"]) > 0
    expected = (
        points_to_mask([(40, 30)], (H, W))
        | points_to_mask([(50, 10), (52, 11)], (H, W))
        | polygon_to_mask(CLUSTER, (H, W))
    )
    assert np.array_equal(mask, expected)
    comps = sorted(canns["inbreast_1001"], key=lambda a: a["bbox"][0])
    assert [c["calc_type"] for c in comps] == ["large", "dot", "dot"]
    assert comps[0]["bbox"] == [28.0, 35.0, 11.0, 8.0]
    assert comps[1]["bbox"] == [38.0, 28.0, 5.0, 5.0] and comps[1]["area"] == 13
    assert comps[2]["bbox"] == [48.0, 8.0, 7.0, 6.0]
    for c in comps:
        assert mask[c["point"][1], c["point"][0]]
    assert cimages["inbreast_1002"]["mask_file"] is None

    errors = _errors(out)
    assert any(
        p["row"] == 5 and "no DICOM" in p["message"] and "1004" in p["message"] for p in errors
    )
    assert any(p["file"].endswith("1005.xml") and "left out" in p["message"] for p in errors)
    assert any(p["file"].endswith("1006.xml") and p["row"] == "ROI 0" for p in errors)
    notes = [
        p for p in read_json(out / "conversion_report.json")["problems"] if p["level"] == "note"
    ]
    assert any("Spiculated Region" in p["message"] for p in notes)
    _assert_patient_disjoint(out)


# ----------------------------------------------------------------------------------------- CBIS-DDSM

MASS_COLUMNS = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
    "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
    "ROI mask file path"
)
CALC_COLUMNS = (
    "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
    "calc type,calc distribution,assessment,pathology,subtlety,image file path,"
    "cropped image file path,ROI mask file path"
)


def _uid(n):
    return f"1.3.6.1.4.1.9590.100.1.2.{n}"


def _cell(folder, study, series, name, messy=False):
    path = f"{folder}/{_uid(study)}/{_uid(series)}/{name}"
    return f'" {path}\n"' if messy else path  # whitespace and a newline inside the quoted cell


@pytest.fixture
def cbis_root(tmp_path):
    return build_cbis_root(tmp_path)


def build_cbis_root(tmp_path, pixels=None):
    """``tmp_path/cbis``; ``pixels(rows, cols)`` gives the full images' uint16 pixels (default 500)."""
    root = tmp_path / "cbis"
    data = root / "CBIS-DDSM"
    crop = (np.arange(10 * 12).reshape(10, 12) % 97 + 3).astype(np.uint16)  # a crop: many values

    def full(folder, study, series, rows=H):
        write_dicom(
            data
            / folder
            / f"07-20-2016-DDSM-{study}"
            / "1.000000-full mammogram images-1"
            / "1-1.dcm",
            np.full((rows, W), 500, np.uint16) if pixels is None else pixels(rows, W),
            StudyInstanceUID=_uid(study),
            SeriesInstanceUID=_uid(series),
        )

    def roi_series(folder, study, series, mask, crop_first=True, mask_shape=(H, W)):
        m = np.zeros(mask_shape, np.uint8)
        m[mask] = 255
        files = [crop, m] if crop_first else [m, crop]
        for i, pixels in enumerate(files, start=1):
            write_dicom(
                data
                / f"{folder}"
                / f"09-06-2017-DDSM-{study}"
                / "1.000000-ROI mask images-2"
                / f"1-{i}.dcm",
                pixels,
                StudyInstanceUID=_uid(study),
                SeriesInstanceUID=_uid(series),
            )

    # P_00001: one image, two masses; the crop comes first in one series and second in the other
    full("Mass-Training_P_00001_LEFT_CC", 10, 11)
    roi_series("Mass-Training_P_00001_LEFT_CC_1", 12, 13, np.s_[5:15, 10:20])
    roi_series("Mass-Training_P_00001_LEFT_CC_2", 14, 15, np.s_[30:40, 40:52], crop_first=False)
    # P_00002: ROI mask 40 rows high, image 48: reported, never stretched
    full("Mass-Training_P_00002_RIGHT_MLO", 20, 21)
    roi_series("Mass-Training_P_00002_RIGHT_MLO_1", 22, 23, np.s_[5:15, 5:15], mask_shape=(40, W))
    # P_00003: calcifications, one VASCULAR line, one small cluster
    full("Calc-Training_P_00003_LEFT_MLO", 30, 31)
    roi_series("Calc-Training_P_00003_LEFT_MLO_1", 32, 33, np.s_[20, 5:40])
    roi_series("Calc-Training_P_00003_LEFT_MLO_2", 34, 35, np.s_[35:38, 50:53])
    # P_00004 (test set): image file never downloaded
    mass_rows = [
        MASS_COLUMNS,
        ",".join(
            [
                "P_00001",
                "3",
                "LEFT",
                "CC",
                "1",
                "mass",
                "OVAL",
                "CIRCUMSCRIBED",
                "4",
                "MALIGNANT",
                "5",
                _cell("Mass-Training_P_00001_LEFT_CC", 10, 11, "000000.dcm", messy=True),
                _cell("Mass-Training_P_00001_LEFT_CC_1", 12, 13, "000000.dcm"),
                _cell("Mass-Training_P_00001_LEFT_CC_1", 12, 13, "000001.dcm", messy=True),
            ]
        ),
        ",".join(
            [
                "P_00001",
                "3",
                "LEFT",
                "CC",
                "2",
                "mass",
                "IRREGULAR",
                "SPICULATED",
                "3",
                "BENIGN",
                "2",
                _cell("Mass-Training_P_00001_LEFT_CC", 10, 11, "000000.dcm"),
                _cell("Mass-Training_P_00001_LEFT_CC_2", 14, 15, "000000.dcm"),
                _cell("Mass-Training_P_00001_LEFT_CC_2", 14, 15, "000001.dcm"),
            ]
        ),
        ",".join(
            [
                "P_00002",
                "2",
                "RIGHT",
                "MLO",
                "1",
                "mass",
                "ROUND",
                "OBSCURED",
                "3",
                "BENIGN",
                "3",
                _cell("Mass-Training_P_00002_RIGHT_MLO", 20, 21, "000000.dcm"),
                _cell("Mass-Training_P_00002_RIGHT_MLO_1", 22, 23, "000000.dcm"),
                _cell("Mass-Training_P_00002_RIGHT_MLO_1", 22, 23, "000001.dcm"),
            ]
        ),
    ]
    calc_rows = [
        CALC_COLUMNS,
        ",".join(
            [
                "P_00003",
                "4",
                "LEFT",
                "MLO",
                "1",
                "calcification",
                "VASCULAR",
                "SEGMENTAL",
                "2",
                "BENIGN_WITHOUT_CALLBACK",
                "3",
                _cell("Calc-Training_P_00003_LEFT_MLO", 30, 31, "000000.dcm"),
                _cell("Calc-Training_P_00003_LEFT_MLO_1", 32, 33, "000000.dcm"),
                _cell("Calc-Training_P_00003_LEFT_MLO_1", 32, 33, "000001.dcm"),
            ]
        ),
        ",".join(
            [
                "P_00003",
                "4",
                "LEFT",
                "MLO",
                "2",
                "calcification",
                "PLEOMORPHIC",
                "CLUSTERED",
                "4",
                "MALIGNANT",
                "4",
                _cell("Calc-Training_P_00003_LEFT_MLO", 30, 31, "000000.dcm"),
                _cell("Calc-Training_P_00003_LEFT_MLO_2", 34, 35, "000000.dcm"),
                _cell("Calc-Training_P_00003_LEFT_MLO_2", 34, 35, "000001.dcm"),
            ]
        ),
    ]
    test_rows = [
        MASS_COLUMNS,
        ",".join(
            [
                "P_00004",
                "1",
                "LEFT",
                "CC",
                "1",
                "mass",
                "OVAL",
                "CIRCUMSCRIBED",
                "4",
                "MALIGNANT",
                "5",
                _cell("Mass-Test_P_00004_LEFT_CC", 40, 41, "000000.dcm"),
                _cell("Mass-Test_P_00004_LEFT_CC_1", 42, 43, "000000.dcm"),
                _cell("Mass-Test_P_00004_LEFT_CC_1", 42, 43, "000001.dcm"),
            ]
        ),
    ]
    (root / "mass_case_description_train_set.csv").write_text("\n".join(mass_rows) + "\n")
    (root / "calc_case_description_train_set.csv").write_text("\n".join(calc_rows) + "\n")
    (root / "mass_case_description_test_set.csv").write_text("\n".join(test_rows) + "\n")
    return root


def test_cbis_ddsm(cbis_root, tmp_path):
    out = tmp_path / "out"
    summary = cbis_ddsm.convert(cbis_root, out, seed=0, verbose=False)
    assert summary["images"] == 2
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    images, anns = by_stem(masses)
    mstem, cstem = (
        "cbis_ddsm_Mass-Training_P_00001_LEFT_CC",
        "cbis_ddsm_Calc-Training_P_00003_LEFT_MLO",
    )
    assert sorted(images) == sorted([mstem, cstem])
    im = images[mstem]
    assert (im["patient_id"], im["laterality"], im["view"], im["density"]) == (
        "P_00001",
        "L",
        "CC",
        3,
    )
    assert im["pathology"] == "MALIGNANT" and im["source_split"] == "train"
    assert "1.000000-full mammogram images-1" in im["file_name"]
    a = sorted(anns[mstem], key=lambda x: x["abnormality_id"])
    assert [x["bbox"] for x in a] == [[10.0, 5.0, 10.0, 10.0], [40.0, 30.0, 12.0, 10.0]]
    assert [x["area"] for x in a] == [100.0, 120.0]
    assert (
        a[0]["shape"] == "OVAL"
        and a[1]["margins"] == "SPICULATED"
        and a[1]["pathology"] == "BENIGN"
    )
    assert a[0]["segmentation"] and len(a[0]["segmentation"][0]) >= 8
    assert images[cstem]["density"] == 4 and anns[cstem] == []

    cimages, canns = by_stem(calcs)
    mask = read_png(out / cimages[cstem]["mask_file"]) > 0
    expected = np.zeros((H, W), bool)
    expected[20, 5:40] = True
    expected[35:38, 50:53] = True
    assert np.array_equal(mask, expected)
    comps = sorted(canns[cstem], key=lambda x: x["bbox"][0])
    assert [c["bbox"] for c in comps] == [[5.0, 20.0, 35.0, 1.0], [50.0, 35.0, 3.0, 3.0]]
    assert [c["calc_type"] for c in comps] == ["vessel", "dot"]
    assert cimages[mstem]["mask_file"] is None

    errors = _errors(out)
    size = [p for p in errors if "not stretched" in p["message"]]
    assert len(size) == 1 and size[0]["row"] == 4 and "64x40" in size[0]["message"]
    assert size[0]["file"].endswith("mass_case_description_train_set.csv")
    missing = [p for p in errors if p["file"].endswith("mass_case_description_test_set.csv")]
    assert len(missing) == 1 and missing[0]["row"] == 2 and _uid(41) in missing[0]["message"]
    _assert_patient_disjoint(out)


# --------------------------------------------------------------------------------------- VinDr-Mammo

VINDR_HEADER = (
    "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
    "breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split"
)


def _vindr_row(study, image, side, view, cats, box, split="training", density="DENSITY C", h=H):
    coords = ",".join(str(v) for v in box) if box else ",,,"
    birads = "BI-RADS 4" if box else ""
    return (
        f'{study},ser{study},{image},{side},{view},{h},{W},BI-RADS 4,{density},"{cats}",{birads},'
        f"{coords},{split}"
    )


@pytest.fixture
def vindr_root(tmp_path):
    return build_vindr_root(tmp_path)


def build_vindr_root(tmp_path, pixels=None):
    """``tmp_path/vindr-mammo/1.0.0``; the DICOMs hold a JPEG 2000 stand-in that is never decoded, or
    with ``pixels(rows, cols)`` uncompressed uint16 pixels (for loading the converted set)."""
    root = tmp_path / "vindr-mammo" / "1.0.0"
    j2k = encapsulate([b"\xff\x4f\xff\x51" + bytes(28)])  # a JPEG 2000 stand-in, never decoded
    for study, image, rows in [
        ("s1", "a", H),
        ("s1", "b", H),
        ("s2", "c", H),
        ("s3", "d", H),
        ("s4", "e", H),
        ("s5", "f", 40),
    ]:
        write_dicom(
            root / "images" / study / f"{image}.dicom",
            j2k if pixels is None else pixels(rows, W),
            rows=rows,
            transfer_syntax=JPEG2000Lossless if pixels is None else None,
            ImagerPixelSpacing=[0.085, 0.085],
        )
    rows = [
        VINDR_HEADER,
        _vindr_row("s1", "a", "L", "CC", "['Mass']", (10.5, 5.0, 30.5, 25.0)),
        _vindr_row("s1", "a", "L", "CC", "['Suspicious Calcification']", (40, 30, 44, 34)),
        _vindr_row("s1", "a", "L", "CC", "['Mass', 'Suspicious Calcification']", (2, 2, 8, 8)),
        _vindr_row("s1", "b", "L", "MLO", "['No Finding']", None, density="DENSITY A"),
        _vindr_row("s2", "c", "R", "CC", "['Architectural Distortion']", (1, 1, 9, 9)),
        _vindr_row("s2", "c", "R", "CC", "['Mass']", (50, 40, 70, 60)),  # runs off the image
        _vindr_row("s3", "d", "R", "MLO", "['Mass']", (5, 5, 20, 20), split="test"),
        _vindr_row("s4", "e", "L", "CC", "['Mass']", (30, 5, 20, 20)),  # xmax < xmin
        _vindr_row("s5", "f", "L", "CC", "['Mass']", (1, 1, 5, 5)),  # CSV says 48 rows, DICOM 40
        _vindr_row("s6", "g", "L", "CC", "['Mass']", (1, 1, 5, 5)),  # no DICOM
        _vindr_row("s3", "d", "R", "MLO", "Mass]", (5, 5, 9, 9), split="test"),  # not a list
    ]
    (root / "finding_annotations.csv").write_text("\n".join(rows) + "\n")
    return root


def test_vindr(vindr_root, tmp_path):
    out = tmp_path / "out"
    summary = vindr.convert(vindr_root.parent.parent, out, seed=0, verbose=False)
    assert summary["images"] == 3
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    images, anns = by_stem(masses)
    assert sorted(images) == ["vindr_a", "vindr_b", "vindr_c"]
    a = images["vindr_a"]
    assert (a["patient_id"], a["laterality"], a["view"], a["density"]) == ("vindr_s1", "L", "CC", 3)
    assert a["pixel_spacing"] == [0.085, 0.085] and (a["height"], a["width"]) == (H, W)
    assert images["vindr_b"]["density"] == 1 and anns["vindr_b"] == []
    boxes = sorted(x["bbox"] for x in anns["vindr_a"])
    assert boxes == [[2.0, 2.0, 6.0, 6.0], [10.5, 5.0, 20.0, 20.0]]
    assert anns["vindr_c"][0]["bbox"] == [50.0, 40.0, 14.0, 8.0]  # clipped to 64x48

    cimages, canns = by_stem(calcs)
    mask = read_png(out / cimages["vindr_a"]["mask_file"]) > 0
    expected = np.zeros((H, W), bool)
    expected[30:34, 40:44] = True
    expected[2:8, 2:8] = True
    assert np.array_equal(mask, expected)
    comps = sorted(canns["vindr_a"], key=lambda c: c["bbox"][0])
    assert [c["bbox"] for c in comps] == [[2.0, 2.0, 6.0, 6.0], [40.0, 30.0, 4.0, 4.0]]
    assert all(c["calc_type"] == "dot" for c in comps)

    split = _assert_patient_disjoint(out)
    assert all(im["split"] in ("train", "val") for im in images.values())  # s3 (test) left out
    assert split["patients"]["test"] == []
    errors = _errors(out)
    rows = {p["row"]: p["message"] for p in errors}
    assert "empty box" in rows[9] and "CSV size 64x48 but DICOM 64x40" in rows[10]
    assert "no DICOM" in rows[11] and "not a Python list" in rows[12]
    assert all(p["file"].endswith("finding_annotations.csv") for p in errors)


def test_vindr_keeps_published_test_split(vindr_root, tmp_path):
    table = vindr_root / "finding_annotations.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1]) + "\n")  # drop the malformed row: s3 converts
    splits = []
    for seed in (0, 0, 5):
        vindr.convert(vindr_root, tmp_path / f"o{len(splits)}", seed=seed, verbose=False)
        split = _assert_patient_disjoint(tmp_path / f"o{len(splits)}")
        assert split["patients"]["test"] == ["vindr_s3"]
        splits.append(split["patients"])
    assert splits[0] == splits[1]


def test_cbis_path_cells():
    cell = " Mass-Training_P_00001_LEFT_CC_1/1.3.6.1.4.1.9590.100.1.2.12/\n1.3.6.1.4.1.9590.100.1.2.13/000001.dcm\n"
    assert clean_path(cell) == (
        "Mass-Training_P_00001_LEFT_CC_1/1.3.6.1.4.1.9590.100.1.2.12/1.3.6.1.4.1.9590.100.1.2.13/000001.dcm"
    )
    assert series_uid(cell) == "1.3.6.1.4.1.9590.100.1.2.13"
    assert series_uid("no/uid/here.dcm") is None
