"""Lesion-level evaluation from the command line: FROC, recall and AP50 of boxes or masks.

The functions are those of :mod:`common.metrics`; this module is only their command line.

Boxes (mass detection)::

    python -m common.evaluate boxes --gt GT.json --pred PRED.json [--hit iou|center|iop] [--iou 0.5]
        [--pred-images images.json] [--split S] [--fps 1,2,5,10] [--bootstrap N --seed S]
        --out REPORT.json [--plot FROC.png]

Masks (calcification segmentation, the paper's IoP rule)::

    python -m common.evaluate masks (--gt-dir GT/ | --gt-json calcifications.json) [--split test]
        --pred-dir PRED/ [--types TYPES.json] [--iop 0.25] [--binarize 0.5] [--fps 1,2,5,10]
        [--gt-labels processed|raw] [--min-area-mm2 6.5] [--min-area-px 900]
        [--pixel-spacing MM] [--missing-as-empty] [--bootstrap N --seed S] --out REPORT.json
        [--plot FROC.png]

The report is the one of :func:`common.metrics.evaluate_boxes` /
:func:`common.metrics.evaluate_masks` (the Python API every evaluator of the project calls), written
as JSON; the files are read by :mod:`common.metrics.readers`.

Boxes: when the predictions come with an ``images.json`` (``--pred-images``, or beside ``--pred`` as
in a deeplima prediction folder) their image ids are mapped to the GT's by stem; ``--split`` scores
the GT images of one split of a canonical ``masses.json`` and drops the other predictions.

Masks: the ground truth is by default the paper's processed labels (§4.2.1), the same definition
the U-Net trains on (:mod:`common.calcifications`): GT components smaller than 6.5 mm² (the paper's
900 px at ~85 µm; the image's pixel spacing converts it, 900 px when unknown) are grown to that area
before the IoP rule; ``--gt-labels raw`` scores against the masks as annotated. A GT image without
prediction file is an error unless ``--missing-as-empty`` (then it counts as an image without any
prediction, with a warning); a prediction file without GT image is an error, except with
``--gt-json ... --split S`` where predictions of the other splits may share the folder and are
skipped. With ``--gt-json`` images whose ``mask_file`` is null are lesion-free images of the
evaluation. ``--gt-dir`` naming the ``calc_masks/`` folder of a canonical dataset (a
``calcifications.json`` beside it) reads that ``calcifications.json`` instead, as ``--gt-json`` would
(its images, lesion-free ones included, pixel spacings and types, ``--split`` if given); ``--split``
with any other ``--gt-dir`` is an error, as the folder says nothing of splits. FP per cm^2 divides by the full image area (``--pixel-spacing`` or the canonical images'
spacing).

Probability PNGs are read as value / 255 (8-bit) or value / 65535 (16-bit). A PNG holding only the
values 0 and 1 (8 or 16 bit) or 0 and 255 (16 bit) is most likely a binary mask saved without
scaling (it reads as p <= 0.004, below any ``--binarize``): it is read as it is, with a warning on
stderr. Save masks as 0/255 (8-bit) or 0/65535 (16-bit), or probabilities as floats in ``.npy``.

Untrusted input is checked: JSON fields must have the right types (ids are integers or strings, not
booleans; a bbox is a list of 4 finite numbers, not a string; scores are numbers), two GT images
sharing a stem are an error naming both, threshold arguments must be finite and in range, images
larger than ``$DEEPLIMA_MAX_PIXELS`` (default 100 million pixel values, see :mod:`common.limits`)
are refused from their header, and ``--out``/``--plot`` must be writable files (not folders).

Exit status: 0 on success; 2 on a usage, input or output error, with one line ``error: ...`` on
stderr (bad argument such as ``--iou nan`` or ``--bootstrap -5``; missing file, unknown image id,
bad bbox, NaN score, mismatched mask size, duplicate stem, ...; ``--out`` that is a folder, a file
that cannot be read or written: a folder given as a file, no permission, disk full); 1 on an
unexpected failure (a bug: traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from common.calcifications import DEFAULT_MIN_AREA_MM2, DEFAULT_MIN_AREA_PX
from common.cli import OneLineArgumentParser, number_arg, number_list_arg
from common.errors import InputError
from common.io import atomic_write_json
from common.metrics import DEFAULT_FPS, evaluate_boxes, evaluate_masks
from common.metrics.matching import BOX_HIT_RULES
from common.metrics.readers import (
    LazyFiles,
    gt_masks_from_canonical,
    gt_masks_from_dir,
    prob_map_files,
    read_box_inputs,
    read_prob_map,
)
from common.plots import plot_froc

# argument types of the command line (usage errors, exit status 2)
_parse_fps = number_list_arg(0)
_threshold_arg = number_arg(0, 1, low_open=True)
_count_arg = number_arg(0, integer=True)
_positive_arg = number_arg(0, low_open=True)
_non_negative_arg = number_arg(0)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineArgumentParser(
        prog="python -m common.evaluate", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="mode", required=True)

    def common_args(p):
        p.add_argument("--fps", type=_parse_fps, default=list(DEFAULT_FPS), help="FP/image levels")
        p.add_argument("--out", required=True, type=Path,
                       help="REPORT.json (written atomically; not a folder)")
        p.add_argument("--plot", type=Path, help="FROC plot PNG (FP per image on a log axis)")
        p.add_argument("--bootstrap", type=_count_arg, default=0, metavar="N",
                       help="bootstrap replicates (>= 0)")
        p.add_argument("--seed", type=_count_arg, default=0, help="bootstrap seed (>= 0)")

    b = sub.add_parser("boxes", help="mass detection: COCO GT vs COCO results")
    b.add_argument("--gt", required=True, type=Path, help="COCO GT json")
    b.add_argument("--pred", required=True, type=Path, help="COCO results json")
    b.add_argument("--hit", choices=sorted(BOX_HIT_RULES), default="iou", help="FROC hit rule")
    b.add_argument("--iou", type=_threshold_arg, default=0.5,
                   help="threshold of the iou / iop hit rule, in (0, 1]")
    b.add_argument("--pred-images", type=Path,
                   help="the prediction folder's images.json ([{id, stem}]): prediction image ids "
                        "are mapped to the GT's by file stem (default: images.json beside --pred, "
                        "as in a deeplima prediction folder)")
    b.add_argument("--split",
                   help="score only the GT images of this split (canonical masses.json); "
                        "predictions of other images are dropped (needs the stem mapping)")
    common_args(b)

    m = sub.add_parser("masks", help="calcification segmentation: IoP rule on probability maps")
    g = m.add_mutually_exclusive_group(required=True)
    g.add_argument("--gt-dir", type=Path,
                   help="GT mask PNGs (non-zero = lesion), one per image; a canonical dataset's "
                        "calc_masks/ folder is read through the calcifications.json beside it "
                        "(as --gt-json)")
    g.add_argument("--gt-json", type=Path, help="canonical calcifications.json (all its images)")
    m.add_argument("--split",
                   help="evaluate only the images of this split (train, val, test) and skip "
                        "predictions of other images; needs --gt-json or --gt-dir CANONICAL/calc_masks")
    m.add_argument(
        "--pred-dir", required=True, type=Path, help="<stem>.png (8/16-bit) or <stem>.npy"
    )
    m.add_argument(
        "--types", type=Path, help="stem -> [{type, point}] json, or calcifications.json"
    )
    m.add_argument("--iop", type=_threshold_arg, default=0.25,
                   help="IoP threshold of a true positive, in (0, 1]")
    m.add_argument(
        "--binarize", type=_threshold_arg, default=0.5,
        help="probability threshold of components (prob >= binarize), in (0, 1]",
    )
    m.add_argument(
        "--gt-labels",
        choices=["processed", "raw"],
        default="processed",
        help="ground truth of the IoP rule. processed (default): the paper's processed labels, "
        "the U-Net's training target: every GT component smaller than --min-area-mm2 (converted "
        "with the image's pixel spacing; --min-area-px when the spacing is unknown) is grown to "
        "that area without merging neighbours. raw: the masks as annotated (a blob predicted over "
        "a 1-3 px dot then has IoP far below 0.25)",
    )
    m.add_argument(
        "--min-area-mm2",
        type=_non_negative_arg,
        default=DEFAULT_MIN_AREA_MM2,
        help="minimum component area of the processed labels in mm^2 (default %(default)s: the "
        "paper's 900 px at ~85 um pixels); 0 = always --min-area-px",
    )
    m.add_argument(
        "--min-area-px",
        type=_count_arg,
        default=DEFAULT_MIN_AREA_PX,
        help="minimum area in pixels for images without a known pixel spacing "
        "(default %(default)s)",
    )
    m.add_argument("--pixel-spacing", type=_positive_arg,
                   help="mm per pixel (isotropic), for FP per cm^2 and the processed labels' "
                        "minimum area")
    m.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="a GT image without prediction file counts as having no prediction (warning); "
        "default: error",
    )
    common_args(m)
    return ap


def _check_output(path: Path, flag: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output path that cannot be a file we write, before any work is done."""
    if path.is_dir():
        raise InputError(path, f"{flag} is an existing folder; give a file name such as "
                               f"{path / ('REPORT.json' if flag == '--out' else 'froc.png')}")
    for other in inputs:
        if other is not None and other.exists() and path.exists() and os.path.samefile(path, other):
            raise InputError(path, f"{flag} would overwrite an input file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"{flag}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(path, f"{flag}: no permission to write in {parent}")


def _write_error(path: Path, what: str, e: OSError) -> InputError:
    reason = e.strerror or str(e) or type(e).__name__
    return InputError(path, f"cannot write the {what} ({reason})")


def _canonical_json(gt_dir: Path) -> Path | None:
    """The ``calcifications.json`` of the canonical dataset whose ``calc_masks/`` is ``gt_dir``."""
    gt_json = gt_dir.resolve().parent / "calcifications.json"
    if gt_dir.resolve().name == "calc_masks" and gt_json.is_file():
        return gt_json
    return None


def _run(args) -> dict:
    if args.mode == "masks" and args.gt_dir is not None:
        canonical = _canonical_json(args.gt_dir)
        if canonical is not None:
            args.gt_dir, args.gt_json = None, canonical
        elif args.split is not None:
            raise InputError(args.gt_dir, "--split needs a canonical dataset: use --gt-json "
                                          f"CANONICAL/calcifications.json --split {args.split}")
    inputs = [getattr(args, k, None) for k in ("gt", "pred", "gt_json", "types")]
    _check_output(args.out, "--out", inputs)
    if args.plot is not None:
        _check_output(args.plot, "--plot", inputs)
        if args.plot.resolve() == args.out.resolve():
            raise InputError(args.plot, "--plot and --out are the same file")
    if args.mode == "boxes":
        gt, predictions = read_box_inputs(args.gt, args.pred, args.pred_images, args.split)
        report = evaluate_boxes(
            gt,
            predictions,
            hit=args.hit,
            iou_thr=args.iou,
            fps=args.fps,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        curves = {"all": report["froc"]}
    else:
        if args.gt_dir is not None:
            gt = gt_masks_from_dir(args.gt_dir)
            types = args.types
        else:
            gt, coco = gt_masks_from_canonical(args.gt_json, args.split)
            types = args.types if args.types is not None else coco
        pred_files = prob_map_files(args.pred_dir)
        unknown = sorted(set(pred_files) - set(gt))
        if unknown and args.gt_json is not None and args.split is not None:
            # predictions of other splits are expected in a shared folder
            pred_files = {s: p for s, p in pred_files.items() if s in gt}
        elif unknown:
            raise InputError(pred_files[unknown[0]], "prediction for an image without GT mask")
        missing = sorted(set(gt) - set(pred_files))
        if missing and not args.missing_as_empty:
            hint = "; --split S to score one split" if args.gt_json and args.split is None else ""
            raise InputError(
                args.pred_dir / f"{missing[0]}.png",
                f"no prediction (.png or .npy) for GT image {missing[0]!r} "
                f"({len(missing)} missing; --missing-as-empty to accept{hint})",
            )
        report = evaluate_masks(
            gt,
            LazyFiles(pred_files, read_prob_map),
            types=types,
            min_area_mm2=args.min_area_mm2 if args.gt_labels == "processed" else None,
            min_area_px=args.min_area_px,
            iop_thr=args.iop,
            binarize=args.binarize,
            fps=args.fps,
            pixel_spacing=args.pixel_spacing,
            missing="empty" if args.missing_as_empty else "error",
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        curves = {"all": report["froc"]}
        for t, s in report.get("per_type", {}).items():
            if s["n_lesions"]:
                curves[t] = s["froc"]
    try:
        atomic_write_json(args.out, report)
    except OSError as e:
        raise _write_error(args.out, "report", e) from None
    if args.plot is not None:
        try:
            plot_froc(curves, args.plot, title=f"FROC ({args.mode})", fps=args.fps)
        except OSError as e:
            raise _write_error(args.plot, "plot", e) from None
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line already printed, status 2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        report = _run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder that cannot be read or written (a folder as --gt, ...)
        reason = e.strerror or str(e) or type(e).__name__
        where = f"{e.filename}: " if e.filename else ""
        print(" ".join(f"error: {where}{reason}".split()), file=sys.stderr)
        return 2
    sens = ", ".join(
        f"{k}: {v if v is None else round(v, 4)}" for k, v in report["sensitivity_at_fp"].items()
    )
    extra = f"ap50_coco {report['ap50_coco']}  " if "ap50_coco" in report else ""
    print(f"{extra}recall {report['recall']}  sensitivity@FP/image {{{sens}}}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
