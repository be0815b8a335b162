r"""DeepLIMa command line: predict findings (both models of a bundle, or one model from its config
and weights), evaluate a prediction folder, calibrate operating points, assemble a model bundle;
training and dataset conversion are forwarded to their modules.

    deeplima predict INPUT... --output DIR --model BUNDLE
        [--threshold T | --target-fp K] [--resume] [--normalize-laterality | --keep-laterality]
        [--device auto|cpu|cuda|cuda:N] [--batch-size N] [--workers K]
        [--dicom-out DICOM_DIR [--dicom-prob]]     (also predict-mass, predict-calc)
    deeplima predict --dicomweb URL (--study UID... | --since DATE) --output DIR --model BUNDLE
        [the options of predict]      (the MG images of a PACS; SEG and SR stored back)
    deeplima predict-mass --config-file CFG --weights W --input INPUT... --output DIR
        [--threshold T] [--device D] [--batch-size N] [--workers K] [--trust-pickle] [--resume]
        [KEY VALUE ...]
    deeplima predict-calc --config-file CFG --weights W --input INPUT... --output DIR
        [--threshold T] [--device D] [--batch-size N] [--workers K] [--resume] [KEY VALUE ...]
    torchrun --nproc_per_node N -m deeplima predict ...    (any predict command, N processes)
    deeplima evaluate --pred DIR --gt CANONICAL_DIR [--split test] --output REPORT_DIR
    deeplima calibrate --model BUNDLE --gt CANONICAL_DIR [--split val] [--fps 0.5,1,2]
    deeplima bundle --mass MASS_OUTPUT_DIR | --mass-config CFG --mass-weights W \\
        --calc CALC_OUTPUT_DIR | --calc-config CFG --calc-weights W [--checkpoint best|final] \\
        [--calibrate-on CANONICAL_DIR --split val] --out BUNDLE
    deeplima train-mass ARGS...       the same as  python -m mass_det.train_net ARGS...
    deeplima train-calc ARGS...       the same as  python -m calc_seg.train_net ARGS...
    deeplima convert SOURCE ARGS...   the same as  python -m datasets.SOURCE ARGS...
                                      (SOURCE: synthetic, cbis_ddsm, inbreast, bcdr, mias, vindr)

(``deeplima`` once installed, ``python -m deeplima`` otherwise.) INPUT may be DICOM/PNG/TIFF files,
folders (searched recursively) and glob patterns. The three predict commands write the same
prediction folder (``deeplima/writer.py``; a single-model run has no entries or files of the other
model) with the same overlays; ``predict-mass`` / ``predict-calc`` take a config, its weights and
trailing ``KEY VALUE`` config overrides as the training commands do. How a prediction runs never
changes the folder: ``--workers K`` pre-processes the next images in K processes (and encodes the
output PNGs of the last ones in K threads) while the models work, ``--batch-size N`` gives the
models N images at a time (the U-Net's tiles of all N share forward passes), and under ``torchrun``
the processes share the images and write one folder (:mod:`deeplima.distributed`; ``--resume``
completes a run that lost a process, with any number of processes). ``evaluate`` accepts any
folder with ``images.json``, ``masses_results.json`` and ``calc_prob/<stem>.png``, so predictions
of other tools can be scored the same way. ``bundle`` writes the model bundle
(``deeplima/bundle.py``) with a model card in its ``bundle.json``: weights SHA-256, source folders
and checkpoints, and the validation figures when it calibrates.

Other entry points: ``python -m common.preprocess`` (pre-processing alone), ``python -m
common.evaluate boxes|masks`` (COCO results or probability maps against ground truth),
``python -m mass_det.ablate`` and ``python -m calc_seg.ablate`` (the paper's ablation tables).

Exit status: 0 success; 1 some input files failed (listed in DIR/failures.txt, the others are done);
2 unusable arguments (e.g. a threshold that is not a number in [0, 1]), bundle, config, weights or
ground truth, an output folder that cannot be written, or inputs without any mammogram to predict on
(one line ``error: ...`` on stderr). Input files that are not mammograms for presentation (DICOM
SEG, SR, FOR PROCESSING...) are skipped and listed in DIR/skipped.txt; an image whose
``--dicom-out`` files cannot be written (a PNG source) keeps its other outputs and counts as failed.
Forwarded commands exit with their module's status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from common.cli import OneLineArgumentParser, number_arg, number_list_arg
from common.errors import InputError
from common.io import os_error_reason

from .bundle import FILES, build_bundle, calc_source, load_bundle, load_model_cfg, mass_source
from .calibration import calibrate_bundle
from .distributed import choose_device, init_ranks, launched_world_size
from .operating_point import OperatingPointError
from .pipeline import FindingsPredictor, Pipeline, build_calc_pipeline, build_mass_pipeline
from .report import write_report
from .writer import write_predictions

__all__ = ["CONVERTERS", "build_parser", "main"]

#: Dataset converters of ``deeplima convert`` (modules ``datasets.<name>``).
CONVERTERS = ("synthetic", "cbis_ddsm", "inbreast", "bcdr", "mias", "vindr")
#: Commands whose arguments go unparsed to another module's command line.
FORWARDED = ("train-mass", "train-calc", "convert")
KIND_NAMES = {"mass": "mass", "calc": "calcification"}
DESCRIPTION = "DeepLIMa: mass detection and calcification segmentation in mammograms."


def device_arg(text: str) -> str:
    """argparse ``type`` of ``--device``: auto, cpu, cuda or cuda:N."""
    name, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (name == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")


def _add_run_options(p: argparse.ArgumentParser, default_device: str) -> None:
    """How a predict command runs (device, batching, pre-processing workers, threads, progress):
    none of it changes the prediction folder."""
    p.add_argument("--device", type=device_arg, metavar="{auto,cpu,cuda,cuda:N}",
                   help=f"device of the models (default: {default_device}; CPU when CUDA is "
                        "absent; under torchrun cuda and auto mean cuda:LOCAL_RANK)")
    p.add_argument("--batch-size", type=number_arg(1, integer=True), default=1, metavar="N",
                   help="images given to the models together: the calcification U-Net's tiles of "
                        "N images share forward passes (default 1)")
    p.add_argument("--workers", type=number_arg(0, integer=True), default=0, metavar="K",
                   help="processes pre-processing the next images (DICOM read, window, breast, "
                        "artifacts) and threads encoding the last ones' output PNGs while the "
                        "models work (default 0: all in this process, one after the other)")
    p.add_argument("--threads", type=number_arg(0, integer=True), default=0,
                   help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")


def _add_dicom_options(p: argparse.ArgumentParser) -> None:
    """DICOM outputs of a predict command (deeplima/dicom_out.py)."""
    p.add_argument("--dicom-out", type=Path, metavar="DICOM_DIR",
                   help="also write a DICOM Segmentation and Structured Report of the findings of "
                        "each DICOM input into DICOM_DIR (<stem>_seg.dcm, <stem>_sr.dcm)")
    p.add_argument("--dicom-prob", action="store_true",
                   help="with --dicom-out: also a FRACTIONAL SEG of the calcification probability "
                        "(<stem>_prob_seg.dcm) beside the BINARY SEG of the findings")


def build_parser() -> OneLineArgumentParser:
    """The ``deeplima`` parser: usage errors (a bad number, a missing argument) are one ``error:``
    line with exit status 2."""
    # argument types: finite numbers in range, else a usage error
    unit = number_arg(0, 1)  # score thresholds
    positive = number_arg(0, low_open=True)  # FP/image levels
    count = number_arg(0, integer=True)  # thread counts
    fps = number_list_arg(0, low_open=True)

    ap = OneLineArgumentParser(prog="deeplima", description=DESCRIPTION,
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict",
                       help="find masses and calcifications in mammograms (model bundle)")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="files, folders or glob patterns (none with --dicomweb)")
    p.add_argument("--output", "-o", required=True, type=Path, help="prediction folder")
    p.add_argument("--model", "-m", required=True, type=Path, help="model bundle folder")
    op = p.add_mutually_exclusive_group()
    op.add_argument("--threshold", type=unit,
                    help="score threshold of findings, masses and calcifications "
                         "(calcification components are the pixels above the U-Net config's "
                         "TEST.THRESHOLD, 0.5 by default, so values below it keep every "
                         "component)")
    op.add_argument("--target-fp", type=positive, metavar="K",
                    help="operating point calibrated for K false positives per image (bundle)")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are complete")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--normalize-laterality", dest="laterality", action="store_const", const=True,
                     help="mirror images to put the chest wall left before the models (results "
                          "are mapped back)")
    lat.add_argument("--keep-laterality", dest="laterality", action="store_const", const=False,
                     help="never mirror (default: as the mass model was trained)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="accept a bundle whose mass weights are a .pkl (pickle) file; unpickling "
                        "can run any code, so only for bundles you trust")
    web = p.add_argument_group(
        "DICOMweb (a PACS): retrieve the MG images of studies, predict, store their SEG and SR "
        "back (deeplima/dicomweb.py)")
    web.add_argument("--dicomweb", metavar="URL",
                     help="DICOMweb root of the server, e.g. http://pacs:8042/dicom-web (QIDO-RS, "
                          "WADO-RS, STOW-RS); no INPUT then. Images are retrieved into "
                          "OUTPUT/dicomweb/, their SEG and SR written into --dicom-out "
                          "(default OUTPUT/dicom) and stored; OUTPUT/dicomweb.json records what "
                          "was stored")
    when = web.add_mutually_exclusive_group()
    when.add_argument("--study", nargs="+", metavar="UID",
                      help="StudyInstanceUIDs of the studies to process")
    when.add_argument("--since", metavar="DATE",
                      help="process the studies with StudyDate >= DATE (YYYYMMDD or YYYY-MM-DD)")
    _add_dicom_options(p)
    _add_run_options(p, "the bundle's mass config MODEL.DEVICE")

    for kind, name, package in (("mass", "mass detector", "mass_det"),
                                ("calc", "calcification U-Net", "calc_seg")):
        s = sub.add_parser(
            f"predict-{kind}", help=f"predict with the {name} alone, from its config and weights",
            description=f"Predict with the {name} alone; the same prediction folder as predict, "
                        f"without the other model's entries and files.")
        s.add_argument("--config-file", required=True, type=Path, metavar="FILE",
                       help=f"{name} YAML config ({package}/configs/..., or a training "
                            "OUTPUT_DIR/config.yaml)")
        zoo = " (or a detectron2 model-zoo URL)" if kind == "mass" else ""
        s.add_argument("--weights", required=True, metavar="W",
                       help=f"trained weights (.pth){zoo}, read as data and required to set "
                            "every parameter")
        s.add_argument("--input", nargs="+", required=True, metavar="INPUT",
                       help="files, folders or glob patterns")
        s.add_argument("--output", "-o", required=True, type=Path, help="prediction folder")
        s.add_argument("--threshold", type=unit,
                       help="score threshold of findings (default: 0.5)" if kind == "mass" else
                            "score threshold of findings (default: the config's TEST.THRESHOLD, "
                            "which also makes the components: every component is a finding)")
        if kind == "mass":
            s.add_argument("--trust-pickle", action="store_true",
                           help="accept .pkl (pickle) weights from outside detectron2's model zoo; "
                                "unpickling can run any code, so only for files you trust")
        s.add_argument("--resume", action="store_true",
                       help="skip images whose outputs are complete")
        _add_dicom_options(s)
        _add_run_options(s, "the config's MODEL.DEVICE" if kind == "mass" else "auto")
        example = "INPUT.MIN_SIZE_TEST 1000" if kind == "mass" else "TEST.STRIDE 128"
        s.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                       help=f"config overrides, e.g. {example}")

    e = sub.add_parser("evaluate", help="score a prediction folder and write the HTML report")
    e.add_argument("--pred", required=True, type=Path, help="prediction folder")
    e.add_argument("--gt", required=True, type=Path, help="canonical dataset folder")
    e.add_argument("--split", default="test", help="split to evaluate ('all' for every image)")
    e.add_argument("--output", "-o", required=True, type=Path, help="report folder")
    e.add_argument("--fps", type=fps, default=[1, 2, 5, 10], help="FP/image levels (1,2,5,10)")
    e.add_argument("--mass-threshold", type=unit, help="threshold of the example thumbnails")
    e.add_argument("--calc-threshold", type=unit, help="threshold of the example thumbnails")
    e.add_argument("--gt-labels", choices=["processed", "raw"], default="processed",
                   help="calcification ground truth: the processed labels the U-Net trains on "
                        "(components grown to 6.5 mm², default) or the raw masks")
    e.add_argument("--title", default="DeepLIMa evaluation report")
    e.add_argument("--context", default="", help="text shown at the top of the report (HTML)")

    c = sub.add_parser("calibrate", help="choose operating points on a validation split")
    c.add_argument("--model", "-m", required=True, type=Path, help="model bundle folder (updated)")
    c.add_argument("--gt", required=True, type=Path, help="canonical dataset folder")
    c.add_argument("--split", default="val")
    c.add_argument("--fps", type=fps, default=[0.25, 0.5, 1, 2, 5, 10], help="FP/image levels")
    c.add_argument("--default-fp", type=positive, default=1.0,
                   help="level used when predict gets none")
    c.add_argument("--work", type=Path, help="folder for the validation predictions "
                                              "(default BUNDLE/calibration_predictions)")
    c.add_argument("--threads", type=count, default=0)
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--trust-pickle", action="store_true",
                   help="accept .pkl (pickle) mass weights in the bundle (see predict)")

    b = sub.add_parser("bundle", help="assemble a model bundle from the two trainings' outputs",
                       description="Copy the configs and weights of a mass detector and a "
                                   "calcification U-Net into a model bundle (with a model card in "
                                   "bundle.json), optionally choosing its operating points.")
    m = b.add_argument_group("mass detector (a training output folder, or a config and weights)")
    m.add_argument("--mass", type=Path, metavar="MASS_OUTPUT_DIR",
                   help="OUTPUT_DIR of mass_det.train_net (config.yaml + checkpoint)")
    m.add_argument("--mass-config", type=Path, metavar="CFG.yaml", help="full mass_det config")
    m.add_argument("--mass-weights", type=Path, metavar="W.pth", help="mass_det checkpoint")
    k = b.add_argument_group(
        "calcification U-Net (a training output folder, or a config and weights)")
    k.add_argument("--calc", type=Path, metavar="CALC_OUTPUT_DIR",
                   help="OUTPUT_DIR of calc_seg.train_net (config.yaml + checkpoint)")
    k.add_argument("--calc-config", type=Path, metavar="CFG.yaml", help="full calc_seg config")
    k.add_argument("--calc-weights", type=Path, metavar="W.pth", help="calc_seg checkpoint")
    b.add_argument("--checkpoint", choices=["best", "final"], default="best",
                   help="checkpoint taken from the output folders. best (default): calc "
                        "model_best.pth (best validation recall at 1 FP/image); mass "
                        "model_final.pth, else the file named in last_checkpoint. final: calc "
                        "model_last.pth; mass the file named in last_checkpoint (model_final.pth "
                        "after a finished run), else model_final.pth")
    b.add_argument("--calibrate-on", type=Path, metavar="DATA",
                   help="canonical dataset folder: choose the operating points on its --split and "
                        "record the validation figures in the model card")
    b.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of --calibrate-on (default val)")
    b.add_argument("--fps", type=fps, default=[0.25, 0.5, 1, 2, 5, 10], help="FP/image levels")
    b.add_argument("--default-fp", type=positive, default=1.0,
                   help="level used when predict gets none")
    b.add_argument("--work", type=Path, help="folder for the validation predictions "
                                              "(default BUNDLE/calibration_predictions)")
    b.add_argument("--description", default="", help="free text kept in bundle.json")
    b.add_argument("--out", "-o", required=True, type=Path, help="bundle folder (written)")
    b.add_argument("--threads", type=count, default=0)
    b.add_argument("--no-progress", action="store_true")

    # listed for --help only: main() hands their arguments to the module unparsed
    for name, target in (("train-mass", "python -m mass_det.train_net"),
                         ("train-calc", "python -m calc_seg.train_net"),
                         ("convert", "python -m datasets.SOURCE")):
        f = sub.add_parser(name, help=f"= {target} ARGS...", add_help=False)
        f.add_argument("args", nargs=argparse.REMAINDER)
    return ap


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def _predict_with(build: Callable[[str], FindingsPredictor], inputs: list[str], args,
                  default_device: str | None) -> int:
    """Build the predictor on this process's device (``build(device)``; one GPU per process under
    torchrun, :mod:`deeplima.distributed`), write the prediction folder of ``inputs`` into
    ``args.output`` and report on the console (rank 0); returns the exit status, the same on every
    rank."""
    _threads(args.threads)
    device = choose_device(args.device, default_device)
    ranks = init_ranks(device)
    try:
        summary = _write(build(str(device)), inputs, args, ranks=ranks, dicom_out=args.dicom_out)
    finally:
        ranks.close()
    status = 1 if summary["n_failed"] else 0
    if ranks.is_main:
        _report(summary, args.output)
    return status


def _write(predictor: FindingsPredictor, inputs: Sequence, args, **kw) -> dict:
    """:func:`write_predictions` of ``inputs`` into ``args.output`` with the run options of the
    command line (resume, progress, batch size, workers, probability SEG); ``kw``: the rest."""
    return write_predictions(predictor, inputs, args.output, resume=args.resume,
                             progress=not args.no_progress, batch_size=args.batch_size,
                             workers=args.workers, dicom_fractional=args.dicom_prob, **kw)


def _report(summary: dict, output: Path) -> None:
    """The console summary of a prediction run."""
    t = summary["thresholds"]
    if summary.get("n_ignored_outputs"):
        print(f"note: {summary['n_ignored_outputs']} file(s) of prediction folders not taken as "
              "inputs", file=sys.stderr)
    if summary.get("n_skipped_inputs"):
        print(f"{summary['n_skipped_inputs']} file(s) skipped (not mammograms to predict on): see "
              f"{output / 'skipped.txt'}", file=sys.stderr)
    levels = ", ".join(f"{KIND_NAMES[k]} threshold {t[k]:.3f}" for k in ("mass", "calc") if k in t)
    print(f"{summary['n_done']} image(s) predicted, {summary['n_skipped']} already done, "
          f"{summary['n_failed']} failed -> {output} ({levels}: {t['source']})")
    if summary["n_failed"]:
        for line in summary["failures"]:
            print(f"  failed: {line}", file=sys.stderr)
        print(f"failures listed in {output / 'failures.txt'}", file=sys.stderr)


def _dicomweb_module():
    """:mod:`deeplima.dicomweb`, imported when ``--dicomweb`` is used (its HTTP client is needed
    then only)."""
    try:
        from . import dicomweb
    except ImportError as e:
        raise InputError(None, f"--dicomweb needs the dicomweb-client package ({e})") from None
    return dicomweb


def _check_dicomweb_args(args) -> None:
    """INPUT or --dicomweb URL with --study or --since, before anything is loaded."""
    if args.dicomweb is None:
        if args.study or args.since is not None:
            raise InputError(None, "--study and --since need --dicomweb URL")
        if not args.inputs:
            raise InputError(None, "predict needs INPUT files, folders or patterns (or "
                                   "--dicomweb URL with --study or --since)")
        return
    if args.inputs:
        raise InputError(None, "--dicomweb takes no INPUT: the images come from the server")
    if not args.study and args.since is None:
        raise InputError(None, "--dicomweb needs --study UID... or --since DATE")
    dicomweb = _dicomweb_module()
    args.dicomweb = dicomweb.check_url(args.dicomweb)
    try:
        for uid in args.study or ():
            dicomweb.parse_uid(uid)
    except ValueError as e:
        raise InputError(None, f"--study: {e}") from None
    try:
        if args.since is not None:
            args.since = dicomweb.parse_date(args.since)
    except ValueError as e:
        raise InputError(None, f"--since: {e}") from None


def _predict_dicomweb(build: Callable[[str], FindingsPredictor], args,
                      default_device: str | None) -> int:
    """``predict --dicomweb``: retrieve the studies' mammograms into the prediction folder,
    predict, store each image's SEG and SR back (:mod:`deeplima.dicomweb`); returns the exit
    status."""
    dicomweb = _dicomweb_module()
    if launched_world_size() > 1:
        raise InputError(None, "--dicomweb runs in one process: start it without torchrun")
    _threads(args.threads)
    device = choose_device(args.device, default_device)
    dicom_dir = args.dicom_out or args.output / "dicom"  # the SEG and SR to store
    run = dicomweb.DicomwebRun(args.dicomweb, args.output, progress=not args.no_progress)
    files = run.retrieve(run.studies(args.study, args.since))
    summary = None
    if files:
        summary = _write(build(str(device)), files, args, dicom_out=dicom_dir)
        _report(summary, args.output)
        run.store(summary, dicom_dir)
    for i, line in enumerate(run.report_lines()):
        print(line, file=sys.stdout if i == 0 else sys.stderr)
    if run.failures:
        print(f"DICOMweb failures listed in {args.output / dicomweb.RECORD_NAME}", file=sys.stderr)
    return 1 if run.failures or (summary is not None and summary["n_failed"]) else 0


def cmd_predict(args) -> int:
    _check_dicomweb_args(args)
    bundle = load_bundle(args.model, trust_pickle=args.trust_pickle)

    def build(device: str) -> Pipeline:
        return Pipeline(bundle, threshold=args.threshold, target_fp=args.target_fp,
                        normalize_laterality=args.laterality, device=device)

    if args.dicomweb is not None:
        return _predict_dicomweb(build, args, bundle.mass_cfg().MODEL.DEVICE)
    return _predict_with(build, args.inputs, args, bundle.mass_cfg().MODEL.DEVICE)


def cmd_predict_mass(args) -> int:
    cfg = load_model_cfg("mass", args.config_file, args.opts)  # safe YAML only
    return _predict_with(
        lambda device: build_mass_pipeline(cfg, args.weights, threshold=args.threshold,
                                           device=device, trust_pickle=args.trust_pickle),
        args.input, args, cfg.MODEL.DEVICE)


def cmd_predict_calc(args) -> int:
    cfg = load_model_cfg("calc", args.config_file, args.opts)  # safe YAML only
    return _predict_with(
        lambda device: build_calc_pipeline(cfg, args.weights, threshold=args.threshold,
                                           device=device),
        args.input, args, "auto")


def cmd_evaluate(args) -> int:
    thresholds = None
    if args.mass_threshold is not None or args.calc_threshold is not None:
        thresholds = {"mass": args.mass_threshold if args.mass_threshold is not None else 0.5,
                      "calc": args.calc_threshold if args.calc_threshold is not None else 0.5,
                      "source": "command line"}
    index = write_report(args.pred, args.gt, args.output,
                         None if args.split == "all" else args.split, thresholds=thresholds,
                         title=args.title, context=args.context, fps=args.fps,
                         gt_labels=args.gt_labels)
    print(f"report written to {index}")
    return 0


def _print_operating_points(ops: dict) -> None:
    for kind in ("mass", "calc"):
        pts = ", ".join(f"{k} FP/img: {v['threshold']:.3f}" for k, v in ops.get(kind, {}).items())
        print(f"{kind}: {pts}")


def cmd_calibrate(args) -> int:
    _threads(args.threads)
    bundle = load_bundle(args.model, trust_pickle=args.trust_pickle)
    ops = calibrate_bundle(bundle, args.gt, split=args.split, work_dir=args.work, fps=args.fps,
                           default_fp=args.default_fp, progress=not args.no_progress)
    _print_operating_points(ops)
    print(f"operating points written to {bundle.root / FILES['operating_points']}")
    return 0


def cmd_bundle(args) -> int:
    _threads(args.threads)
    mass = mass_source(args.mass, args.mass_config, args.mass_weights, args.checkpoint)
    calc = calc_source(args.calc, args.calc_config, args.calc_weights, args.checkpoint)
    bundle = build_bundle(args.out, mass, calc, description=args.description)
    if args.calibrate_on is not None:
        calibrate_bundle(bundle, args.calibrate_on, split=args.split, work_dir=args.work,
                         fps=args.fps, default_fp=args.default_fp, progress=not args.no_progress)
    print(f"mass detector: {mass.weights}; calcification U-Net: {calc.weights}")
    calibration = bundle.model_card.get("calibration")
    if calibration:
        _print_operating_points(bundle.operating_points)
        for kind in ("mass", "calc"):
            fig = calibration[kind]
            sens = ", ".join(f"{k}: {v if v is None else round(v, 3)}"
                             for k, v in fig["sensitivity_at_fp"].items())
            print(f"{kind} on {calibration['split']} ({fig['n_lesions']} lesions), "
                  f"sensitivity at FP/img {sens}")
    print(f"model bundle written to {bundle.root}")
    return 0


def _forward(command: str, argv: list[str]) -> int:
    """Run a training command or a converter with ``argv`` unparsed; returns its exit status.

    The training modules (trainers, data loaders, event writers) are imported here, when a training
    command runs, rather than on every start of the command line."""
    if command == "train-mass":
        from mass_det.train_net import cli as train_mass

        train_mass(argv)
        return 0
    if command == "train-calc":
        from calc_seg.train_net import build_parser as calc_parser
        from calc_seg.train_net import main as train_calc

        return int(train_calc(calc_parser().parse_args(argv)) or 0)
    # datasets sits beside the models, not below deeplima: its converters run as their own process
    if not argv or argv[0] not in CONVERTERS:
        if argv and argv[0] in ("-h", "--help"):
            print("usage: deeplima convert SOURCE ARGS...   (python -m datasets.SOURCE ARGS...)\n"
                  f"SOURCE: {', '.join(CONVERTERS)}; 'deeplima convert SOURCE --help' for its "
                  "arguments")
            return 0
        got = f"got {argv[0]!r}" if argv else "none given"
        print(f"error: deeplima convert: SOURCE must be one of {', '.join(CONVERTERS)} ({got})",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", f"datasets.{argv[0]}", *argv[1:]])


def main(argv: list[str] | None = None) -> int:
    """``deeplima`` / ``python -m deeplima``; returns the exit status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return _forward(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    # library deprecation notices (torch.jit, meshgrid) are noise for users of the command
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
    commands = {"predict": cmd_predict, "predict-mass": cmd_predict_mass,
                "predict-calc": cmd_predict_calc, "evaluate": cmd_evaluate,
                "calibrate": cmd_calibrate, "bundle": cmd_bundle}
    try:
        return commands[args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OperatingPointError, FileNotFoundError) as e:  # no such operating point / weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written: read-only or full disk...
        print(f"error: {os_error_reason(e)}", file=sys.stderr)
        return 2
