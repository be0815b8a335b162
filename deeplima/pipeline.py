"""From mammogram files to findings: the :class:`Pipeline` predictor and the prediction-folder writer.

One image goes through :func:`common.preprocess.preprocess` ONCE; the same 8-bit image and breast mask
feed the mass detector (detectron2 :class:`~detectron2.engine.DefaultPredictor`) and the calcification
U-Net (:func:`calc_seg.inference.predict_from_cfg`, sliding window over the breast). When the mass
config normalises laterality (``INPUT.MAMMO.NORMALIZE_LATERALITY``), both models see the mirrored image
and every result is mapped back with :mod:`common.laterality`, so everything the pipeline returns is in
the ORIGINAL image frame: boxes ``[x, y, w, h]`` in pixels with the top-left origin and x = column,
masks and maps (H, W) as stored in the file.

Prediction folder (written by :func:`write_predictions`, ``deeplima predict``; read by
``deeplima evaluate``, so other tools can produce it too)::

    OUT/
      images.json                 [{"id", "file_name", "stem", "height", "width"}], ids 1.. in input order
      masses_results.json         COCO results of EVERY mass detection (image_id from images.json,
                                  category_id 1, bbox XYWH original pixels, score) - the full FROC range;
                                  the operating threshold only marks findings in the per-image JSON
      calc_prob/<stem>.png        16-bit calcification probability (0..65535 = 0..1), original frame
      calc_mask/<stem>.png        0/255 calcification findings (components scoring >= the threshold)
      calc_labels/<stem>.png      16-bit component labels: the mask of the component with "label" k of
                                  the per-image JSON is (labels == k), findings or not
      breast_mask/<stem>.png      0/255 breast region
      overlays/<stem>.png         mass boxes (orange) and calcification outlines (cyan) with scores
      per_image/<stem>.json       everything about one image (below), with the input's SHA-256
                                  (``source_sha256``); renamed into place last: its presence with
                                  "complete": true means the image is done (``--resume`` skips it
                                  when the input's content is unchanged)
      failures.json/.txt          files that could not be processed (or their outputs not written),
                                  with the reason
      run.json                    bundle, thresholds, counts, and ``inputs``: every input file with its
                                  stem, SHA-256 and status; ``"complete": false`` while the run goes on

Stems are the input file names without suffix, made unique over the run (``-2``, ``-3``..., never
another input's own stem). PNGs inside prediction folders are never collected as inputs.

For ``deeplima evaluate`` only ``images.json``, ``masses_results.json`` and ``calc_prob/<stem>.png`` are
needed (stems must be the canonical dataset's stems).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from common.inputs import collect_inputs, unique_stems

from .bundle import Bundle, load_bundle
from .operating_point import resolve_thresholds

__all__ = [
    "ImageResult",
    "Pipeline",
    "collect_inputs",
    "unique_stems",
    "write_predictions",
]

FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ results
@dataclass
class ImageResult:
    """Findings of one image, ORIGINAL image frame throughout.

    Attributes:
        source: the input path (or "<array>").
        image: uint8 (H, W) pre-processed image, un-mirrored (for overlays).
        breast_mask: bool (H, W).
        masses: every detection: ``{"bbox": [x, y, w, h] float, "score": float, "finding": bool}``,
            ``finding`` = score >= the mass threshold; sorted by decreasing score.
        calcifications: 8-connected components of ``calc_prob >= binarize``: ``{"label" (id in
            ``calc_labels``), "bbox" [x, y, w, h] int, "area" (pixels), "score" (max probability),
            "type" ("dot" | "vessel" | "large", shape rule of calc_seg), "point" [x, y] (a pixel inside),
            "finding": bool}``.
        calc_prob: float32 (H, W) calcification probability in [0, 1].
        calc_labels: int32 (H, W), 0 = background, k = component with ``label`` k.
        record: the pre-processing record of :func:`common.preprocess.preprocess`.
        thresholds: {"mass": t, "calc": t} used for ``finding``.
        timings: seconds per stage: preprocess, mass, calc, postprocess.
    """

    source: str
    image: np.ndarray
    breast_mask: np.ndarray
    masses: list[dict]
    calcifications: list[dict]
    calc_prob: np.ndarray
    calc_labels: np.ndarray
    record: dict
    thresholds: dict
    timings: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def component_mask(self, label: int) -> np.ndarray:
        """bool (H, W) mask of the calcification component ``label``."""
        return self.calc_labels == int(label)

    def calc_mask(self, findings_only: bool = True) -> np.ndarray:
        """bool (H, W): the components marked ``finding`` (or every component)."""
        keep = [c["label"] for c in self.calcifications if c["finding"] or not findings_only]
        if not keep:
            return np.zeros(self.shape, bool)
        lut = np.zeros(int(self.calc_labels.max()) + 1, bool)
        lut[keep] = True
        return lut[self.calc_labels]

    def findings(self) -> tuple[list[dict], list[dict]]:
        """(mass findings, calcification findings) above the thresholds."""
        return ([m for m in self.masses if m["finding"]],
                [c for c in self.calcifications if c["finding"]])


# ------------------------------------------------------------------------------------------ inputs
#: Sub-folders of a prediction folder holding one PNG per image.
OUTPUT_SUBDIRS = ("calc_prob", "calc_mask", "calc_labels", "breast_mask", "overlays")


def is_prediction_output(path: Path, out_dir: Path | None = None) -> bool:
    """True for a PNG that a prediction folder holds (``<folder>/overlays/x.png``...): ``out_dir``'s
    own, or any folder that looks like a prediction folder (``per_image/`` or ``images.json`` beside
    the sub-folder). Such files are never mammograms to predict on."""
    parent = Path(path).absolute().parent
    if parent.name not in OUTPUT_SUBDIRS:
        return False
    folder = parent.parent.resolve()
    return ((out_dir is not None and folder == Path(out_dir).resolve())
            or (folder / "per_image").is_dir() or (folder / "images.json").is_file())


def _sha256_or_none(path: Path) -> str | None:
    from common.io import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None  # missing or unreadable: the pipeline reports it


# ------------------------------------------------------------------------------------------ predictor
class Pipeline:
    """Mass detector + calcification U-Net of a model bundle, sharing one pre-processing per image.

    ``Pipeline(bundle)(path_or_array)`` -> :class:`ImageResult`. The models run on ``device`` (default:
    the mass config's ``MODEL.DEVICE``, falling back to the CPU when CUDA is absent).
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
                (results are mapped back); None = the mass config's ``INPUT.MAMMO.NORMALIZE_LATERALITY``.
            mass_opts / calc_opts: ``KEY VALUE`` overrides of the two configs.

        Raises:
            InputError: bundle folder or one of its files missing (one line).
            OperatingPointError: ``target_fp`` is not among the bundle's calibrated operating points.
        """
        import torch

        from calc_seg.data.labels import LabelParams
        from calc_seg.model import build_model, load_weights
        from mass_det.config import resolve_device
        from mass_det.inference import build_default_predictor

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.thresholds = resolve_thresholds(self.bundle.operating_points, threshold, target_fp)

        # the predictor loads the weights as data and requires every parameter
        mass_cfg = self.bundle.mass_cfg(mass_opts)
        if device is not None:
            mass_cfg.MODEL.DEVICE = device
        resolve_device(mass_cfg)
        mass_cfg.freeze()
        self.mass_cfg = mass_cfg
        self.mass_predictor = build_default_predictor(mass_cfg, trust_pickle=self.bundle.trust_pickle)
        # Identifies the weights behind a prediction folder, so --resume never mixes two models.
        self.model_id = ";".join(
            f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in (Path(self.bundle.mass_weights), Path(self.bundle.calc_weights))
        )
        self.device = torch.device(mass_cfg.MODEL.DEVICE)

        self.calc_cfg = self.bundle.calc_cfg(calc_opts)
        self.calc_model = build_model(self.calc_cfg)
        load_weights(self.calc_model, self.bundle.calc_weights)
        self.calc_model.to(self.device).eval()
        self.label_params = LabelParams.from_cfg(self.calc_cfg)

        m = mass_cfg.INPUT.MAMMO
        self.remove_artifacts = bool(m.REMOVE_ARTIFACTS)
        self.normalize_laterality = (bool(m.NORMALIZE_LATERALITY) if normalize_laterality is None
                                     else bool(normalize_laterality))
        if bool(self.calc_cfg.DATA.REMOVE_ARTIFACTS) != self.remove_artifacts:
            # one pre-processing for both models: the mass config decides
            import logging

            logging.getLogger(__name__).warning(
                "mass and calcification configs disagree on artifact removal; using the mass "
                "config's INPUT.MAMMO.REMOVE_ARTIFACTS=%s for both", self.remove_artifacts)
        if self.thresholds["calc"] < float(self.calc_cfg.TEST.THRESHOLD):
            # Components are the pixels >= TEST.THRESHOLD (the evaluation's binarisation), so every
            # component already scores at least that much: a lower threshold keeps them all.
            import logging

            logging.getLogger(__name__).warning(
                "calcification threshold %.3g is below the component threshold TEST.THRESHOLD=%.3g: "
                "every component is a finding", self.thresholds["calc"],
                float(self.calc_cfg.TEST.THRESHOLD))

    # -------------------------------------------------------------------------------- one image
    def preprocess(self, source: str | Path | np.ndarray):
        """:func:`common.preprocess.preprocess` with the bundle's options (raises InputError)."""
        from common.preprocess import preprocess

        if not isinstance(source, np.ndarray):
            p = Path(source)
            if not p.is_file():
                raise InputError(p, "file not found")
            source = str(p)
        return preprocess(source, remove_artifacts=self.remove_artifacts,
                          normalize_laterality=self.normalize_laterality)

    def predict_masses(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) float64 XYXY boxes in the frame of ``image`` (uint8 (H, W)) and (N,) scores."""
        import torch

        from mass_det.data.mapper import gray_to_model_input

        # DefaultPredictor takes BGR and converts when INPUT.FORMAT is RGB; grey levels are equal.
        with torch.inference_mode():
            out = self.mass_predictor(gray_to_model_input(image, "BGR"))["instances"].to("cpu")
        boxes = out.pred_boxes.tensor.numpy().astype(np.float64).reshape(-1, 4)
        return boxes, out.scores.numpy().astype(np.float64)

    def predict_calc_prob(self, image: np.ndarray, breast_mask: np.ndarray) -> np.ndarray:
        """float32 (H, W) calcification probability in the frame of ``image``."""
        from calc_seg.inference import predict_from_cfg

        return predict_from_cfg(self.calc_model, image, breast_mask, self.calc_cfg, self.device)

    def __call__(self, source: str | Path | np.ndarray) -> ImageResult:
        """Pre-process once, run both models, return findings in the original frame.

        Raises:
            InputError: the file is missing, unreadable or unusable (one line naming it).
        """
        from common.laterality import unflip_boxes_xyxy, unflip_mask

        t0 = time.perf_counter()
        p = self.preprocess(source)
        flipped = bool(p.record.get("flipped", False))
        t1 = time.perf_counter()
        boxes, scores = self.predict_masses(p.image)
        t2 = time.perf_counter()
        prob = self.predict_calc_prob(p.image, p.breast_mask)
        t3 = time.perf_counter()

        h, w = p.image.shape
        boxes = unflip_boxes_xyxy(boxes, w, flipped)
        prob = np.ascontiguousarray(unflip_mask(prob, flipped), dtype=np.float32)
        image = np.ascontiguousarray(unflip_mask(p.image, flipped))
        breast = np.ascontiguousarray(unflip_mask(p.breast_mask, flipped))
        order = np.argsort(-scores, kind="mergesort")
        masses = [
            {"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "score": float(s), "finding": bool(s >= self.thresholds["mass"])}
            for b, s in zip(boxes[order], scores[order])
        ]
        labels, calcs = self._components(prob)
        t4 = time.perf_counter()
        return ImageResult(
            source="<array>" if isinstance(source, np.ndarray) else str(source),
            image=image, breast_mask=breast, masses=masses, calcifications=calcs,
            calc_prob=prob, calc_labels=labels, record=p.record,
            thresholds={"mass": self.thresholds["mass"], "calc": self.thresholds["calc"]},
            timings={"preprocess": t1 - t0, "mass": t2 - t1, "calc": t3 - t2, "postprocess": t4 - t3},
        )

    def _components(self, prob: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Components of ``prob >= TEST.THRESHOLD`` with calc_seg's scoring and typing, plus labels."""
        from calc_seg.inference import mask_components

        labels, comps = mask_components(prob, float(self.calc_cfg.TEST.THRESHOLD), self.label_params)
        out = [{**c, "finding": bool(c["score"] >= self.thresholds["calc"])} for c in comps]
        return labels, out

    def predict_files(self, paths: Iterable[str | Path]) -> Iterator[tuple[Path, ImageResult | InputError]]:
        """Yield ``(path, ImageResult)`` or ``(path, InputError)`` per file; bad files do not stop it."""
        for path in paths:
            path = Path(path)
            try:
                yield path, self(path)
            except InputError as e:
                yield path, e


# ------------------------------------------------------------------------------------------ folder
def _result_json(res: ImageResult, stem: str, image_id: int, files: dict, model_id: str | None,
                 source_sha256: str | None = None) -> dict:
    return {
        "format": "deeplima-prediction",
        "model": model_id,
        "version": FORMAT_VERSION,
        "source": str(Path(res.source).resolve()) if res.source != "<array>" else res.source,
        "source_sha256": source_sha256,
        "stem": stem,
        "image_id": image_id,
        "height": res.shape[0],
        "width": res.shape[1],
        "frame": "original image pixels: bbox [x, y, w, h], point [x, y], top-left origin, x = column",
        "thresholds": res.thresholds,
        "masses": res.masses,
        "calcifications": res.calcifications,
        "n_mass_findings": sum(m["finding"] for m in res.masses),
        "n_calc_findings": sum(c["finding"] for c in res.calcifications),
        "files": files,
        "preprocess": res.record,
        "timings_s": {k: round(v, 4) for k, v in res.timings.items()},
        "complete": True,
    }


def _done(json_path: Path, sha256: str | None, out: Path, thresholds: dict,
          model_id: str | None = None) -> dict | None:
    """The per-image JSON of a finished image, or None when it must be (re)done.

    The input is identified by its content (``source_sha256``), not its path: a file replaced at the
    same path is done again, a file moved elsewhere is not.
    """
    from common.io import read_json

    if sha256 is None or not json_path.is_file():
        return None
    try:
        rec = read_json(json_path)
    except (InputError, OSError):
        return None
    if not isinstance(rec, dict) or rec.get("complete") is not True:
        return None
    if rec.get("source_sha256") != sha256:
        return None  # another file, or this path's file was replaced (or an older folder format)
    if rec.get("model") != model_id:
        return None  # made by other weights
    if {k: rec.get("thresholds", {}).get(k) for k in ("mass", "calc")} != {
            k: thresholds[k] for k in ("mass", "calc")}:
        return None  # other operating point: masks and overlays differ
    if not all((out / f).is_file() for f in rec.get("files", {}).values()):
        return None
    return rec


def write_image_outputs(res: ImageResult, out: Path, stem: str, image_id: int,
                        model_id: str | None = None, source_sha256: str | None = None) -> dict:
    """Write the PNGs, then the per-image JSON (last, so its presence means complete).

    All of them are written to temporary files first and renamed into place together
    (:func:`common.io.write_together`): a failure to write (full disk, read-only folder:
    ``OSError``) leaves this image's earlier outputs as they were.
    """
    from common.io import atomic_write_json, atomic_write_png, write_together

    from .overlay import draw_findings

    files = {
        "calc_prob": f"calc_prob/{stem}.png",
        "calc_mask": f"calc_mask/{stem}.png",
        "calc_labels": f"calc_labels/{stem}.png",
        "breast_mask": f"breast_mask/{stem}.png",
        "overlay": f"overlays/{stem}.png",
    }
    if res.calc_labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{res.source}: more than 65535 calcification components")
    calc_mask = res.calc_mask()
    masses, calcs = res.findings()
    arrays = {
        "calc_prob": np.round(np.clip(res.calc_prob, 0, 1) * 65535).astype(np.uint16),
        "calc_mask": calc_mask.astype(np.uint8) * 255,
        "calc_labels": res.calc_labels.astype(np.uint16),
        "breast_mask": res.breast_mask.astype(np.uint8) * 255,
        "overlay": draw_findings(res.image, masses, calc_mask, calcs),
    }
    rec = _result_json(res, stem, image_id, files, model_id, source_sha256)
    json_path = out / "per_image" / f"{stem}.json"
    write_together(
        [(out / files[k], lambda tmp, a=a: atomic_write_png(tmp, a)) for k, a in arrays.items()]
        + [(json_path, lambda tmp: atomic_write_json(tmp, rec))],
        invalidate=[json_path],  # no "complete" record beside half-renamed PNGs
    )
    return rec


def write_predictions(
    pipeline: Pipeline,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stems: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` over files / folders / globs and write the prediction folder (module docstring).

    Every file is written atomically. With ``resume``, an image whose per-image JSON is complete (same
    input CONTENT, by SHA-256, same model and thresholds, all its files present) is not processed
    again. Files that fail, including those whose outputs cannot be written (full disk...), are listed
    in ``failures.json`` / ``failures.txt`` (``"PATH: reason"``) and the run goes on. PNGs of
    prediction folders (this one's or another's, e.g. a folder inside the input folder) are never
    taken as inputs. ``run.json`` is written first with ``"complete": false`` and rewritten last, after
    ``images.json``, ``masses_results.json`` and the failure lists: ``"complete": true`` means those
    files belong to that run. Its ``inputs`` map every input file to its stem, SHA-256 and status.

    Returns:
        summary dict (also ``run.json``): n_inputs, n_done, n_skipped, n_failed, failures, thresholds,
        n_ignored_outputs, inputs.

    Raises:
        InputError: the prediction folder cannot be created or its run files cannot be written (one
            line; what was written before stays, and ``resume`` picks it up).

    ``stems`` (one per input FILE, e.g. the canonical dataset's stems) replaces the names derived from
    the file names.
    """
    from tqdm import tqdm

    from common.io import atomic_write_bytes, atomic_write_json, os_error_reason

    out = Path(out_dir)
    paths = collect_inputs(inputs)
    n_ignored = 0
    if stems is None:
        kept = [p for p in paths if not is_prediction_output(p, out)]
        n_ignored = len(paths) - len(kept)
        paths = kept
        stems = unique_stems(paths)
    elif len(stems) != len(paths) or len(set(stems)) != len(stems):
        raise ValueError("stems must be unique, one per input file")
    entries = [{"file": str(p), "stem": s, "sha256": None, "status": "pending"}
               for p, s in zip(paths, stems)]
    images, results, failures = [], [], []
    n_done = n_skipped = 0
    t_start = time.time()

    def summary(complete: bool) -> dict[str, Any]:
        return {
            "format": "deeplima-run",
            "complete": complete,
            "bundle": str(pipeline.bundle.root.resolve()),
            "thresholds": pipeline.thresholds,
            "normalize_laterality": pipeline.normalize_laterality,
            "n_inputs": len(paths),
            "n_done": n_done,
            "n_skipped": n_skipped,
            "n_failed": len(failures),
            "n_ignored_outputs": n_ignored,
            "seconds": round(time.time() - t_start, 2),
            "failures": [f["message"] for f in failures],
            "inputs": entries,
        }

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", summary(False))  # also: is the folder writable?
    except OSError as e:
        raise InputError(out, f"cannot write the prediction folder ({os_error_reason(e)})") from None

    def fail(entry: dict, path: Path, reason: str, message: str | None = None) -> None:
        message = message or f"{path}: {reason}"
        failures.append({"file": str(path), "reason": reason, "message": message})
        entry.update(status="failed", error=message)

    bar = tqdm(list(zip(paths, stems, entries)), desc="deeplima predict", unit="img",
               disable=not progress)
    for image_id, (path, stem, entry) in enumerate(bar, start=1):
        json_path = out / "per_image" / f"{stem}.json"
        sha = entry["sha256"] = _sha256_or_none(path)
        rec = _done(json_path, sha, out, pipeline.thresholds, pipeline.model_id) if resume else None
        if rec is not None:
            n_skipped += 1
            entry["status"] = "skipped"
        else:
            try:
                res = pipeline(path)
            except InputError as e:
                fail(entry, path, e.reason, str(e))
                continue
            except Exception as e:  # a bug rather than a bad file: report it, go on with the rest
                fail(entry, path, " ".join(f"unexpected {type(e).__name__}: {e}".split()))
                continue
            try:
                rec = write_image_outputs(res, out, stem, image_id, pipeline.model_id, sha)
            except OSError as e:  # full disk, read-only folder...: this image fails, the run goes on
                fail(entry, path, f"cannot write its outputs to {out} ({os_error_reason(e)})")
                continue
            except Exception as e:
                fail(entry, path, " ".join(f"unexpected {type(e).__name__}: {e}".split()))
                continue
            n_done += 1
            entry["status"] = "done"
        images.append({"id": image_id, "file_name": str(path), "stem": stem,
                       "height": rec["height"], "width": rec["width"],
                       "json": f"per_image/{stem}.json"})
        results += [{"image_id": image_id, "category_id": 1, "bbox": m["bbox"], "score": m["score"]}
                    for m in rec["masses"]]
    final = summary(True)
    try:
        atomic_write_json(out / "images.json", images)
        atomic_write_json(out / "masses_results.json", results, indent=None)
        atomic_write_json(out / "failures.json", failures)
        atomic_write_bytes(out / "failures.txt",
                           "".join(f["message"] + "\n" for f in failures).encode())
        atomic_write_json(out / "run.json", final)  # last: "complete" vouches for the files above
    except OSError as e:
        raise InputError(out, f"cannot write the run files ({os_error_reason(e)}); the per-image "
                              f"outputs written so far are kept (rerun with --resume)") from None
    return final
