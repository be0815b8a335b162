"""DeepLIMa command line: predict findings, evaluate a prediction folder, calibrate operating points.

    python -m scripts.deeplima predict INPUT... --output DIR --model BUNDLE
        [--threshold T | --target-fp K] [--resume] [--normalize-laterality | --keep-laterality]
    python -m scripts.deeplima evaluate --pred DIR --gt CANONICAL_DIR [--split test] --output REPORT_DIR
    python -m scripts.deeplima calibrate --model BUNDLE --gt CANONICAL_DIR [--split val] [--fps 0.5,1,2]

(also installed as the ``deeplima`` command). INPUT may be DICOM/PNG/TIFF files, folders (searched
recursively) and glob patterns. The prediction folder format is described in ``deeplima/pipeline.py``;
``evaluate`` accepts any folder with ``images.json``, ``masses_results.json`` and
``calc_prob/<stem>.png``, so predictions of other tools can be scored the same way.

Exit status: 0 success; 1 some input files failed (listed in DIR/failures.txt, the others are done);
2 unusable arguments, bundle or ground truth (one line ``error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# ``deeplima`` as an installed console command: the package sits next to this folder
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _fps(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("FP/image levels must be positive")
    return vals


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="deeplima", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="find masses and calcifications in mammograms")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns")
    p.add_argument("--output", "-o", required=True, type=Path, help="prediction folder")
    p.add_argument("--model", "-m", required=True, type=Path, help="model bundle folder")
    op = p.add_mutually_exclusive_group()
    op.add_argument("--threshold", type=float, help="score threshold of findings, masses and calcifications (calcification components are the pixels above the U-Net config's TEST.THRESHOLD, 0.5 by default, so values below it keep every component)")
    op.add_argument("--target-fp", type=float, metavar="K",
                    help="operating point calibrated for K false positives per image (bundle)")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are complete")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--normalize-laterality", dest="laterality", action="store_const", const=True,
                     help="mirror images to put the chest wall left before the models (results "
                          "are mapped back)")
    lat.add_argument("--keep-laterality", dest="laterality", action="store_const", const=False,
                     help="never mirror (default: as the mass model was trained)")
    p.add_argument("--device", help="cpu / cuda (default: the bundle's, CPU when CUDA is absent)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="score a prediction folder and write the HTML report")
    e.add_argument("--pred", required=True, type=Path, help="prediction folder")
    e.add_argument("--gt", required=True, type=Path, help="canonical dataset folder")
    e.add_argument("--split", default="test", help="split to evaluate ('all' for every image)")
    e.add_argument("--output", "-o", required=True, type=Path, help="report folder")
    e.add_argument("--fps", type=_fps, default=[1, 2, 5, 10], help="FP/image levels (1,2,5,10)")
    e.add_argument("--mass-threshold", type=float, help="threshold of the example thumbnails")
    e.add_argument("--calc-threshold", type=float, help="threshold of the example thumbnails")
    e.add_argument("--gt-labels", choices=["processed", "raw"], default="processed",
                   help="calcification ground truth: the processed labels the U-Net trains on "
                        "(components grown to 6.5 mm², default) or the raw masks")
    e.add_argument("--title", default="DeepLIMa evaluation report")
    e.add_argument("--context", default="", help="text shown at the top of the report (HTML)")

    c = sub.add_parser("calibrate", help="choose operating points on a validation split")
    c.add_argument("--model", "-m", required=True, type=Path, help="model bundle folder (updated)")
    c.add_argument("--gt", required=True, type=Path, help="canonical dataset folder")
    c.add_argument("--split", default="val")
    c.add_argument("--fps", type=_fps, default=[0.25, 0.5, 1, 2, 5, 10], help="FP/image levels")
    c.add_argument("--default-fp", type=float, default=1.0, help="level used when predict gets none")
    c.add_argument("--work", type=Path, help="folder for the validation predictions "
                                              "(default BUNDLE/calibration_predictions)")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--no-progress", action="store_true")
    return ap


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def cmd_predict(args) -> int:
    from deeplima.pipeline import Pipeline, write_predictions

    _threads(args.threads)
    pipeline = Pipeline(args.model, threshold=args.threshold, target_fp=args.target_fp,
                        normalize_laterality=args.laterality, device=args.device)
    summary = write_predictions(pipeline, args.inputs, args.output, resume=args.resume,
                                progress=not args.no_progress)
    t = summary["thresholds"]
    print(f"{summary['n_done']} image(s) predicted, {summary['n_skipped']} already done, "
          f"{summary['n_failed']} failed -> {args.output} (mass threshold {t['mass']:.3f}, "
          f"calcification threshold {t['calc']:.3f}: {t['source']})")
    if summary["n_failed"]:
        for line in summary["failures"]:
            print(f"  failed: {line}", file=sys.stderr)
        print(f"failures listed in {args.output / 'failures.txt'}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from deeplima.report import write_report

    thresholds = None
    if args.mass_threshold is not None or args.calc_threshold is not None:
        thresholds = {"mass": args.mass_threshold if args.mass_threshold is not None else 0.5,
                      "calc": args.calc_threshold if args.calc_threshold is not None else 0.5,
                      "source": "command line"}
    index = write_report(args.pred, args.gt, args.output, None if args.split == "all" else args.split,
                         thresholds=thresholds, title=args.title, context=args.context, fps=args.fps,
                         gt_labels=args.gt_labels)
    print(f"report written to {index}")
    return 0


def cmd_calibrate(args) -> int:
    from deeplima.bundle import load_bundle, save_operating_points
    from deeplima.operating_point import calibrate
    from deeplima.pipeline import Pipeline

    _threads(args.threads)
    bundle = load_bundle(args.model)
    pipeline = Pipeline(bundle, threshold=0.5)
    ops = calibrate(pipeline, args.gt, args.work or bundle.root / "calibration_predictions",
                    split=args.split, fps=args.fps, default_fp=args.default_fp,
                    progress=not args.no_progress)
    path = save_operating_points(bundle, ops)
    for kind in ("mass", "calc"):
        pts = ", ".join(f"{k} FP/img: {v['threshold']:.3f}" for k, v in ops.get(kind, {}).items())
        print(f"{kind}: {pts}")
    print(f"operating points written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    # library deprecation notices (torch.jit, meshgrid) are noise for users of the command
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
    from common.errors import InputError
    from deeplima.operating_point import OperatingPointError

    try:
        return {"predict": cmd_predict, "evaluate": cmd_evaluate, "calibrate": cmd_calibrate}[
            args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OperatingPointError, FileNotFoundError) as e:  # no such operating point / weights
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
