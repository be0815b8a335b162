"""The DICOM writer: one Digital Mammography X-Ray Image (For Presentation) per image.

Deterministic: UIDs are hashes of the seed and the image identity, and no date, time or other
clock-dependent value is written, so the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from datasets.synthetic.constants import MG_FOR_PRESENTATION

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
    ds.StudyDate = ""  # type 2: deliberately empty, the output must not depend on the clock
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "DeepLIMa synthetic"
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
    ds.ViewCodeSequence = [
        _code("399162004", "cranio-caudal")
        if p["view"] == "CC"
        else _code("399368009", "medio-lateral oblique")
    ]
    ds.AcquisitionContextSequence = []


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
    if win["mode"] != "absent":
        if win["mode"] == "single":
            ds.WindowCenter, ds.WindowWidth = _ds(win["center"][0]), _ds(win["width"][0])
            ds.WindowCenterWidthExplanation = "NORMAL"
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


def dicom_bytes(ds) -> bytes:
    """The DICOM Part 10 file bytes (preamble, file meta, data set) of ``ds``."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
