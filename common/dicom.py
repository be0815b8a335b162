"""Reading mammograms and the paper's window adjustment (Sec. 2.2.1, "Window Adjustment").

Reading goes through pydicom (with the pylibjpeg plugins for JPEG, JPEG 2000 and RLE). The Modality LUT
(*Rescale Slope/Intercept* or a *Modality LUT Sequence*) is applied with
:func:`pydicom.pixels.apply_modality_lut`; a *VOI LUT Sequence* with :func:`pydicom.pixels.apply_voi_lut`.
PNG and TIFF files are read as they are (no Modality LUT, no window).

The window adjustment of the paper maps the window's lower end ``c - w/2`` to 0 and its upper end
``c + w/2`` to 255 linearly; values outside are clipped to 0 and 255. Note that this is the paper's
formula, not DICOM's ``c - 0.5 - (w - 1)/2`` variant. MONOCHROME1 images are inverted inside the same
mapping so that tissue is always bright and the background is 0.

Every problem with an input file raises :class:`common.errors.InputError` with a one-line message that
names the file.

Size limit: an image whose header declares more than :func:`pixel_limit` pixel values
(``Rows * Columns * SamplesPerPixel * NumberOfFrames`` for DICOM, compressed or not; width x height x
channels (x pages) for PNG/TIFF) is refused from its header, before any pixel is decoded, so that a
small hostile file cannot make the reader allocate gigabytes. The limit is :data:`DEFAULT_MAX_PIXELS`
(100 million, several times the largest mammography detector), overridden by the environment variable
``DEEPLIMA_MAX_PIXELS`` or the ``max_pixels`` argument of the readers.

Saturation: :func:`window_image` refuses a window whose output is constant (nothing left to see) and
adds a warning to its record when the window saturates almost every pixel (see
:func:`window_saturation`).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import tifffile
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from skimage.filters import threshold_otsu

from common.errors import InputError
from common.io import read_png
from common.limits import (  # noqa: F401  (re-exported: the readers' size limit)
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    check_pixel_count,
    check_raster_size,
    pixel_limit,
    raster_header_size,
)

#: Suffixes read as ordinary image files; everything else is tried as DICOM.
RASTER_SUFFIXES = (".png", ".tif", ".tiff")

@dataclass
class LoadedImage:
    """A decoded single-frame greyscale image.

    Attributes:
        pixels: float32 (H, W), Modality-LUT output values (DICOM) or raw values (PNG/TIFF).
            Row 0 is the top of the image, column 0 its left edge, as stored in the file.
        meta: json-able dict: source, pixel_spacing ([row_mm, col_mm] or None), pixel_spacing_source
            (see :func:`pixel_spacing_info`), modality, sop_class_uid, study_instance_uid,
            series_instance_uid, sop_instance_uid, frame_of_reference_uid, patient_id (None when
            absent), laterality ("L"/"R"/None), view (:func:`image_view`), photometric,
            presentation_intent, bits_stored, rows, cols, transfer_syntax, window_centers /
            window_widths (all values from the file, [] when absent), voi_lut (bool).
        dataset: the pydicom header (no pixel data) for DICOM input, needed to apply a VOI LUT Sequence;
            None for PNG/TIFF input and arrays.
    """

    pixels: np.ndarray
    meta: dict[str, Any]
    dataset: Any = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")


def _first(value: Any) -> Any:
    """First item of a DICOM multi-value, or the value itself."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _as_list_of_float(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value]
    return [float(value)]


def dicom_meta(ds: Any, source: str) -> dict[str, Any]:
    """The json-able metadata kept from a DICOM header (see :class:`LoadedImage`).

    A header element that cannot be read as its type (e.g. a non-numeric WindowCenter) raises
    :class:`InputError` naming the file, like every other input problem.
    """
    try:
        return _dicom_meta(ds, source)
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(source, f"malformed DICOM header value ({e})") from None


#: Where :func:`pixel_spacing_info` took the spacing from.
SPACING_SOURCES = (
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor",
)


def spacing_pair(ds: Any, key: str) -> list[float] | None:
    """Two positive finite numbers from element ``key`` of a header (or any mapping with ``get``:
    a pre-processing record's meta), or None."""
    value = ds.get(key)
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0:
        return [row, col]
    return None


def pixel_spacing_info(ds: Any) -> dict[str, Any] | None:
    """The physical pixel spacing of a DICOM header and where it comes from, or None.

    Returns ``{"spacing_mm": [row_mm, col_mm], "source": ...}`` (``source`` one of
    :data:`SPACING_SOURCES`):

    * ``PixelSpacing`` when present: the spacing in the patient (for mammograms, at the breast
      support or corrected by the manufacturer);
    * else ``ImagerPixelSpacing`` (the spacing at the detector) divided by
      ``EstimatedRadiographicMagnificationFactor`` when that is a number > 0 (recorded as
      ``magnification``): the detector spacing brought back to the object;
    * else ``ImagerPixelSpacing`` as it is.

    A spacing that is not two positive finite numbers counts as absent.
    """
    spacing = spacing_pair(ds, "PixelSpacing")
    if spacing is not None:
        return {"spacing_mm": spacing, "source": SPACING_SOURCES[0]}
    spacing = spacing_pair(ds, "ImagerPixelSpacing")
    if spacing is None:
        return None
    try:
        factor = float(ds.get("EstimatedRadiographicMagnificationFactor"))
    except (TypeError, ValueError):
        factor = float("nan")
    if np.isfinite(factor) and factor > 0:
        return {
            "spacing_mm": [spacing[0] / factor, spacing[1] / factor],
            "source": SPACING_SOURCES[2],
            "magnification": factor,
        }
    return {"spacing_mm": spacing, "source": SPACING_SOURCES[1]}


def pixel_spacing(ds: Any) -> list[float] | None:
    """[row_mm, col_mm] of a DICOM header, or None: the project's one pixel-spacing rule (readers,
    converters, metrics); see :func:`pixel_spacing_info` for the rule and the source."""
    info = pixel_spacing_info(ds)
    return info["spacing_mm"] if info else None


def read_dicom_header(path: str | Path) -> Any:
    """pydicom dataset without pixel data; raises :class:`InputError` for unreadable files."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises several types for broken files
        raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None


# A DICOM UID: numeric components separated by dots (PS3.5 9.1), at most 64 characters.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def dicom_bytes(ds: Any) -> bytes:
    """The DICOM Part 10 file bytes (preamble, file meta, data set) of the pydicom dataset ``ds``."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def is_uid(value: Any) -> bool:
    """Whether ``value`` is a DICOM UID string (digits and dots, at most 64 characters): what may
    name a file or folder after a UID."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def _text(ds: Any, keyword: str) -> str | None:
    """A header value as stripped text (the first of a multi-value), None when absent or empty."""
    value = _first(ds.get(keyword))
    text = str(value).strip() if value is not None else ""
    return text or None


def sop_class_uid(ds: Any) -> str | None:
    """SOP Class UID of the data set, else the file meta's Media Storage SOP Class UID."""
    uid = _text(ds, "SOPClassUID")
    if uid is None:
        uid = _text(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPClassUID")
    return uid


def image_laterality(ds: Any) -> str | None:
    """"L", "R", "B" or "U" from ImageLaterality, else the series' Laterality; None when absent."""
    value = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
    return value.upper() if value else None


# Mammography views (CID 4014) by code, and by code meaning with case, spaces and hyphens removed.
_VIEW_BY_CODE = {
    ("SCT", "399162004"): "CC",
    ("SCT", "399368009"): "MLO",
    ("SCT", "399260004"): "ML",
    ("SCT", "399352003"): "LM",
    ("SRT", "R-10242"): "CC",
    ("SRT", "R-10226"): "MLO",
    ("SRT", "R-10224"): "ML",
    ("SRT", "R-10228"): "LM",
}
_VIEW_BY_MEANING = {
    "craniocaudal": "CC",
    "mediolateraloblique": "MLO",
    "mediolateral": "ML",
    "lateromedial": "LM",
    "lateromedialoblique": "LMO",
    "craniocaudalexaggeratedlaterally": "XCCL",
    "craniocaudalexaggeratedmedially": "XCCM",
    "caudocranial(frombelow)": "FB",
    "superolateraltoinferomedialoblique": "SIO",
    "cleavage": "CV",
    "axillarytail": "AT",
}


def image_view(ds: Any) -> str | None:
    """The view ("CC", "MLO", ...): ViewPosition, else the first item of ViewCodeSequence (by its
    code, else its code meaning, else the meaning as written); None when neither says."""
    view = _text(ds, "ViewPosition")
    if view:
        return view.upper()
    items = ds.get("ViewCodeSequence") or []
    if not items:
        return None
    item = items[0]
    scheme = (_text(item, "CodingSchemeDesignator") or "").upper()
    key = (scheme, _text(item, "CodeValue") or "")
    if key in _VIEW_BY_CODE:
        return _VIEW_BY_CODE[key]
    meaning = _text(item, "CodeMeaning")
    if not meaning:
        return None
    return _VIEW_BY_MEANING.get("".join(meaning.lower().replace("-", " ").split()), meaning)


def image_identity(ds: Any) -> dict[str, str | None]:
    """Who an image is, from its header: modality, SOP class, study / series / SOP instance and
    frame-of-reference UIDs, patient ID, laterality and view (None for what is absent)."""
    return {
        "modality": _text(ds, "Modality"),
        "sop_class_uid": sop_class_uid(ds),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
        "patient_id": _text(ds, "PatientID"),
        "laterality": image_laterality(ds),
        "view": image_view(ds),
    }


#: Digital Mammography X-Ray Image Storage - For Presentation / - For Processing.
MG_FOR_PRESENTATION_SOP = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING_SOP = "1.2.840.10008.5.1.4.1.1.1.2.1"
#: Secondary Capture Image Storage and its multi-frame variants.
SECONDARY_CAPTURE_SOPS = frozenset(
    ["1.2.840.10008.5.1.4.1.1.7"] + [f"1.2.840.10008.5.1.4.1.1.7.{i}" for i in range(1, 5)]
)


def _sop_name(uid: str | None) -> str:
    if not uid:
        return "no SOP Class UID"
    name = pydicom.uid.UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def mammogram_skip_reason(ds: Any) -> str | None:
    """None when a DICOM header is a mammogram to predict on, else the one-line reason why not.

    Predicted on: Modality MG with SOP class Digital Mammography X-Ray Image - For Presentation; and
    Secondary Captures with Modality MG whose SeriesDescription says "full mammogram" (how
    CBIS-DDSM stores its digitised films). Not predicted on: For Processing mammograms (raw detector
    data); Secondary Captures that are ROI masks or lesion crops (SeriesDescription "ROI mask
    images", "cropped images", or an ImageType / description naming a mask, ROI or crop) and any
    other Secondary Capture, since screenshots, rendered reports and derived pictures are stored
    that way too and only a description saying "full mammogram" tells a whole mammogram apart;
    segmentations, structured reports and every other SOP class; other modalities.
    """
    sop = sop_class_uid(ds)
    modality = (_text(ds, "Modality") or "").upper()
    what = _sop_name(sop)
    if sop == MG_FOR_PROCESSING_SOP:
        return "FOR PROCESSING mammogram (raw detector data); only FOR PRESENTATION images are used"
    if sop in SECONDARY_CAPTURE_SOPS:
        if modality != "MG":
            return f"Secondary Capture of modality {modality or '(none)'}, not a mammogram"
        description = (_text(ds, "SeriesDescription") or "").lower()
        image_type = " ".join(str(v) for v in (ds.get("ImageType") or [])).lower()
        words = f"{description} {image_type}"
        if "full mammogram" in description:
            return None
        if "mask" in words or "roi" in words.split():
            return (f"ROI mask or lesion crop (Secondary Capture, SeriesDescription "
                    f"{description!r}), not a mammogram")
        if "crop" in words:
            return (f"cropped lesion image (Secondary Capture, SeriesDescription {description!r}), "
                    "not a whole mammogram")
        return (f"Secondary Capture (SeriesDescription {description or '(none)'!r}) not described "
                "as a full mammogram; only acquired mammograms are used")
    if sop != MG_FOR_PRESENTATION_SOP:
        return f"{what}, Modality {modality or '(none)'}: not a mammography image"
    if modality != "MG":
        return f"Modality {modality or '(none)'} with a mammography SOP class; only MG is used"
    return None


def _dicom_meta(ds: Any, source: str) -> dict[str, Any]:
    spacing = pixel_spacing_info(ds)
    identity = image_identity(ds)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "source": source,
        "pixel_spacing": spacing["spacing_mm"] if spacing else None,
        "pixel_spacing_source": spacing["source"] if spacing else None,
        **identity,
        "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
        "presentation_intent": str(ds.get("PresentationIntentType", "")) or None,
        "bits_stored": int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
        "rows": int(ds.get("Rows", 0)),
        "cols": int(ds.get("Columns", 0)),
        "transfer_syntax": str(ts) if ts else None,
        "window_centers": _as_list_of_float(ds.get("WindowCenter")),
        "window_widths": _as_list_of_float(ds.get("WindowWidth")),
        "voi_lut": bool(ds.get("VOILUTSequence")),
    }


def _header_int(ds: Any, keyword: str, default: int, path: Path) -> int:
    value = ds.get(keyword, default)
    value = default if value is None or value == "" else value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(path, f"malformed DICOM header value {keyword}={value!r}") from None


def _check_dicom_header(ds: Any, path: Path, limit: int | None = None) -> None:
    """Reject what the pipeline cannot use, before decoding any pixel."""

    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if other:
            raise InputError(path, f"{other[0]} (float pixel data) is not supported")
        # pydicom stops quietly at the end of a file cut short inside its header, so a truncated file
        # also lands here; the size tells the two apart only when Rows/Columns were read.
        raise InputError(path, f"DICOM file without pixel data (none stored, or the file is "
                               f"truncated: {path.stat().st_size} bytes)")
    intent = str(ds.get("PresentationIntentType", "")).upper()
    if intent == "FOR PROCESSING":
        raise InputError(
            path,
            "FOR PROCESSING image (raw detector data); only FOR PRESENTATION images are supported",
        )
    rows, cols = _header_int(ds, "Rows", 0, path), _header_int(ds, "Columns", 0, path)
    if rows <= 0 or cols <= 0:
        raise InputError(path, f"empty image ({rows}x{cols} pixels)")
    frames = max(1, _header_int(ds, "NumberOfFrames", 1, path))
    samples = max(1, _header_int(ds, "SamplesPerPixel", 1, path))
    # Before anything is decoded (compressed data included: its decoder allocates the declared size).
    check_pixel_count(
        path,
        rows * cols * samples * frames,
        f"{cols} x {rows} pixels x {samples} sample(s) x {frames} frame(s)",
        limit,
    )
    if frames > 1:
        raise InputError(path, f"multi-frame image ({frames} frames) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            path,
            f"colour or non-greyscale image (PhotometricInterpretation {photometric or '?'}, "
            f"{samples} samples per pixel) is not supported",
        )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return  # pydicom assumes Implicit VR Little Endian
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(
            path, f"unsupported compression / transfer syntax {ts.name} ({ts})"
        ) from None
    if not decoder.is_available:
        raise InputError(
            path,
            f"no installed decoder for transfer syntax {ts.name} ({ts}); install pylibjpeg plugins",
        )
    if not ts.is_compressed:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        expected = (rows * cols * samples * bits + 7) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise InputError(path, f"truncated pixel data ({got} of {expected} bytes)")


def read_dicom_dataset(path: str | Path, max_pixels: int | None = None) -> Any:
    """Read and validate a DICOM file; returns the pydicom ``FileDataset`` (pixels not decoded yet).

    ``max_pixels``: size limit checked on the header (see :func:`pixel_limit`; None = the default or
    ``$DEEPLIMA_MAX_PIXELS``).
    """

    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no 'DICM' marker) and not a PNG/TIFF") from None
    except Exception as e:  # truncated headers show up as EOFError, struct.error, OSError, ...
        raise InputError(
            path, f"unreadable or truncated DICOM file ({type(e).__name__}: {e})"
        ) from None
    _check_dicom_header(ds, path, max_pixels)
    return ds


def _modality_lut(stored: np.ndarray, ds: Any) -> np.ndarray:
    """``apply_modality_lut`` as float32, through a lookup table for 8/16-bit data (same values, faster)."""

    if stored.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        unsigned = np.dtype(f"uint{stored.dtype.itemsize * 8}")
        all_values = np.arange(np.iinfo(unsigned).max + 1, dtype=unsigned).view(stored.dtype)
        table = np.asarray(apply_modality_lut(all_values, ds), dtype=np.float32)
        return table[stored.view(unsigned)]
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


def load_dicom(path: str | Path, max_pixels: int | None = None) -> LoadedImage:
    """Decode a single-frame greyscale DICOM and apply its Modality LUT (``max_pixels``: see
    :func:`read_dicom_dataset`)."""
    path = Path(path)
    ds = read_dicom_dataset(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f"{ts.name} " if ts is not None else ""
        raise InputError(
            path, f"cannot decode {what}pixel data ({type(e).__name__}: {msg})"
        ) from None
    if stored.ndim != 2:
        raise InputError(
            path, f"expected a single greyscale frame, got pixel array shape {stored.shape}"
        )
    meta = dicom_meta(ds, str(path))
    pixels = _modality_lut(stored, ds)
    del ds.PixelData  # keep the header only; the pixels live in `pixels`
    check_not_constant(pixels, path)
    return LoadedImage(pixels=pixels, meta=meta, dataset=ds)


def check_not_constant(pixels: np.ndarray, path: str | Path | None) -> None:
    """Raise :class:`InputError` for an empty, constant or non-finite image."""
    if pixels.size == 0:
        raise InputError(path, "empty image (no pixels)")
    lo, hi = float(pixels.min()), float(pixels.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise InputError(path, "image contains NaN or infinite values")
    if lo == hi:
        raise InputError(path, f"constant image (every pixel is {lo:g})")


def raster_meta(source: str, shape: tuple[int, int]) -> dict[str, Any]:
    """Metadata for a PNG/TIFF file or an array: nothing but the size is known."""
    return {
        "source": source,
        "pixel_spacing": None,
        "pixel_spacing_source": None,
        "modality": None,
        "sop_class_uid": None,
        "study_instance_uid": None,
        "series_instance_uid": None,
        "sop_instance_uid": None,
        "frame_of_reference_uid": None,
        "patient_id": None,
        "laterality": None,
        "view": None,
        "photometric": "MONOCHROME2",
        "presentation_intent": None,
        "bits_stored": None,
        "rows": int(shape[0]),
        "cols": int(shape[1]),
        "transfer_syntax": None,
        "window_centers": [],
        "window_widths": [],
        "voi_lut": False,
    }


def load_raster(path: str | Path, max_pixels: int | None = None) -> LoadedImage:
    """Read a greyscale PNG or TIFF (any integer or float bit depth) as float32 pixels.

    The size declared in the header is checked against ``max_pixels`` (see :func:`pixel_limit`) before
    decoding.
    """
    path = Path(path)
    _check_file(path)
    check_raster_size(path, max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = np.asarray(tifffile.imread(path))
        else:
            arr = read_png(path)
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"unreadable image file ({type(e).__name__}: {e})") from None
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise InputError(path, "colour image is not supported (greyscale only)")
        arr = rgb[..., 0]
    if arr.ndim != 2:
        raise InputError(path, f"expected a single greyscale image, got array shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    pixels = arr.astype(np.float32)
    check_not_constant(pixels, path)
    return LoadedImage(pixels=pixels, meta=raster_meta(str(path), pixels.shape))


def load_image(path: str | Path, max_pixels: int | None = None) -> LoadedImage:
    """Read a DICOM, PNG or TIFF file (chosen by suffix: .png/.tif/.tiff, anything else is DICOM).

    ``max_pixels``: largest accepted image (pixel values), checked on the header before decoding;
    None = ``$DEEPLIMA_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`.
    """
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return load_raster(path, max_pixels)
    return load_dicom(path, max_pixels)


def read_image(
    path: str | Path, max_pixels: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file; returns (float32 (H, W) Modality-LUT pixels, json-able meta dict).

    The pixels are in the stored orientation (row 0 = top, column 0 = left). MONOCHROME1 data is NOT
    inverted here (``meta["photometric"]`` says so); :func:`window_image` does that.
    """
    loaded = load_image(path, max_pixels)
    return loaded.pixels, loaded.meta


# ----------------------------------------------------------------------------------------------------
# Window adjustment
# ----------------------------------------------------------------------------------------------------
class WindowIntensity:
    """The paper's window adjustment: ``c - w/2 -> 0``, ``c + w/2 -> 255``, linear, clipped to [0, 255].

    Shaped like MONAI's ``ScaleIntensityRange``: parameters in ``__init__``, a pure ``__call__``.

    Args:
        center: window centre ``c`` in the input's units (Modality-LUT output for DICOM).
        width: window width ``w`` > 0.
        invert: for MONOCHROME1 data: map ``c + w/2 -> 0`` and ``c - w/2 -> 255`` instead, so that the
            result equals the window of the MONOCHROME2 version of the same image.

    ``__call__(x)`` takes any real (H, W) array and returns uint8 (H, W). Values are rounded half up
    (``floor(y + 0.5)``). Edge cases: ``w <= 0`` or a non-finite parameter raises ``ValueError`` at
    construction; inputs must be finite (the readers reject NaN/inf images).
    """

    def __init__(self, center: float, width: float, invert: bool = False):
        center, width = float(center), float(width)
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            raise ValueError(
                f"window needs a finite centre and a width > 0, got c={center}, w={width}"
            )
        self.center = center
        self.width = width
        self.invert = bool(invert)
        self.low = center - width / 2.0
        self.high = center + width / 2.0
        self.scale = 255.0 / width

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        work = np.float64 if x.dtype == np.float64 else np.float32
        # Subtract first: for integer-valued x and a half-integer or integer window end the difference
        # is exact, so MONOCHROME1 (high - x') and MONOCHROME2 (x - low) give bit-identical results.
        if self.invert:
            y = np.subtract(work(self.high), x, dtype=work)
        else:
            y = np.subtract(x, work(self.low), dtype=work)
        y *= work(self.scale)
        y += work(0.5)
        np.clip(y, 0, 255, out=y)
        return y.astype(np.uint8)

    def __repr__(self) -> str:
        return (
            f"WindowIntensity(center={self.center:g}, width={self.width:g}, invert={self.invert})"
        )


def apply_window(x: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """Functional form of :class:`WindowIntensity`: uint8 (H, W) from real (H, W)."""
    return WindowIntensity(center, width, invert)(x)


def rescale_voi_lut_output(
    voi: np.ndarray, lut_min: float, lut_max: float, invert: bool
) -> np.ndarray:
    """Map a VOI LUT's output range [lut_min, lut_max] linearly to 0..255 (uint8)."""
    if lut_max <= lut_min:
        raise ValueError("VOI LUT has a constant output")
    center, width = (lut_min + lut_max) / 2.0, float(lut_max - lut_min)
    return apply_window(voi.astype(np.float32), center, width, invert)


def fallback_window(
    pixels: np.ndarray,
    invert: bool = False,
    sample_step: int = 4,
    background_sigmas: float = 5.0,
    upper_percentile: float = 99.5,
    clipped_fraction: float = 0.05,
) -> tuple[float, float]:
    """Window (c, w) for an image without window tags, from its non-background pixels.

    Works on display-oriented values ``d = -x`` for MONOCHROME1 (``invert=True``), ``d = x`` otherwise,
    sampled every ``sample_step`` pixels in each direction:

    1. Background level. When at least ``clipped_fraction`` of the pixels sit exactly at the image
       minimum, the background was clipped or padded to that value (the digitised films of CBIS-DDSM
       are) and the window low end is one grey step above it. Otherwise Otsu's threshold splits
       background from tissue; the background level is the median ``b`` of the darker class, its
       noise ``s`` 1.4826 x its median absolute deviation.
    2. Window low end ``L = b + background_sigmas * s`` (at least one grey step above ``b``), so that
       the background, noise included, maps to 0 as the paper's breast extraction expects.
    3. Window high end ``H`` = the ``upper_percentile`` of the pixels of the largest connected region
       above ``L`` (the breast; burned-in labels, often the brightest pixels of a film, are left out).
       The brightest 0.5 % of the breast (calcifications) saturate at 255.

    Returns (c, w) in the units of ``x``: ``c = (L + H) / 2`` (negated back for MONOCHROME1), ``w = H - L``.
    """

    sub = np.asarray(pixels[::sample_step, ::sample_step], dtype=np.float64)
    if invert:
        sub = -sub
    sub = np.where(np.isfinite(sub), sub, np.nan)
    lowest = np.nanmin(sub)
    d = sub[sub > lowest]
    if d.size == 0:
        raise ValueError("cannot compute a window for a constant image")
    if d.min() == d.max():  # a two-valued image: the window spans its two values
        return _center_width(float(lowest), float(d.max()), invert)
    values = np.unique(d[:: max(1, d.size // 100_000)])  # grey step, from a spread-out sample
    step = float(np.min(np.diff(values))) if values.size > 1 else 1.0
    if np.mean(sub == lowest) >= clipped_fraction:
        b, low = float(lowest), float(lowest) + step
    else:
        t = threshold_otsu(d, nbins=1024)
        background = d[d <= t]
        b = float(np.median(background))
        s = 1.4826 * float(np.median(np.abs(background - b)))
        low = b + max(background_sigmas * s, step)
    if low >= float(d.max()):
        low = b
    fg = (sub > low).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n > 1:
        tissue = sub[labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    else:
        tissue = d[d > b]
    high = float(np.percentile(tissue, upper_percentile)) if tissue.size else float(d.max())
    if high <= low:
        low, high = float(lowest), float(d.max())
    return _center_width(low, high, invert)


def _center_width(low: float, high: float, invert: bool) -> tuple[float, float]:
    center = (low + high) / 2.0
    return float(-center if invert else center), float(high - low)


#: A window leaving fewer than this fraction of the non-zero pixels below 255 is "saturated to white".
SATURATED_WHITE_FRACTION = 0.95
#: A window leaving fewer than this fraction of all pixels strictly between 0 and 255 is "saturated".
SATURATED_GREY_FRACTION = 0.01


def window_saturation(image: np.ndarray, source: str | Path | None, what: str = "window") -> list[str]:
    """Check a windowed uint8 image for a window that leaves (almost) nothing to see.

    Raises :class:`InputError` when the image is constant (every pixel 0: the window hides the whole
    image; every pixel 255 or any other single value: it saturates it). Returns a list with one warning
    when the window is saturated: at least :data:`SATURATED_WHITE_FRACTION` of the non-zero pixels
    (the breast, background being 0) are 255, or fewer than :data:`SATURATED_GREY_FRACTION` of all
    pixels have a grey level strictly between 0 and 255. Otherwise returns [].
    """

    image = np.ascontiguousarray(image, dtype=np.uint8)
    n = int(image.size)
    if n == 0:
        raise InputError(source, "empty image after windowing")
    hist = cv2.calcHist([image.reshape(image.shape[0], -1)], [0], None, [256], [0, 256]).ravel()
    n0, n255 = int(hist[0]), int(hist[255])
    if int(np.count_nonzero(hist)) == 1:
        v = int(np.argmax(hist))
        if v == 0:
            why = "no non-zero pixel after windowing (the window hides the whole image)"
        else:
            why = (f"constant image after windowing (every pixel is {v}): the {what} saturates "
                   "the whole image, nothing is left to see")
        raise InputError(source, why)
    grey = n - n0 - n255
    foreground = n - n0
    if foreground and n255 >= SATURATED_WHITE_FRACTION * foreground:
        return [f"saturated {what}: {100.0 * n255 / foreground:.1f}% of the non-zero (breast) pixels "
                "are white (255); the window is probably wrong for this image"]
    if grey < SATURATED_GREY_FRACTION * n:
        return [f"saturated {what}: only {100.0 * grey / n:.2f}% of the pixels lie strictly "
                f"between 0 and 255 ({100.0 * n0 / n:.1f}% at 0, {100.0 * n255 / n:.1f}% at 255); "
                "the window is probably wrong for this image"]
    return []


def window_image(
    loaded: LoadedImage, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """Window a loaded image to uint8 (tissue bright, background 0).

    Order of preference: an explicit ``window=(c, w)``; the file's VOI LUT Sequence (first item, applied
    by pydicom, its output range rescaled to 0..255); the file's first WindowCenter/WindowWidth pair;
    otherwise :func:`fallback_window` with a warning.

    Returns (uint8 (H, W), record) where record = {"center", "width", "source", "invert", "warnings"};
    center/width are None for a VOI LUT (its descriptor is recorded instead).

    Raises :class:`InputError` when the windowed image is constant (nothing left to see) and adds a
    warning when the window saturates almost every pixel (see :func:`window_saturation`).
    """
    out, rec = _window_image(loaded, window)
    if rec.get("center") is not None:
        what = f"{rec['source']} window (c={rec['center']:.6g}, w={rec['width']:.6g})"
    else:
        what = "VOI LUT" if rec.get("source") == "voi_lut_sequence" else "window"
    rec["warnings"] = list(rec["warnings"]) + window_saturation(out, loaded.meta.get("source"), what)
    return out, rec


def _window_image(
    loaded: LoadedImage, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    meta = loaded.meta
    invert = str(meta.get("photometric") or "").upper() == "MONOCHROME1"
    warns: list[str] = []
    rec: dict[str, Any] = {"invert": invert}
    if window is not None:
        out = apply_window(loaded.pixels, window[0], window[1], invert)
        rec.update(center=float(window[0]), width=float(window[1]), source="argument")
        return out, {**rec, "warnings": warns}

    ds = loaded.dataset
    if ds is not None and meta.get("voi_lut"):
        item = ds.VOILUTSequence[0]
        desc = [int(v) for v in item.LUTDescriptor]
        # The VOI LUT indexes integer Modality-LUT output; rescaled data is rounded to integers first.
        values = np.rint(loaded.pixels).astype(np.int64)
        voi = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        lut = np.asarray(apply_voi_lut(np.arange(desc[1], desc[1] + (desc[0] or 65536)), ds, 0))
        lut_min, lut_max = float(lut.min()), float(lut.max())
        if lut_max > lut_min:
            out = rescale_voi_lut_output(voi, lut_min, lut_max, invert)
            rec.update(
                center=None,
                width=None,
                source="voi_lut_sequence",
                lut_descriptor=desc,
                lut_output_range=[lut_min, lut_max],
            )
            if len(ds.VOILUTSequence) > 1:
                warns.append(f"{len(ds.VOILUTSequence)} VOI LUTs in the file; used the first")
            return out, {**rec, "warnings": warns}
        warns.append("VOI LUT Sequence has a constant output; ignored")

    centers, widths = meta.get("window_centers") or [], meta.get("window_widths") or []
    if centers and widths:
        c, w = centers[0], widths[0]
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            if len(centers) > 1 or len(widths) > 1:
                warns.append(
                    f"{max(len(centers), len(widths))} windows in the file; used the first"
                )
            out = apply_window(loaded.pixels, c, w, invert)
            rec.update(center=c, width=w, source="file")
            return out, {**rec, "warnings": warns}
        warns.append(f"invalid window in the file (c={c}, w={w}); ignored")

    c, w = fallback_window(loaded.pixels, invert=invert)
    warns.append(
        "no usable window in the file; fallback window from the non-background pixels "
        f"(c={c:.6g}, w={w:.6g})"
    )
    out = apply_window(loaded.pixels, c, w, invert)
    rec.update(center=c, width=w, source="fallback")
    return out, {**rec, "warnings": warns}
