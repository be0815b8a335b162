"""From mammogram files to findings: one pre-processing, then the mass and calcification predictors.

:class:`FindingsPredictor` composes the two models' predictors
(:class:`mass_det.inference.MassPredictor`, detectron2 ``DefaultPredictor`` underneath;
:class:`calc_seg.inference.CalcPredictor`, sliding window over the breast), either of which may be
absent. Each image goes through :func:`common.preprocess.preprocess` ONCE; the same 8-bit image and
breast mask feed both models. When laterality is normalised, both models see the mirrored image and
every result is mapped back with :mod:`common.laterality`, so everything returned is in the ORIGINAL
image frame: boxes ``[x, y, w, h]`` in pixels with the top-left origin and x = column, masks and
maps (H, W) as stored in the file. When the input's header gives the pixel spacing, every box
also comes in millimetres and every calcification area in mm² (:func:`pixel_spacing_of`).
:class:`Pipeline` is the predictor of a model bundle (both models, operating points).

The prediction folder these results are written to is :mod:`deeplima.writer`'s.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calc_seg.inference import CalcPredictor
from common.device import select_device
from common.dicom import spacing_pair
from common.errors import InputError
from common.laterality import unflip_boxes_xyxy, unflip_mask
from common.preprocess import Preprocessed, preprocess
from mass_det.engine.trainer import resolve_weights_file
from mass_det.inference import MassPredictor

from .bundle import Bundle, load_bundle
from .operating_point import resolve_thresholds

__all__ = [
    "FindingsPredictor",
    "ImageResult",
    "Pipeline",
    "Preprocessor",
    "build_calc_pipeline",
    "build_mass_pipeline",
    "model_id",
    "pixel_spacing_of",
    "spacing_record",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- physical units
def pixel_spacing_of(record: Mapping | None) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` of a pre-processing record (its ``meta["pixel_spacing"]``, taken from
    the DICOM header by :mod:`common.dicom`), or None when the input gave none (PNG/TIFF, a header
    without spacing) or the value is not two positive finite numbers."""
    meta = (record or {}).get("meta") or {}
    pair = spacing_pair(meta, "pixel_spacing") if isinstance(meta, Mapping) else None
    return tuple(pair) if pair is not None else None


def spacing_record(record: Mapping | None) -> dict:
    """``{"spacing_mm": [row_mm, col_mm] | None, "source": ...}`` of a pre-processing record: the
    header element the spacing came from (``meta["pixel_spacing_source"]``, e.g. ``PixelSpacing``
    or ``ImagerPixelSpacing``; "DICOM header" when the reader did not say), None without one
    (sizes are then in pixels only)."""
    spacing = pixel_spacing_of(record)
    if spacing is None:
        return {"spacing_mm": None, "source": None}
    meta = (record or {}).get("meta") or {}
    source = meta.get("pixel_spacing_source") if isinstance(meta, Mapping) else None
    return {"spacing_mm": list(spacing), "source": str(source) if source else "DICOM header"}


def box_mm(bbox: Sequence[float], spacing: tuple[float, float]) -> list[float]:
    """Pixel box ``[x, y, w, h]`` (x = column) in millimetres, to the micrometre."""
    row, col = spacing
    x, y, w, h = (float(v) for v in bbox)
    return [round(x * col, 3), round(y * row, 3), round(w * col, 3), round(h * row, 3)]


def area_mm2(area_px: float, spacing: tuple[float, float]) -> float:
    """An area in pixels in mm² (to 1e-4 mm²)."""
    return round(float(area_px) * spacing[0] * spacing[1], 4)


# ------------------------------------------------------------------------------------------ results
@dataclass
class ImageResult:
    """Findings of one image, ORIGINAL image frame throughout.

    The calcification fields are None when no calcification model ran, ``masses`` when no mass model
    ran (single-model prediction).

    Attributes:
        source: the input path (or "<array>").
        image: uint8 (H, W) pre-processed image, un-mirrored (for overlays).
        breast_mask: bool (H, W).
        masses: every detection: ``{"bbox": [x, y, w, h] float, "score": float, "finding": bool}``,
            ``finding`` = score >= the mass threshold; sorted by decreasing score. With a known
            pixel spacing also ``"bbox_mm"``: the box in millimetres (:func:`pixel_spacing_of`).
        calcifications: 8-connected components of ``calc_prob >= binarize``: ``{"label" (id in
            ``calc_labels``), "bbox" [x, y, w, h] int, "area" (pixels), "score" (max probability),
            "type" ("dot" | "vessel" | "large", shape rule of calc_seg), "point" [x, y] (a pixel
            inside), "finding": bool}``; with a known pixel spacing also ``"bbox_mm"`` and
            ``"area_mm2"``.
        calc_prob: float32 (H, W) calcification probability in [0, 1].
        calc_labels: int32 (H, W), 0 = background, k = component with ``label`` k.
        record: the pre-processing record of :func:`common.preprocess.preprocess`.
        thresholds: {"mass": t, "calc": t} used for ``finding`` (the kinds predicted).
        timings: seconds per stage: preprocess, mass, calc (the stages run; calc is the image's
            share of its batch, :meth:`FindingsPredictor.predict_batch`), postprocess.
    """

    source: str
    image: np.ndarray
    breast_mask: np.ndarray
    masses: list[dict] | None
    calcifications: list[dict] | None
    calc_prob: np.ndarray | None
    calc_labels: np.ndarray | None
    record: dict
    thresholds: dict
    timings: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def pixel_spacing(self) -> dict:
        """``{"spacing_mm": [row_mm, col_mm] | None, "source"}`` (:func:`spacing_record`)."""
        return spacing_record(self.record)

    def component_mask(self, label: int) -> np.ndarray:
        """bool (H, W) mask of the calcification component ``label`` (1 to the number of components,
        the ``label`` of an entry of ``calcifications``).

        Raises:
            ValueError: ``label`` names no component (0 is the background), or no calcification
                model ran for this image.
            TypeError: ``label`` is not an integer.
        """
        if isinstance(label, bool):
            raise TypeError(f"component label must be an integer, got {label!r}")
        label = operator.index(label)
        if self.calcifications is None or self.calc_labels is None:
            raise ValueError("no calcification model ran for this image: it has no components")
        n = len(self.calcifications)
        if not 1 <= label <= n:
            has = (f"{n} calcification component(s), labelled 1 to {n}" if n
                   else "no calcification component")
            raise ValueError(f"component label {label} out of range: this image has {has}")
        return self.calc_labels == label

    def calc_mask(self, findings_only: bool = True) -> np.ndarray:
        """bool (H, W): the components marked ``finding`` (or every component); all False when no
        calcification model ran."""
        keep = [c["label"] for c in self.calcifications or () if c["finding"] or not findings_only]
        if not keep:
            return np.zeros(self.shape, bool)
        lut = np.zeros(int(self.calc_labels.max()) + 1, bool)
        lut[keep] = True
        return lut[self.calc_labels]

    def findings(self) -> tuple[list[dict], list[dict]]:
        """(mass findings, calcification findings) above the thresholds ([] for a model not run)."""
        return ([m for m in self.masses or () if m["finding"]],
                [c for c in self.calcifications or () if c["finding"]])


def model_id(weights: Iterable[str | Path]) -> str:
    """Identifies the weights behind a prediction folder (path, size, modification time of each
    file), so ``--resume`` never mixes the outputs of two models."""
    parts = []
    for p in map(Path, weights):
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


# ---------------------------------------------------------------------------------------- predictor
@dataclass(frozen=True)
class Preprocessor:
    """``Preprocessor(remove_artifacts, normalize_laterality)(path_or_array)`` ->
    :class:`~common.preprocess.Preprocessed`: :func:`common.preprocess.preprocess` with a
    predictor's options, picklable so that loader worker processes can run it
    (:mod:`deeplima.loader`).

    Raises :class:`InputError` (one line naming the file) for a missing, unreadable or unusable
    input.
    """

    remove_artifacts: bool = True
    normalize_laterality: bool = False

    def __call__(self, source: str | Path | np.ndarray) -> Preprocessed:
        if not isinstance(source, np.ndarray):
            p = Path(source)
            if not p.is_file():
                raise InputError(p, "file not found")
            source = str(p)
        return preprocess(source, remove_artifacts=self.remove_artifacts,
                          normalize_laterality=self.normalize_laterality)


class FindingsPredictor:
    """Pre-processing once, then the mass and / or calcification predictor, results in the original
    frame: ``FindingsPredictor(mass, calc, thresholds=...)(path_or_array)`` -> :class:`ImageResult`.

    The call is two stages, which :func:`deeplima.writer.write_predictions` runs apart:
    :attr:`preprocessor` (CPU; in the loader's worker processes while the models work on earlier
    images) and :meth:`predict_batch` (the models, several images at a time). The writer also reads
    ``mass``, ``thresholds``, ``model_id``, ``normalize_laterality`` and ``run_info`` (extra entries
    of ``run.json``).
    """

    def __init__(
        self,
        mass: MassPredictor | None = None,
        calc: CalcPredictor | None = None,
        *,
        thresholds: Mapping[str, float | str],
        remove_artifacts: bool = True,
        normalize_laterality: bool = False,
        model_id: str | None = None,
        run_info: Mapping | None = None,
    ):
        """
        Args:
            mass / calc: the models' predictors (at least one); a missing one leaves its entries and
                files out of the results.
            thresholds: ``{"mass": t, "calc": t}`` (the kinds predicted) that mark findings, and
                optionally ``"source"`` (how they were chosen, for ``run.json``).
            remove_artifacts / normalize_laterality: options of
                :func:`common.preprocess.preprocess`.
            model_id: identifies the weights (:func:`model_id`; ``--resume`` redoes images made by
                other ones).
            run_info: json-able entries for ``run.json`` (e.g. the bundle folder).
        """
        if mass is None and calc is None:
            raise ValueError("FindingsPredictor needs a mass or a calcification predictor")
        missing = [k for k, m in (("mass", mass), ("calc", calc))
                   if m is not None and k not in thresholds]
        if missing:
            raise ValueError(f"no threshold for {', '.join(missing)}")
        self.mass = mass
        self.calc = calc
        self.thresholds = dict(thresholds)
        self.remove_artifacts = bool(remove_artifacts)
        self.normalize_laterality = bool(normalize_laterality)
        self.model_id = model_id
        self.run_info = dict(run_info or {})
        if calc is not None and self.thresholds["calc"] < calc.threshold:
            # Components are the pixels >= TEST.THRESHOLD (the evaluation's binarisation), so every
            # component already scores at least that much: a lower threshold keeps them all.
            logger.warning(
                "calcification threshold %.3g is below the component threshold "
                "TEST.THRESHOLD=%.3g: every component is a finding", self.thresholds["calc"],
                calc.threshold)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The lesion kinds predicted: ("mass", "calc"), ("mass",) or ("calc",)."""
        return tuple(k for k, m in (("mass", self.mass), ("calc", self.calc)) if m is not None)

    # -------------------------------------------------------------------------------- one image
    @property
    def preprocessor(self) -> Preprocessor:
        """The pre-processing of this predictor as a picklable callable (what the loader's worker
        processes run, :mod:`deeplima.loader`)."""
        return Preprocessor(self.remove_artifacts, self.normalize_laterality)

    def preprocess(self, source: str | Path | np.ndarray) -> Preprocessed:
        """:func:`common.preprocess.preprocess` with this predictor's options (raises
        InputError)."""
        return self.preprocessor(source)

    def __call__(self, source: str | Path | np.ndarray) -> ImageResult:
        """Pre-process once, run the models, return findings in the original frame.

        Raises:
            InputError: the file is missing, unreadable or unusable (one line naming it).
        """
        t0 = time.perf_counter()
        p = self.preprocess(source)
        seconds = time.perf_counter() - t0
        name = "<array>" if isinstance(source, np.ndarray) else str(source)
        return self.predict_batch([p], [name], [seconds])[0]

    # ------------------------------------------------------------------------------ pre-processed
    def predict_batch(self, images: Sequence[Preprocessed], sources: Sequence[str],
                      preprocess_seconds: Sequence[float] | None = None) -> list[ImageResult]:
        """Findings of pre-processed images (:meth:`preprocess`), in the original frames.

        The mass detector runs image by image; the calcification U-Net gets the tiles of all the
        images together (:meth:`calc_seg.inference.CalcPredictor.predict_probs`, fuller forward
        passes on a GPU). The results are those of calling the predictor on each image alone.

        Args:
            images: the pre-processing results (uint8 image and bool breast mask in the frame
                ``record["flipped"]`` says; each record is kept as the result's ``record``).
            sources: the input path of each image (or "<array>"), for the results.
            preprocess_seconds: time spent pre-processing each image (``timings["preprocess"]``).

        Returns:
            one :class:`ImageResult` per image, in order. ``timings["calc"]`` of each is its equal
            share of the batch's U-Net time.
        """
        n = len(images)
        if len(sources) != n:
            raise ValueError(f"{n} images but {len(sources)} sources")
        seconds = [0.0] * n if preprocess_seconds is None else list(preprocess_seconds)
        timings = [{"preprocess": s} for s in seconds]
        masses: list[list[dict] | None] = [None] * n
        if self.mass is not None:
            for k, p in enumerate(images):
                t = time.perf_counter()
                boxes, scores = self.mass(p.image)
                timings[k]["mass"] = time.perf_counter() - t
                masses[k] = self._masses(boxes, scores, p)
        probs: list[np.ndarray | None] = [None] * n
        if self.calc is not None and n:
            t = time.perf_counter()
            probs = self.calc.predict_probs([p.image for p in images],
                                            [p.breast_mask for p in images])
            share = (time.perf_counter() - t) / n
            for tk in timings:
                tk["calc"] = share
        return [self._result(p, src, prob, m, tk)
                for p, src, prob, m, tk in zip(images, sources, probs, masses, timings)]

    def _masses(self, boxes: np.ndarray, scores: np.ndarray, p: Preprocessed) -> list[dict]:
        """Mass entries in the original frame, by decreasing score, of the detector's (N, 4) XYXY
        boxes and (N,) scores in the frame of ``p.image``."""
        # float64 before mirroring back (x' = W - x is exact there) and the thresholds
        boxes = unflip_boxes_xyxy(boxes.astype(np.float64), p.image.shape[1],
                                  bool(p.record.get("flipped", False)))
        scores = scores.astype(np.float64)
        order = np.argsort(-scores, kind="mergesort")
        spacing = pixel_spacing_of(p.record)
        masses = []
        for b, s in zip(boxes[order], scores[order]):
            m = {"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                 "score": float(s), "finding": bool(s >= self.thresholds["mass"])}
            if spacing is not None:
                m["bbox_mm"] = box_mm(m["bbox"], spacing)
            masses.append(m)
        return masses

    def _result(self, p: Preprocessed, source: str, prob: np.ndarray | None,
                masses: list[dict] | None, timings: dict) -> ImageResult:
        """Map ``p``'s image, mask and probability back to the original frame, label the
        calcification components there, and assemble the :class:`ImageResult`."""
        flipped = bool(p.record.get("flipped", False))
        t = time.perf_counter()
        image = np.ascontiguousarray(unflip_mask(p.image, flipped))
        breast = np.ascontiguousarray(unflip_mask(p.breast_mask, flipped))
        labels = calcs = None
        if prob is not None:
            # components are labelled in the original frame: their labels and points are the file's
            prob = np.ascontiguousarray(unflip_mask(prob, flipped), dtype=np.float32)
            labels, comps = self.calc.components(prob)
            spacing = pixel_spacing_of(p.record)
            calcs = [{**c, "finding": bool(c["score"] >= self.thresholds["calc"]),
                      **({} if spacing is None else {"bbox_mm": box_mm(c["bbox"], spacing),
                                                     "area_mm2": area_mm2(c["area"], spacing)})}
                     for c in comps]
        timings["postprocess"] = time.perf_counter() - t
        return ImageResult(
            source=source, image=image, breast_mask=breast, masses=masses, calcifications=calcs,
            calc_prob=prob, calc_labels=labels, record=p.record,
            thresholds={k: self.thresholds[k] for k in self.kinds}, timings=timings,
        )

    def predict_files(self, paths: Iterable[str | Path]
                      ) -> Iterator[tuple[Path, ImageResult | InputError]]:
        """Yield ``(path, ImageResult)`` or ``(path, InputError)`` per file; bad files do not stop
        it."""
        for path in paths:
            path = Path(path)
            try:
                yield path, self(path)
            except InputError as e:
                yield path, e


class Pipeline(FindingsPredictor):
    """Mass detector + calcification U-Net of a model bundle, sharing one pre-processing per image.

    ``Pipeline(bundle)(path_or_array)`` -> :class:`ImageResult`. The models run on ``device``
    (default: the mass config's ``MODEL.DEVICE``, falling back to the CPU when CUDA is absent).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        threshold: float | None = None,
        target_fp: float | None = None,
        normalize_laterality: bool | None = None,
        device: str | None = None,
        mass_opts: Sequence[str] = (),
        calc_opts: Sequence[str] = (),
    ):
        """
        Args:
            bundle: a :class:`~deeplima.bundle.Bundle` or its folder.
            threshold / target_fp: operating point (see
                :func:`deeplima.operating_point.resolve_thresholds`); findings are marked with it.
            normalize_laterality: mirror images so the chest wall is on the left before both models
                (results are mapped back); None = the mass config's
                ``INPUT.MAMMO.NORMALIZE_LATERALITY``.
            device: "cpu", "cuda", ... for both models (None = the mass config's ``MODEL.DEVICE``).
            mass_opts / calc_opts: ``KEY VALUE`` overrides of the two configs.

        Raises:
            InputError: bundle folder or one of its files missing, or weights that are refused or do
                not fit their config (one line).
            OperatingPointError: ``target_fp`` is not among the bundle's calibrated operating
                points.
        """
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        thresholds = resolve_thresholds(self.bundle.operating_points, threshold, target_fp)

        mass_cfg = self.bundle.mass_cfg(mass_opts)
        self.device = select_device(device if device is not None else mass_cfg.MODEL.DEVICE)
        # the predictor loads the weights as data and requires every parameter
        mass = MassPredictor.from_config(mass_cfg, device=str(self.device),
                                         trust_pickle=self.bundle.trust_pickle)
        self.mass_cfg = mass.cfg
        self.calc_cfg = self.bundle.calc_cfg(calc_opts)
        calc = CalcPredictor.from_config(self.calc_cfg, self.bundle.calc_weights,
                                         device=self.device)

        m = self.mass_cfg.INPUT.MAMMO
        remove_artifacts = bool(m.REMOVE_ARTIFACTS)
        if bool(self.calc_cfg.DATA.REMOVE_ARTIFACTS) != remove_artifacts:
            # one pre-processing for both models: the mass config decides
            logger.warning(
                "mass and calcification configs disagree on artifact removal; using the mass "
                "config's INPUT.MAMMO.REMOVE_ARTIFACTS=%s for both", remove_artifacts)
        super().__init__(
            mass, calc, thresholds=thresholds, remove_artifacts=remove_artifacts,
            normalize_laterality=(bool(m.NORMALIZE_LATERALITY) if normalize_laterality is None
                                  else bool(normalize_laterality)),
            model_id=model_id([self.bundle.mass_weights, self.bundle.calc_weights]),
            run_info={"bundle": str(self.bundle.root.resolve())},
        )



# ---------------------------------------------------------------------------------------- one model
def _weights_name(weights: str | Path) -> str:
    """How ``run.json`` names a weights file: a URL as given, a local file by its absolute path."""
    return str(weights) if "://" in str(weights) else str(Path(weights).resolve())


def build_mass_pipeline(
    cfg,
    weights: str | Path,
    *,
    threshold: float | None = None,
    device: str | None = None,
    trust_pickle: bool = False,
) -> FindingsPredictor:
    """The mass detector alone (``deeplima predict-mass``), pre-processing as in its training.

    Args:
        cfg: mass_det config (:func:`mass_det.config.get_mass_det_cfg`); ``INPUT.MAMMO``'s
            ``REMOVE_ARTIFACTS`` and ``NORMALIZE_LATERALITY`` set the pre-processing.
        weights: checkpoint path or model-zoo URL, read as data (see
            :meth:`mass_det.inference.MassPredictor.from_config`).
        threshold: score threshold of findings (None: 0.5).
        device: None = ``cfg.MODEL.DEVICE`` (CPU when CUDA is absent).

    Raises:
        FileNotFoundError / InputError: missing, refused or unfitting weights (one line).
    """
    mass = MassPredictor.from_config(cfg, weights, device=device, trust_pickle=trust_pickle)
    m = mass.cfg.INPUT.MAMMO
    t = 0.5 if threshold is None else float(threshold)
    return FindingsPredictor(
        mass, None,
        thresholds={"mass": t, "source": "default threshold 0.5" if threshold is None
                    else f"--threshold {threshold}"},
        remove_artifacts=bool(m.REMOVE_ARTIFACTS),
        normalize_laterality=bool(m.NORMALIZE_LATERALITY),
        model_id=model_id([resolve_weights_file(str(weights))]),
        run_info={"weights": {"mass": _weights_name(weights)}},
    )


def build_calc_pipeline(
    cfg,
    weights: str | Path,
    *,
    threshold: float | None = None,
    device: str | None = None,
) -> FindingsPredictor:
    """The calcification U-Net alone (``deeplima predict-calc``), pre-processing as in its training
    (``DATA.REMOVE_ARTIFACTS``; no laterality normalisation).

    Args:
        cfg: calc_seg config (:func:`calc_seg.config.get_calc_seg_cfg`).
        weights: checkpoint of ``calc_seg.train_net``, read as data.
        threshold: score threshold of findings (None: ``TEST.THRESHOLD``, the components' own
            binarisation, so every component is a finding).
        device: None = CUDA when available, else the CPU.

    Raises:
        InputError: missing, unreadable or unfitting weights (one line).
    """
    calc = CalcPredictor.from_config(cfg, weights, device=device)
    t = calc.threshold if threshold is None else float(threshold)
    return FindingsPredictor(
        None, calc,
        thresholds={"calc": t, "source": f"TEST.THRESHOLD {t}" if threshold is None
                    else f"--threshold {threshold}"},
        remove_artifacts=bool(cfg.DATA.REMOVE_ARTIFACTS),
        normalize_laterality=False,
        model_id=model_id([weights]),
        run_info={"weights": {"calc": _weights_name(weights)}},
    )
