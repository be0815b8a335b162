"""DICOM objects of one prediction: a Segmentation of the calcification findings and a Structured
Report of every finding, both derived from the source mammogram, for a PACS or a DICOM viewer.

:func:`write_dicom_outputs` writes, for one :class:`~deeplima.pipeline.ImageResult` and its
per-image record (:func:`deeplima.writer.image_record`)::

    <stem>_seg.dcm        Segmentation Storage, BINARY, one segment "Calcification": the
                          calcification FINDINGS (components scoring >= the threshold) in the
                          original pixel frame. Written whenever the calcification model ran, also
                          with no finding: an empty segment says "looked, found nothing", which a
                          missing file cannot say apart from "not analysed".
    <stem>_prob_seg.dcm   (``fractional=True``) Segmentation Storage, FRACTIONAL / PROBABILITY: the
                          calcification probability map (8-bit, 255 = 1).
    <stem>_sr.dcm         Comprehensive SR, TID 1500 Measurement Report: per model one summary group
                          (number of findings, threshold; for calcifications the total area, and
                          the Tracking UID of the SEG's segment), then one group per mass finding
                          (its box as a closed SCOORD POLYLINE on the source image, score, width and
                          height) and one per calcification finding (box, score, area).

Both objects are derived with highdicom from the source DICOM header: they carry its patient and
study attributes, Study Instance UID and Frame of Reference UID, and reference its SOP Instance; the
Series and SOP Instance UIDs are new. A PNG/TIFF source (no DICOM header to derive from) raises
:class:`~common.errors.InputError`.

What the JSON says, the DICOM says: boxes, scores and findings come from the per-image record, the
mask from the result, thresholds from the record (how they were chosen from the record or, when it
does not say, from the model identity).

Geometry: SCOORD pixel coordinates are (column, row) with (0, 0) at the top-left corner of the
top-left pixel, the frame of the record's ``[x, y, w, h]`` boxes, so a box's corners are the
polyline's vertices as they are. Lengths and areas are in mm (mm²) when the source gives a pixel
spacing (``PixelSpacing``, else ``ImagerPixelSpacing``: :func:`common.dicom.pixel_spacing`);
without one, box sizes are left out (the polyline holds them in pixels) and areas are in pixels,
unit ``{pixels}``.

Segmentation geometry: a mammogram is a projection without an image plane in patient space; the SEG
matches it pixel for pixel (Derivation Image references). The Pixel Measures of a SEG with a Frame
of Reference need a Slice Thickness: the compressed breast thickness (``BodyPartThickness``) when
the source has one; otherwise the SEG carries no Pixel Measures (the source's spacing applies
through the pixel-for-pixel reference) rather than a made-up thickness.

Model identity (:func:`bundle_identity`): Algorithm Identification (name, version, family
"Artificial Intelligence", parameters: threshold, operating point, weights SHA-256) in every segment
and measurement group; Manufacturer "DeepLIMa", Manufacturer's Model Name = the algorithm name,
Software Versions = its version, Device Serial Number = a digest of the weights (General Equipment),
the Series Description, and the SR's device observer.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.dicom import RASTER_SUFFIXES, dicom_bytes, pixel_spacing, read_dicom_header
from common.errors import InputError
from common.io import atomic_write_bytes, sha256_file, write_together
from mass_det.engine.trainer import resolve_weights_file

from .bundle import NAMES, Bundle
from .pipeline import FindingsPredictor, ImageResult, pixel_spacing_of

__all__ = [
    "MANUFACTURER",
    "bundle_identity",
    "output_names",
    "write_dicom_outputs",
]

MANUFACTURER = "DeepLIMa"
SERIES_NUMBERS = {"seg": 9101, "prob_seg": 9102, "sr": 9103}

# coded concepts
CALCIFICATION = hd.sr.CodedConcept("18115005", "SCT", "Calcification")
MASS = codes.SCT.Mass
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
CERTAINTY = codes.DCM.CertaintyOfFinding  # the model's score, a probability in [0, 1]
THRESHOLD = codes.DCM.ThresholdValue
N_CALCIFICATIONS = codes.DCM.NumberOfCalcifications
N_LESIONS = hd.sr.CodedConcept("246206008", "SCT", "Number of lesions")
UNITLESS = codes.UCUM.NoUnits
MM = codes.UCUM.Millimeter
MM2 = codes.UCUM.SquareMillimeter
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
# finding type of a calcification component, by its shape rule (calc_seg's "type")
CALC_TYPES = {
    "dot": codes.SCT.IndividualCalcification,
    "vessel": codes.SCT.VascularCalcificationRadiographicFinding,
    "large": codes.SCT.CalcificationCluster,
}
LATERALITY = {"L": codes.SCT.Left, "R": codes.SCT.Right}


def output_names(stem: str) -> dict[str, str]:
    """The file names :func:`write_dicom_outputs` may write for ``stem``, by kind."""
    return {"seg": f"{stem}_seg.dcm", "prob_seg": f"{stem}_prob_seg.dcm", "sr": f"{stem}_sr.dcm"}


# ------------------------------------------------------------------------------------- identity
def _software_version() -> str:
    try:
        return metadata.version("deeplima")
    except metadata.PackageNotFoundError:
        return "unknown"


def _weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file; a URL is hashed from its local (cached) copy."""
    local = resolve_weights_file(str(path)) if "://" in str(path) else str(path)
    return sha256_file(local)


def _identity(name: str, weights_sha256: dict[str, str], **extra: Any) -> dict:
    software = _software_version()
    # the version names the weights too: two bundles of one release are different algorithms
    digest = hashlib.sha256(
        ";".join(f"{k}={v}" for k, v in sorted(weights_sha256.items())).encode()).hexdigest()
    return {"name": name, "version": f"{software}+w{digest[:12]}", "software_version": software,
            "weights_sha256": dict(weights_sha256), "weights_digest": digest, **extra}


def bundle_identity(source: Bundle | FindingsPredictor) -> dict:
    """The identity of the models behind a prediction, as :func:`write_dicom_outputs` records it.

    ``source``: a loaded :class:`~deeplima.bundle.Bundle`, a :class:`~deeplima.pipeline.Pipeline`
    (its bundle), or a single-model :class:`~deeplima.pipeline.FindingsPredictor` of
    :func:`~deeplima.pipeline.build_mass_pipeline` / :func:`~deeplima.pipeline.build_calc_pipeline`
    (its weights files).

    Returns:
        ``{"name", "version" (package version + a digest of the weights), "software_version",
        "weights_sha256": {"mass": hex, "calc": hex} (the kinds present), "weights_digest",
        "model_id", "operating_point" (how the thresholds were chosen, or None)}`` plus ``bundle``
        (its folder) and ``created`` for a bundle, ``weights`` (file names) for single models.

    Raises:
        InputError: a weights file cannot be read (one line naming it).
    """
    predictor = source if isinstance(source, FindingsPredictor) else None
    bundle = source if isinstance(source, Bundle) else getattr(source, "bundle", None)
    operating_point = (predictor.thresholds.get("source") if predictor is not None
                       else (bundle.operating_points.get("source") or None) if bundle else None)
    try:
        if isinstance(bundle, Bundle):
            card = bundle.model_card
            weights = {"mass": bundle.mass_weights, "calc": bundle.calc_weights}
            sha = {k: (card.get(k) or {}).get("weights_sha256") or _weights_sha256(p)
                   for k, p in weights.items()}
            return _identity(
                "DeepLIMa", sha, bundle=str(bundle.root.resolve()), created=card.get("created"),
                model_id=getattr(predictor, "model_id", None), operating_point=operating_point)
        if predictor is None:
            raise TypeError(f"bundle_identity needs a Bundle or a FindingsPredictor, got "
                            f"{type(source).__name__}")
        weights = dict(predictor.run_info.get("weights") or {})
        missing = [k for k in predictor.kinds if k not in weights]
        if missing:
            raise InputError(None, f"the predictor does not name its {missing[0]} weights file "
                                   f"(run_info['weights'])")
        sha = {k: _weights_sha256(weights[k]) for k in predictor.kinds}
    except OSError as e:
        raise InputError(getattr(e, "filename", None),
                         f"cannot read the weights ({e.strerror or type(e).__name__})") from None
    name = "DeepLIMa" if len(predictor.kinds) == 2 else f"DeepLIMa {NAMES[predictor.kinds[0]]}"
    return _identity(name, sha, weights={k: str(weights[k]) for k in predictor.kinds},
                     model_id=predictor.model_id, operating_point=operating_point)


# -------------------------------------------------------------------------------------- helpers
def _lo(text: str, limit: int = 64) -> str:
    """A value that fits a LO (64 characters) or a shorter string VR."""
    text = " ".join(str(text).split()).replace("\\", "/")
    return text if len(text) <= limit else text[: limit - 1] + "~"


def _read_source(result: ImageResult) -> pydicom.Dataset:
    """The source image's DICOM header (no pixel data), checked to match the result."""
    source = result.source
    if source == "<array>":
        raise InputError(source, "DICOM outputs need a DICOM source image (the input was an array)")
    if Path(source).suffix.lower() in RASTER_SUFFIXES:
        raise InputError(source, "DICOM outputs need a DICOM source image; a PNG/TIFF has no "
                                 "patient, study or UIDs to derive them from")
    ds = read_dicom_header(source)
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(key):
            raise InputError(source, f"DICOM source image without {key}: no DICOM outputs")
    shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    if shape != result.shape:
        raise InputError(source, f"DICOM source is {shape[0]} x {shape[1]} pixels but the "
                                 f"prediction {result.shape[0]} x {result.shape[1]} "
                                 f"(file changed?)")
    return ds


def _thresholds(record: Mapping, identity: Mapping) -> tuple[dict, str]:
    """(thresholds by kind, how they were chosen)."""
    thr = dict(record.get("thresholds") or {})
    how = thr.pop("source", None) or identity.get("operating_point") or "not recorded"
    return thr, str(how)


def _algorithm_parameters(kind: str, thresholds: Mapping, how: str, identity: Mapping
                          ) -> dict[str, str]:
    params = {"threshold": f"{float(thresholds[kind]):.6g}", "operating_point": how}
    sha = (identity.get("weights_sha256") or {}).get(kind)
    if sha:
        params["weights_sha256"] = str(sha)
    return params


def _serial(identity: Mapping) -> str:
    return _lo(str(identity.get("weights_digest") or identity.get("version") or "unknown")[:16])


def _equipment(ds: pydicom.Dataset, identity: Mapping, description: str) -> None:
    """General Series / Equipment attributes naming the model (after highdicom built ``ds``)."""
    ds.SeriesDescription = _lo(f"{identity['name']} {description}")
    ds.ManufacturerModelName = _lo(identity["name"])
    ds.SoftwareVersions = _lo(identity["version"])
    ds.DeviceSerialNumber = _serial(identity)


# ---------------------------------------------------------------------------------- segmentation
def _seg_source(src: pydicom.Dataset) -> tuple[pydicom.Dataset, hd.PixelMeasuresSequence | None]:
    """The header highdicom derives the SEG from, and its Pixel Measures (module docstring)."""
    spacing = pixel_spacing(src)
    thickness = src.get("BodyPartThickness")
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    if spacing is not None and thickness is not None and np.isfinite(thickness) and thickness > 0:
        return src, hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=thickness)
    header = copy.deepcopy(src)  # a header without pixels: cheap; the source stays as read
    for key in ("PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
        if key in header:
            del header[key]
    return header, None


def _segmentation(src: pydicom.Dataset, pixels: np.ndarray, *, fractional: bool,
                  identity: Mapping, params: dict[str, str], tracking_uid: str
                  ) -> hd.seg.Segmentation:
    header, measures = _seg_source(src)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_lo(identity["name"]), version=_lo(identity["version"]),
        family=codes.DCM.ArtificialIntelligence, source=MANUFACTURER, parameters=params)
    label = "Calcification probability" if fractional else "Calcification"
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=CATEGORY,
        segmented_property_type=CALCIFICATION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=tracking_uid,
        tracking_id="calcification findings" if not fractional else "calcification probability",
        anatomic_regions=[codes.SCT.Breast])
    kind = "prob_seg" if fractional else "seg"
    seg = hd.seg.Segmentation(
        source_images=[header],
        pixel_array=pixels,
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
                           else hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBERS[kind],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_lo(identity["name"]),
        software_versions=_lo(identity["version"]),
        device_serial_number=_serial(identity),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="CALC_PROBABILITY" if fractional else "CALC_FINDINGS",
        content_description=_lo(
            f"calcification probability, {identity['name']}" if fractional else
            f"calcifications scoring >= {params['threshold']}, {identity['name']}"),
        pixel_measures=measures,
        omit_empty_frames=False,  # an empty mask is a result too
    )
    if "PatientOrientation" in src and "PatientOrientation" not in seg:
        # General Image: required (2C) for images without Image Orientation (Patient)
        seg.PatientOrientation = src.PatientOrientation
    _equipment(seg, identity, "calcification probability" if fractional
               else "calcification findings")
    return seg


# ------------------------------------------------------------------------------------------- SR
def _box_polyline(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in bbox)
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float32)


def _finding_sites(meta: Mapping) -> list[hd.sr.FindingSite]:
    side = LATERALITY.get(str(meta.get("laterality") or "").upper())
    return [hd.sr.FindingSite(anatomic_location=codes.SCT.Breast, laterality=side)]


def _sr_algorithm(identity: Mapping, params: Mapping[str, str]) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=_lo(identity["name"]), version=_lo(identity["version"]),
        parameters=[f"{k}: {v}" for k, v in params.items()])


def _area(pixels: float, spacing: list[float] | None) -> tuple[float, Any]:
    if spacing is None:
        return float(pixels), PIXELS
    return float(pixels) * spacing[0] * spacing[1], MM2


def _measurement(name, value: float, unit) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _structured_report(src: pydicom.Dataset, record: Mapping, identity: Mapping,
                       thresholds: Mapping, how: str, calc_tracking_uid: str
                       ) -> hd.sr.ComprehensiveSR:
    meta = (record.get("preprocess") or {}).get("meta") or {}
    spacing = pixel_spacing_of(record.get("preprocess")) or pixel_spacing(src)
    sites = _finding_sites({"laterality": meta.get("laterality") or src.get("ImageLaterality")})
    region_source = hd.sr.SourceImageForRegion(src.SOPClassUID, src.SOPInstanceUID)
    group_source = [hd.sr.SourceImageForMeasurementGroup(src.SOPClassUID, src.SOPInstanceUID)]
    groups: list = []

    def tracking(text: str, uid: str | None = None) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=uid or generate_uid(), identifier=_lo(text))

    def region(bbox) -> hd.sr.ImageRegion:
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                 graphic_data=_box_polyline(bbox), source_image=region_source)

    masses = record.get("masses")
    if masses is not None:
        params = _algorithm_parameters("mass", thresholds, how, identity)
        algorithm = _sr_algorithm(identity, params)
        findings = [m for m in masses if m.get("finding")]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("mass detection"), finding_type=MASS,
            algorithm_id=algorithm, finding_sites=sites, source_images=group_source,
            measurements=[_measurement(N_LESIONS, len(findings), UNITLESS),
                          _measurement(THRESHOLD, thresholds["mass"], UNITLESS)]))
        for k, m in enumerate(findings, 1):
            values = [_measurement(CERTAINTY, m["score"], UNITLESS)]
            if spacing is not None:
                values += [_measurement(codes.SCT.Width, m["bbox"][2] * spacing[1], MM),
                           _measurement(codes.DCM.Height, m["bbox"][3] * spacing[0], MM)]
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"mass {k}"), referenced_region=region(m["bbox"]),
                finding_type=MASS, algorithm_id=algorithm, finding_sites=sites,
                measurements=values))

    calcs = record.get("calcifications")
    if calcs is not None:
        params = _algorithm_parameters("calc", thresholds, how, identity)
        algorithm = _sr_algorithm(identity, params)
        findings = [c for c in calcs if c.get("finding")]
        total, area_unit = _area(sum(c["area"] for c in findings), spacing)
        summary = [_measurement(N_CALCIFICATIONS, len(findings), UNITLESS),
                   _measurement(codes.SCT.Area, total, area_unit),
                   _measurement(THRESHOLD, thresholds["calc"], UNITLESS)]
        # linked to the SEG's segment by its Tracking UID (an SR image reference to a segment of a
        # single-frame SEG would need the frame and the segment number together, which the SR
        # Image Reference Macro forbids)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("calcification findings", calc_tracking_uid),
            finding_type=CALCIFICATION, algorithm_id=algorithm, finding_sites=sites,
            source_images=group_source, measurements=summary))
        for c in findings:
            area, unit = _area(c["area"], spacing)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"calcification {c['label']}"),
                referenced_region=region(c["bbox"]),
                finding_type=CALC_TYPES.get(c.get("type"), CALCIFICATION), algorithm_id=algorithm,
                finding_sites=sites,
                measurements=[_measurement(CERTAINTY, c["score"], UNITLESS),
                              _measurement(codes.SCT.Area, area, unit)]))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, identity["name"], identity["version"]]),
        name=_lo(identity["name"]), manufacturer_name=MANUFACTURER,
        model_name=_lo(identity["version"]), serial_number=_serial(identity))
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.SCT.Mammography,
        imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[src],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # an algorithm's findings, for a reader to review
        is_verified=False,
    )
    _equipment(sr, identity, "findings report")
    return sr


# ------------------------------------------------------------------------------------------ API
def write_dicom_outputs(result: ImageResult, record: Mapping, out_dir: str | Path, stem: str,
                        identity: Mapping, *, fractional: bool = False) -> dict[str, str]:
    """Write the DICOM SEG, SR and optionally the probability SEG of one prediction (module
    docstring), atomically and as a set (a failure leaves earlier files of ``stem`` as they were).

    Args:
        result: the prediction (its ``source`` must be a DICOM file).
        record: the per-image JSON of ``result`` (:func:`deeplima.writer.image_record`): masses,
            calcifications, thresholds and pre-processing metadata are taken from it.
        out_dir: folder of the files (created).
        stem: file name stem: ``<stem>_seg.dcm``, ``<stem>_sr.dcm``, ``<stem>_prob_seg.dcm``.
        identity: :func:`bundle_identity` of the models (``name`` and ``version`` at least).
        fractional: also write the calcification probability as a FRACTIONAL SEG.

    Returns:
        ``{"seg": name, "sr": name, "prob_seg": name}``, names relative to ``out_dir``, only the
        files written (no SEG without a calcification model).

    Raises:
        InputError: the source is not a usable DICOM image (PNG/TIFF, array, unreadable, another
            size), or highdicom refuses its header (one line naming the file).
        OSError: a file cannot be written.
    """
    for key in ("name", "version"):
        if not identity.get(key):
            raise ValueError(f"identity needs a non-empty {key!r}")
    src = _read_source(result)
    thresholds, how = _thresholds(record, identity)
    names = output_names(stem)
    objects: dict[str, pydicom.Dataset] = {}
    calc_uid = generate_uid()
    try:
        if result.calc_prob is not None:
            params = _algorithm_parameters("calc", thresholds, how, identity)
            mask = result.calc_mask(findings_only=True).astype(np.uint8)
            objects["seg"] = _segmentation(src, mask, fractional=False, identity=identity,
                                           params=params, tracking_uid=calc_uid)
            if fractional:
                prob = np.clip(np.nan_to_num(result.calc_prob, nan=0.0), 0, 1).astype(np.float32)
                objects["prob_seg"] = _segmentation(src, prob, fractional=True, identity=identity,
                                                    params=params, tracking_uid=generate_uid())
        objects["sr"] = _structured_report(src, record, identity, thresholds, how, calc_uid)
        encoded = {kind: dicom_bytes(ds) for kind, ds in objects.items()}
    except InputError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        # highdicom checks the source header (attributes it needs, their values)
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise InputError(result.source, f"cannot derive DICOM SEG/SR from this image ({reason})"
                         ) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_together([(out / names[kind], lambda tmp, data=data: atomic_write_bytes(tmp, data))
                    for kind, data in encoded.items()])
    return {kind: names[kind] for kind in ("seg", "sr", "prob_seg") if kind in encoded}
