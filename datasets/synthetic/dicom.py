"""The DICOM writer: one Digital Mammography X-Ray Image - For Presentation IOD per image.

Each file holds everything that IOD requires (patient, study, series, frame of reference, equipment,
DX and mammography image modules), as dicom3tools' ``dciodvfy`` checks in
``tests/datasets/test_synthetic_dciodvfy.py``. View and anatomy are coded (SNOMED CT) beside View
Position and Image Laterality; Rescale Slope and Intercept are 1 and 0, as the DX Image module
requires; the display window is a Window Center/Width (one or two) or a VOI LUT Sequence, one of
which a For Presentation image must have.

Deterministic: UIDs are hashes of the seed and the image identity, and the dates and times are a
fixed synthetic value (no clock), so the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from datasets.synthetic.constants import GENERATOR_VERSION, MG_FOR_PRESENTATION

SYNTHETIC_DATE, SYNTHETIC_TIME = "20000101", "120000"

# View Code Sequence (CID 4014, SNOMED CT) per View Position.
VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}

# VOI LUT Sequence entries hold this many bits (LUT Descriptor, third value).
VOI_LUT_BITS = 12

# DICOM Patient Orientation (row direction, column direction) per laterality and view.
PATIENT_ORIENTATION = {
    ("R", "CC"): ["A", "R"],
    ("L", "CC"): ["P", "L"],
    ("R", "MLO"): ["A", "FR"],
    ("L", "MLO"): ["P", "FL"],
}


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID in the UUID-derived ``2.25.`` root (hash of ``parts``)."""
    digest = hashlib.sha256(
        "/".join(str(p) for p in ("deeplima-synthetic",) + parts).encode()
    ).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a decimal string")


def _code(value: str, meaning: str) -> Dataset:
    """A SNOMED CT code sequence item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def _voi_lut_item(center: float, width: float) -> Dataset:
    """A VOI LUT Sequence item tabulating the window (c, w) over the integer modality values it
    spans: ``c - w/2`` maps to 0, ``c + w/2`` to the largest entry, linearly; values before the
    first entry take the first one, values after the last the last one (PS3.3 C.11.2.1.1)."""
    first = max(0, int(np.floor(center - width / 2.0)))
    last = int(np.ceil(center + width / 2.0))
    n = min(max(last - first + 1, 2), 1 << 16)
    top = (1 << VOI_LUT_BITS) - 1
    x = np.arange(first, first + n, dtype=np.float64)
    table = np.clip(np.rint((x - (center - width / 2.0)) / width * top), 0, top).astype("<u2")
    item = Dataset()
    # 65536 entries are written as 0 (PS3.3 C.11.2.1.1); first mapped value, bits per entry
    item.add_new(0x00283002, "US", [n % (1 << 16), first, VOI_LUT_BITS])  # LUT Descriptor
    item.LUTExplanation = "NORMAL"
    item.add_new(0x00283006, "OW", table.tobytes())  # LUT Data
    return item


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DEEPLIMA_SYN_1"
    return meta


def _set_identity(
    ds: Dataset,
    p: dict,
    *,
    patient_id: str,
    seed: int,
    study: int,
    view_index: int,
    sop_uid: str,
) -> None:
    """SOP, study, series, patient and view attributes (no dates: type 2, deliberately empty)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    # A fixed date and time: the output must not depend on the clock.
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = SYNTHETIC_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = SYNTHETIC_TIME
    ds.AccessionNumber = f"SYN{seed % 100000:05d}{study + 1:06d}"[:16]
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "DeepLIMa synthetic"
    ds.ManufacturerModelName = "datasets.synthetic"
    ds.SoftwareVersions = GENERATOR_VERSION
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"{p['laterality']} {p['view']}"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "YES"
    ds.StudyInstanceUID = _uid(seed, patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, patient_id, view_index, "series")
    ds.FrameOfReferenceUID = _uid(seed, patient_id, view_index, "frame")
    ds.PositionReferenceIndicator = ""
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = view_index + 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = PATIENT_ORIENTATION[(p["laterality"], p["view"])]
    ds.ImageLaterality = p["laterality"]
    ds.ViewPosition = p["view"]
    ds.AnatomicRegionSequence = [_code("76752008", "Breast")]
    view = _code(*VIEW_CODES[p["view"]])
    view.ViewModifierCodeSequence = []  # type 2: no modifier (no spot, magnification, ...)
    ds.ViewCodeSequence = [view]
    ds.AcquisitionContextSequence = []
    ds.ContrastBolusAgent = ""  # type 2: no contrast agent
    ds.DetectorType = "DIRECT"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"


def _set_pixel_module(ds: Dataset, pixels: np.ndarray, p: dict) -> None:
    """Image pixel, rescale, VOI LUT (window) and presentation attributes, and the pixel data."""
    h, w = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = p["photometric"]
    ds.Rows, ds.Columns = h, w
    sp = _ds(p["pixel_spacing_mm"])
    ds.PixelSpacing = [sp, sp]
    ds.ImagerPixelSpacing = [sp, sp]
    ds.BitsAllocated = 16
    ds.BitsStored = p["bits_stored"]
    ds.HighBit = p["bits_stored"] - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # +1: higher stored value = more x-ray intensity (MONOCHROME1 here, tissue stored low)
    ds.PixelIntensityRelationshipSign = 1 if p["photometric"] == "MONOCHROME1" else -1
    ds.RescaleIntercept = _ds(p["rescale_intercept"])
    ds.RescaleSlope = _ds(p["rescale_slope"])
    ds.RescaleType = "US"
    win = p["window"]
    if win["mode"] == "voi_lut":
        ds.VOILUTSequence = [_voi_lut_item(win["center"][0], win["width"][0])]
    elif win["mode"] == "single":
        ds.WindowCenter, ds.WindowWidth = _ds(win["center"][0]), _ds(win["width"][0])
        ds.WindowCenterWidthExplanation = "NORMAL"
        ds.VOILUTFunction = "LINEAR"
    else:
        ds.WindowCenter = [_ds(v) for v in win["center"]]
        ds.WindowWidth = [_ds(v) for v in win["width"]]
        ds.WindowCenterWidthExplanation = ["NORMAL", "FULL RANGE"]
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "INVERSE" if p["photometric"] == "MONOCHROME1" else "IDENTITY"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"


def build_dicom(
    pixels: np.ndarray,
    p: dict,
    *,
    patient_id: str,
    stem: str,
    seed: int,
    study: int,
    view_index: int,
) -> FileDataset:
    """A pydicom ``FileDataset`` for one image; UIDs are hashes of (seed, patient, view).

    ``pixels`` are the uint16 (Rows, Columns) stored values (final frame, see
    :func:`datasets.synthetic.acquisition.stored_pixels`); ``p`` the image parameters
    (``laterality``, ``view``, ``photometric``, ``bits_stored``, ``pixel_spacing_mm``, rescale and
    ``window``). ``stem`` is accepted for the caller's convenience and not written.
    """
    sop_uid = _uid(seed, patient_id, view_index, "sop")
    ds = FileDataset(None, {}, file_meta=_file_meta(sop_uid), preamble=b"\0" * 128)
    _set_identity(
        ds, p, patient_id=patient_id, seed=seed, study=study, view_index=view_index, sop_uid=sop_uid
    )
    _set_pixel_module(ds, pixels, p)
    return ds


