"""Evaluation of a prediction folder against a canonical dataset, and the HTML report people read.

The numbers come from :mod:`common.metrics` only (:func:`~common.metrics.evaluate_boxes` for
masses, :func:`~common.metrics.evaluate_masks` for calcifications, per type), the FROC figures from
:func:`common.plots.plot_froc`; the thumbnails of hits, misses and false positives use the same
per-image matching functions (:mod:`common.metrics.matching`) at the run's operating thresholds. The
canonical dataset is read with :func:`common.canonical.read_canonical_coco`.

Input: a prediction folder in the format of :mod:`deeplima.pipeline` (only ``images.json``,
``masses_results.json`` and ``calc_prob/<stem>.png`` are read; stems are the canonical stems) and a
canonical dataset folder (``masses.json``, ``calcifications.json``, ``calc_masks/``).

The report also lists the folder's per-study summaries (``per_study/<StudyInstanceUID>.json`` of
:mod:`deeplima.writer`) when it has any: per study and breast, the highest mass score and its image,
the numbers of findings, the calcification area in mm², the views and failed files.

Output folder::

    REPORT/
      index.html          the report (tables, FROC curves, thumbnails, studies)
      report.json         {"mass": evaluate_boxes report, "calc": evaluate_masks report,
                           "studies": the per-study summaries, ...}
      froc_masses.png, froc_calcifications.png
      thumbs/*.png
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.calcifications import (
    DEFAULT_MIN_AREA_MM2,
    DEFAULT_MIN_AREA_PX,
    label_components,
    min_area_pixels,
)
from common.canonical import coco_path, read_canonical_coco, resolve_file, select_split
from common.errors import InputError
from common.io import atomic_write_bytes, atomic_write_json, atomic_write_png, read_json
from common.metrics import (
    DEFAULT_FPS,
    LazyFiles,
    at_fp,
    evaluate_boxes,
    evaluate_masks,
    fp_key,
    read_gt_mask,
    read_prob_map,
)
from common.metrics.matching import assign_types, match_image_boxes, match_image_masks
from common.plots import plot_froc
from common.preprocess import preprocess

from .overlay import CALC_COLOR, GT_COLOR, MASS_COLOR, crop_around, draw_findings, thumbnail

__all__ = ["evaluate_folder", "read_study_summaries", "write_report"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ loading
def _load_predictions(pred_dir: Path):
    """(images by stem, mass results keyed by stem, calc prob files by stem)."""
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    images = read_json(pred_dir / "images.json")
    if not isinstance(images, list):
        raise InputError(pred_dir / "images.json", "expected a list of {id, stem, ...}")
    by_id = {}
    for i, im in enumerate(images):
        if "id" not in im or "stem" not in im:
            raise InputError(pred_dir / "images.json", f"[{i}] needs 'id' and 'stem'")
        by_id[im["id"]] = im
    results = read_json(pred_dir / "masses_results.json")
    if not isinstance(results, list):
        raise InputError(pred_dir / "masses_results.json", "expected a list of COCO results")
    by_stem: dict[str, list[dict]] = {}
    for i, r in enumerate(results):
        im = by_id.get(r.get("image_id"))
        if im is None:
            raise InputError(pred_dir / "masses_results.json",
                             f"[{i}]: image_id {r.get('image_id')!r} is not in images.json")
        by_stem.setdefault(im["stem"], []).append(r)
    prob_dir = pred_dir / "calc_prob"
    probs = {p.stem: p for p in sorted(prob_dir.glob("*.png"))} if prob_dir.is_dir() else {}
    probs.update({p.stem: p for p in sorted(prob_dir.glob("*.npy"))} if prob_dir.is_dir() else {})
    return {im["stem"]: im for im in images}, by_stem, probs


def _canonical(gt_root: Path, split: str | None) -> tuple[dict, dict]:
    """(masses, calcifications) COCO ground truth of the images of ``split`` (None = all).

    The split is the mass file's; the calcification file is cut to the same image ids (the two
    files of a canonical folder describe the same images).
    """
    masses = read_canonical_coco(coco_path(gt_root, "mass"))
    calcs = read_canonical_coco(coco_path(gt_root, "calc"))
    mass_gt = select_split(masses, split)
    if not mass_gt["images"]:
        raise InputError(coco_path(gt_root, "mass"),
                         f"no image{'' if split is None else f' in split {split!r}'}")
    calc_gt = select_split(calcs, None, image_ids={im["id"] for im in mass_gt["images"]})
    return mass_gt, calc_gt


def _gt_mask_reader(gt_root: Path):
    """Image record -> (H, W) bool calcification mask (all False when ``mask_file`` is null)."""

    def read(im: dict) -> np.ndarray:
        mf = im.get("mask_file")
        if not mf:
            return np.zeros((int(im["height"]), int(im["width"])), bool)
        return read_gt_mask(resolve_file(gt_root, mf))

    return read


# --------------------------------------------------------------------------------------- evaluation
def evaluate_folder(
    pred_dir: str | Path,
    gt_root: str | Path,
    split: str | None = "test",
    fps: Iterable[float] = DEFAULT_FPS,
    hit: str = "iou",
    iou_thr: float = 0.5,
    iop_thr: float = 0.25,
    binarize: float = 0.5,
    gt_labels: str = "processed",
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2,
    min_area_px: int = DEFAULT_MIN_AREA_PX,
) -> dict[str, Any]:
    """Score a prediction folder on the images of ``split`` of a canonical dataset.

    Masses: ``evaluate_boxes`` on the split's COCO ground truth, predictions re-keyed from the
    folder's image ids to the canonical ids through the stems. Calcifications: ``evaluate_masks`` on
    the split's masks with the canonical ``calc_type`` points (per-type FROC), by default against
    the processed labels the U-Net is trained on (``gt_labels="processed"``: components grown to
    ``min_area_mm2`` with each image's pixel spacing, ``min_area_px`` without one;
    :mod:`common.calcifications`), or against the raw masks (``gt_labels="raw"``). A canonical image
    without prediction counts as an image without any finding (listed in ``missing``); predictions
    of images outside the split are ignored.

    Returns:
        {"mass": report, "calc": report, "split", "n_images", "missing": [stems], "mass_gt",
        "calc_gt"} (the last two are the COCO dicts of the split, for the thumbnails).
    """
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    fps = list(fps)
    images, mass_by_stem, prob_files = _load_predictions(pred_dir)
    mass_gt, calc_gt = _canonical(gt_root, split)
    stems = [im["stem"] for im in mass_gt["images"]]
    missing = [s for s in stems if s not in images]
    if missing:
        logger.warning("%d image(s) of the split have no prediction, scored as empty (%s...)",
                       len(missing), missing[0])
    id_of = {im["stem"]: im["id"] for im in mass_gt["images"]}
    preds = [{**r, "image_id": id_of[stem], "category_id": 1}
             for stem, rs in mass_by_stem.items() if stem in id_of for r in rs]
    mass_report = evaluate_boxes(mass_gt, preds, hit=hit, iou_thr=iou_thr, fps=fps)

    if gt_labels not in ("processed", "raw"):
        raise ValueError(f"gt_labels must be 'processed' or 'raw', got {gt_labels!r}")
    calc_images = {im["stem"]: im for im in calc_gt["images"]}
    min_area = None
    if gt_labels == "processed":
        min_area = {s: min_area_pixels(im.get("pixel_spacing"), min_area_mm2, min_area_px)
                    for s, im in calc_images.items()}
    gt = LazyFiles(calc_images, _gt_mask_reader(gt_root), name=lambda im: str(im.get("mask_file")))
    probs = LazyFiles({s: p for s, p in prob_files.items() if s in calc_images}, read_prob_map)
    calc_report = evaluate_masks(gt, probs, types=calc_gt, iop_thr=iop_thr, binarize=binarize,
                                 fps=fps, missing="empty", min_area=min_area)
    return {"mass": mass_report, "calc": calc_report, "split": split, "n_images": len(stems),
            "missing": missing, "mass_gt": mass_gt, "calc_gt": calc_gt,
            "settings": {"hit": hit, "iou_thr": iou_thr, "iop_thr": iop_thr, "binarize": binarize,
                         "fps": fps, "gt_labels": gt_labels, "min_area_mm2": min_area_mm2,
                         "min_area": min_area or {}}}


# ------------------------------------------------------------------------------------------ studies
def read_study_summaries(pred_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(per-study summaries of a prediction folder, sorted by Study Instance UID; one-line notes on
    the files that could not be read). A folder without ``per_study/`` has none."""
    folder = Path(pred_dir) / "per_study"
    studies, notes = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            rec = read_json(path)
        except (InputError, OSError) as e:
            notes.append(str(e) if isinstance(e, InputError) else f"{path}: unreadable")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("breasts"), dict):
            notes.append(f"{path}: not a per-study summary")
            continue
        studies.append(rec)
    return studies, notes


def _study_rows(studies: list[dict]) -> list[list[str]]:
    """One table row per breast of each study (HTML-escaped cells)."""

    def esc(v) -> str:
        return html.escape(str(v))

    def num(v, digits: int) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"

    rows = []
    for st in studies:
        failed = st.get("failed") or []
        for side, b in sorted((st.get("breasts") or {}).items()):
            if not isinstance(b, dict):
                continue
            mass, calc = b.get("mass") or {}, b.get("calc") or {}
            top = mass.get("max") or {}
            where = (f"{num(mass.get('max_score'), 3)} ({esc(top.get('stem', ''))})"
                     if mass.get("max_score") is not None else "–")
            types = ", ".join(f"{esc(k)} {esc(v)}" for k, v in (calc.get("types") or {}).items())
            rows.append([
                f"<code>{esc(st.get('study_instance_uid', ''))}</code>", esc(side),
                esc(", ".join(map(str, b.get("views") or []))) or "–",
                esc(", ".join(map(str, b.get("images") or []))),
                esc(mass.get("n_findings", "–")) if mass else "–", where if mass else "–",
                esc(calc.get("n_findings", "–")) if calc else "–",
                num(calc.get("total_area_mm2"), 2) if calc else "–", types or "–",
                esc("; ".join(f"{f.get('stem') or f.get('file')}: {f.get('reason')}"
                              for f in failed if isinstance(f, dict))) or "–",
            ])
    return rows


def _study_section(studies: list[dict], notes: list[str]) -> str:
    """The report's per-study section (empty when the folder has no per-study summaries)."""
    if not studies and not notes:
        return ""
    rows = _study_rows(studies)
    table = _table(["study", "breast", "views", "images", "mass findings",
                    "highest mass score (image)", "calc. findings", "calc. area (mm²)",
                    "calc. types", "failed"], rows) if rows else "<p>none</p>"
    bad = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (f"<h2>Studies</h2>\n<p>{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} "
            f"(per_study/ of the prediction folder): findings at the run's thresholds, per "
            f"breast.</p>\n{bad}{table}\n")


# --------------------------------------------------------------------------------------- thumbnails
class _Images:
    """Pre-processed canonical images (original frame), read on demand and kept."""

    def __init__(self, gt_root: Path, images: dict[str, dict]):
        self.gt_root, self.images, self.cache = gt_root, images, {}

    def __call__(self, stem: str) -> np.ndarray:
        if stem not in self.cache:
            fn = resolve_file(self.gt_root, self.images[stem]["file_name"])
            self.cache[stem] = preprocess(str(fn)).image
        return self.cache[stem]


def _mass_cases(ev: dict, pred_dir: Path, thr: float) -> dict[str, list[dict]]:
    """Mass hits / misses / false positives at score threshold ``thr`` (boxes XYWH, original
    pixels)."""
    _, mass_by_stem, _ = _load_predictions(pred_dir)
    gt_by_image: dict[int, list] = {}
    for a in ev["mass_gt"]["annotations"]:
        gt_by_image.setdefault(a["image_id"], []).append(a["bbox"])
    cases: dict[str, list[dict]] = {"hit": [], "miss": [], "fp": []}
    s = ev["settings"]
    for im in ev["mass_gt"]["images"]:
        preds = [r for r in mass_by_stem.get(im["stem"], []) if r["score"] >= thr]
        gts = gt_by_image.get(im["id"], [])
        m = match_image_boxes([r["bbox"] for r in preds], [r["score"] for r in preds], gts,
                              hit=s["hit"], thr=s["iou_thr"])
        for r, h in zip(preds, m.pred_hit):
            cases["hit" if h else "fp"].append({"stem": im["stem"], "bbox": r["bbox"],
                                                "score": r["score"]})
        for b, ls in zip(gts, m.lesion_scores):
            if not np.isfinite(ls):
                cases["miss"].append({"stem": im["stem"], "bbox": b, "score": None})
    for k in ("hit", "fp"):
        cases[k].sort(key=lambda c: -c["score"])
    return cases


def _xywh(sl: tuple[slice, slice]) -> list[int]:
    """``[x, y, w, h]`` (pixels) of a (row, column) slice pair from ``ndimage.find_objects``."""
    return [sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start]


def _calc_cases(ev: dict, pred_dir: Path, gt_root: Path, thr: float, limit: int):
    """Calcification hits / misses / FPs at threshold ``thr`` (component score = its maximum
    probability); boxes XYWH around the components, original pixels."""
    _, _, prob_files = _load_predictions(pred_dir)
    read_gt = _gt_mask_reader(gt_root)
    points: dict[int, list] = {}
    for a in ev["calc_gt"]["annotations"]:
        if a.get("point") is not None:
            points.setdefault(a["image_id"], []).append({"type": a.get("calc_type"),
                                                         "point": a["point"]})
    s = ev["settings"]
    cases: dict[str, list[dict]] = {"hit": [], "miss": [], "fp": []}
    kept_masks: dict[str, np.ndarray] = {}
    complete = True
    for im in ev["calc_gt"]["images"]:
        if all(len(v) >= limit for v in cases.values()):
            complete = False  # enough examples of each kind: the counts are lower bounds
            break
        gt = read_gt(im)
        prob = read_prob_map(prob_files[im["stem"]]) if im["stem"] in prob_files else \
            np.zeros(gt.shape, np.float32)
        lab, n = label_components(prob >= s["binarize"])
        if n:
            top = ndimage.maximum(prob, lab, index=np.arange(1, n + 1))
            keep = np.concatenate([[False], np.asarray(top) >= thr])
            prob = np.where(keep[lab], prob, 0).astype(np.float32)
            lab, n = label_components(prob >= s["binarize"])
        kept_masks[im["stem"]] = lab > 0
        m = match_image_masks(gt, prob, iop_thr=s["iop_thr"], binarize=s["binarize"],
                              min_area=s["min_area"].get(im["stem"]))
        for k, sl in enumerate(ndimage.find_objects(lab)):
            cases["hit" if m.pred_hit[k] else "fp"].append(
                {"stem": im["stem"], "bbox": _xywh(sl), "score": float(m.pred_scores[k])})
        gl, gn = label_components(gt)
        types = assign_types(gl, gn, points.get(im["id"], []))
        for k, sl in enumerate(ndimage.find_objects(gl)):
            if not np.isfinite(m.lesion_scores[k]):
                cases["miss"].append({"stem": im["stem"], "bbox": _xywh(sl), "score": None,
                                      "type": types[k]})
    for k in ("hit", "fp"):
        cases[k].sort(key=lambda c: -c["score"])
    return cases, kept_masks, complete


def _write_thumbs(cases, kind, images: _Images, out: Path, draw, limit: int) -> dict[str, list]:
    shown: dict[str, list] = {}
    for cat, items in cases.items():
        shown[cat] = []
        for i, c in enumerate(items[:limit]):
            rgb = draw(c["stem"], images(c["stem"]))
            name = f"thumbs/{kind}_{cat}_{i}.png"
            crop = crop_around(rgb, c["bbox"], context=3.0)
            atomic_write_png(out / name, thumbnail(crop, 200, enlarge=True))
            shown[cat].append({**c, "png": name})
    return shown


# ------------------------------------------------------------------------------------------ HTML
def _fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:.3em .7em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;width:200px;font-size:.8em}
.grid img{width:200px;border:1px solid #999}.note{background:#fff8e0;padding:.6em 1em;\
border-left:4px
solid #e0b000}.legend span{padding:0 .5em;color:#fff}figure figcaption{word-break:break-all}
"""


def write_report(
    pred_dir: str | Path,
    gt_root: str | Path,
    out_dir: str | Path,
    split: str | None = "test",
    thresholds: dict | None = None,
    title: str = "DeepLIMa evaluation report",
    context: str = "",
    fps: Iterable[float] = DEFAULT_FPS,
    max_thumbs: int = 6,
    gt_labels: str = "processed",
) -> Path:
    """Evaluate ``pred_dir`` against ``gt_root`` (:func:`evaluate_folder`), write the report folder.

    Args:
        thresholds: {"mass": t, "calc": t} operating thresholds for the thumbnails; default: the
            ``thresholds`` of ``pred_dir/run.json`` when present, else 0.5.
        context: a sentence or two shown at the top (how the models were trained, on what).
        max_thumbs: thumbnails per category (hits / misses / false positives, per lesion kind).
        gt_labels: calcification ground truth, "processed" (the training target) or "raw" masks.

    Returns:
        path of ``index.html``.
    """
    pred_dir, gt_root, out = Path(pred_dir), Path(gt_root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = list(fps)
    ev = evaluate_folder(pred_dir, gt_root, split, fps, gt_labels=gt_labels)
    if thresholds is None:
        run = pred_dir / "run.json"
        thresholds = read_json(run).get("thresholds") if run.is_file() else None
        thresholds = thresholds or {"mass": 0.5, "calc": 0.5}
    mass, calc = ev["mass"], ev["calc"]
    studies, study_notes = read_study_summaries(pred_dir)
    atomic_write_json(out / "report.json", {
        "split": split, "n_images": ev["n_images"], "missing_predictions": ev["missing"],
        "thresholds": thresholds, "settings": ev["settings"], "mass": mass, "calc": calc,
        "studies": studies,
    })

    plot_froc({"masses": mass["froc"]}, out / "froc_masses.png", title="FROC: masses", fps=fps)
    curves = {"all calcifications": calc["froc"]}
    for t, s in (calc.get("per_type") or {}).items():
        if s["n_lesions"]:
            curves[t] = s["froc"]
    plot_froc(curves, out / "froc_calcifications.png", title="FROC: calcifications", fps=fps)

    # thumbnails
    all_images = {im["stem"]: im for im in ev["mass_gt"]["images"]}
    images = _Images(gt_root, all_images)
    _, mass_by_stem, _ = _load_predictions(pred_dir)
    mass_gt_by_stem: dict[str, list] = {}
    id2stem = {im["id"]: im["stem"] for im in ev["mass_gt"]["images"]}
    for a in ev["mass_gt"]["annotations"]:
        mass_gt_by_stem.setdefault(id2stem[a["image_id"]], []).append(a["bbox"])
    mass_cases = _mass_cases(ev, pred_dir, thresholds["mass"])
    calc_cases, kept, calc_complete = _calc_cases(ev, pred_dir, gt_root, thresholds["calc"],
                                                  max_thumbs)
    gt_reader = _gt_mask_reader(gt_root)
    calc_by_stem = {im["stem"]: im for im in ev["calc_gt"]["images"]}

    def draw_mass(stem, gray):
        preds = [r for r in mass_by_stem.get(stem, []) if r["score"] >= thresholds["mass"]]
        return draw_findings(gray, preds, gt_boxes=mass_gt_by_stem.get(stem, []))

    def draw_calc(stem, gray):
        return draw_findings(gray, calc_mask=kept.get(stem), gt_mask=gt_reader(calc_by_stem[stem]),
                             show_scores=False)

    mass_thumbs = _write_thumbs(mass_cases, "mass", images, out, draw_mass, max_thumbs)
    calc_thumbs = _write_thumbs(calc_cases, "calc", images, out, draw_calc, max_thumbs)

    # tables
    ks = [fp_key(k) for k in fps]

    def sens(report: dict) -> list[str]:
        return [_fmt(at_fp(report["sensitivity_at_fp"], k)) for k in ks]

    mass_rows = [["masses", _fmt(mass.get("ap50_coco")), _fmt(mass.get("ap50_voc")),
                  _fmt(mass.get("recall")), *sens(mass),
                  str(mass.get("n_lesions")), str(mass.get("n_predictions"))]]
    calc_rows = [["all calcifications", "–", "–", _fmt(calc.get("recall")),
                  *sens(calc), str(calc.get("n_lesions")), str(calc.get("n_predictions"))]]
    for t, s in (calc.get("per_type") or {}).items():
        calc_rows.append([f"&nbsp;&nbsp;calcifications: {html.escape(t)}", "–", "–",
                          _fmt(s.get("recall")), *sens(s), str(s.get("n_lesions")), "–"])
    table = _table(["", "AP50 (COCO)", "AP50 (VOC)", "recall",
                    *[f"sens. @ {k} FP/img" for k in ks], "lesions", "predictions"],
                   mass_rows + calc_rows)

    def grid(shown: dict, cases: dict, complete: bool, labels: dict) -> str:
        parts = []
        for cat, name in labels.items():
            items = shown.get(cat, [])
            figs = "".join(
                f'<figure><img src="{html.escape(c["png"])}" alt="{cat}"><figcaption>'
                f'{html.escape(c["stem"])}'
                + (f' · score {c["score"]:.2f}' if c.get("score") is not None else "")
                + (f' · {html.escape(str(c["type"]))}' if c.get("type") else "")
                + "</figcaption></figure>" for c in items)
            count = f"{len(cases.get(cat, []))}{'' if complete else ' or more'}"
            parts.append(f"<h4>{name} ({count}; {len(items)} shown)</h4>"
                         f'<div class="grid">{figs or "<p>none</p>"}</div>')
        return "".join(parts)

    def rgb(c):
        return f"rgb{tuple(c)}"

    missing = ""
    if ev["missing"]:
        more = " ..." if len(ev["missing"]) > 10 else ""
        missing = (f'<p class="note">{len(ev["missing"])} image(s) of the split have no prediction '
                   f'and were scored as images without findings: '
                   f'{html.escape(", ".join(ev["missing"][:10]))}{more}</p>')
    s = ev["settings"]
    areas = sorted(set(s["min_area"].values()))
    gt_text = ("the annotated masks (raw labels)" if s["gt_labels"] == "raw" else
               "the processed labels the U-Net is trained on (components smaller than "
               f"{s['min_area_mm2']} mm² grown to that area: "
               + (f"{areas[0]}–{areas[-1]}" if len(areas) > 1 else f"{areas[0] if areas else '–'}")
               + " px on these images)")
    mass_grid = grid(mass_thumbs, mass_cases, True,
                     {"hit": "Hits", "miss": "Missed masses", "fp": "False positives"})
    calc_grid = grid(calc_thumbs, calc_cases, calc_complete,
                     {"hit": "Hits (components)", "miss": "Missed calcifications",
                      "fp": "False positives"})
    body = f"""
<h1>{html.escape(title)}</h1>
{f'<p class="note">{context}</p>' if context else ''}
<p>Predictions <code>{html.escape(str(pred_dir))}</code> against \
<code>{html.escape(str(gt_root))}</code>,
split <b>{html.escape(str(split))}</b>: {ev['n_images']} images.
Masses: a detection is a hit when its IoU with a ground-truth box is &ge; {s['iou_thr']} \
({s['hit']} rule).
Calcifications: components of the probability map &ge; {s['binarize']}, scored by their maximum
probability; a component is a hit when its intersection over its own area with the ground-truth \
mask is
&ge; {s['iop_thr']} (IoP), the ground truth being {gt_text}. Sensitivity at K FP/image is the best \
sensitivity with at most K false positives
per image on average; per-type rows keep the overall FP axis.</p>
{missing}
<h2>Scores</h2>
{table}
<h2>FROC curves</h2>
<div class="grid" style="gap:20px">
<img src="froc_masses.png" style="width:480px" alt="FROC masses">
<img src="froc_calcifications.png" style="width:480px" alt="FROC calcifications"></div>
<h2>Examples at the operating point</h2>
<p>Mass threshold {thresholds['mass']:.3f}, calcification threshold {thresholds['calc']:.3f}
({html.escape(str(thresholds.get('source', '')))}).
<span class="legend"><span style="background:{rgb(MASS_COLOR)}">mass detection</span>
<span style="background:{rgb(CALC_COLOR)};color:#000">calcification outline</span>
<span style="background:{rgb(GT_COLOR)}">ground truth</span></span></p>
<h3>Masses</h3>
{mass_grid}
<h3>Calcifications</h3>
{calc_grid}
{_study_section(studies, study_notes)}
<p>Full numbers: <a href="report.json">report.json</a> (FROC points, counts, per-type curves).</p>
"""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")
    return atomic_write_bytes(out / "index.html", page.encode("utf-8"))
