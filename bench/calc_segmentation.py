#!/usr/bin/env python
r"""Calcification segmentation benchmark: breast-only vs full-frame sliding window; quality.

    python bench/calc_segmentation.py [--quality | --speed] [--height 3518 --width 2800] [--device cpu] \
        [--threads 2] [--norm gn|bn|ln] [--out bench_out/calc_seg]

Speed: the paper's GN U-Net (``calc_seg/configs/unet_gn.yaml``, random weights: speed does not
depend on them) predicts one synthetic mammogram of ``--height x --width`` pixels (default the
paper's largest, 3518 x 2800) twice in one run, with 512 x 512 windows at stride 256: over the
breast only (windows with no breast pixel skipped) and naively over the full frame. The outputs must
agree inside the breast. Target: breast-only >= 2x faster. The gain is bounded by the ratio of
window counts, which depends on how much of the frame the breast covers and on the image size
(512 px windows skip less of a small image). Cost: the GN U-Net takes ~7 s per 512 x 512 window on
2 CPU threads, so the full-size speed part is about 25 min there (130 + 68 windows); on 16 cores it
took ~2 min.

Quality (``--quality``): the GN U-Net of ``unet_gn.yaml`` (paper widths, GroupNorm, Adam at 0.01
after a warm-up, class weight from the measured positive-pixel fraction) trained from scratch on 30
synthetic studies (60 images of 1024 x 832 px at 0.085 mm: a small breast at full detector
resolution, so the dots are 0.1-1 mm = 1-12 px as on a full-field image), with 128 px patches so
that it fits a 2-core CPU (about 15-20 minutes with bf16 autocast), then scored on the held-out test
split with the IoP rule (>= 0.25) through ``calc_seg.engine`` and ``common.metrics``: against the
processed labels (the training target, the default) and, beside it, against the raw masks. The last
output line is one JSON object with ``recall_at_fp`` {"1", "2", "5", "10"}, ``per_type`` (lesion
counts and recall per type) and ``raw_labels``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

import calc_seg  # noqa: E402
from calc_seg.config import get_calc_seg_cfg  # noqa: E402
from calc_seg.data.patches import load_image  # noqa: E402
from calc_seg.engine.trainer import CalcSegTrainer, evaluate_studies, load_split  # noqa: E402
from calc_seg.inference import predict_image, window_positions  # noqa: E402
from calc_seg.model import build_model, load_weights  # noqa: E402
from common.io import read_json, read_png  # noqa: E402
from datasets.synthetic import generate  # noqa: E402

CONFIG_DIR = Path(calc_seg.__file__).resolve().parent / "configs"
GN_CONFIG = CONFIG_DIR / "unet_gn.yaml"
CPU_CONFIG = CONFIG_DIR / "unet_gn_cpu.yaml"  # the quality run's recipe


def _synthetic_study(out: Path, height: int, width: int, seed: int):
    """(image, breast mask, source) of one synthetic mammogram, pre-processed when possible.

    image: (H, W) uint8, breast: (H, W) bool, both in the generated image's frame."""
    root = generate(out, n=1, seed=seed, height=height, width=width)
    im = read_json(Path(root) / "calcifications.json")["images"][0]
    try:
        image, breast, _ = load_image(Path(root) / im["file_name"])
        return image, breast, "common.preprocess"
    except ImportError:  # load_image imports common.preprocess on first use
        # the generator's breast mask and a random image stand in (the timing only needs the
        # breast's extent)
        breast = read_png(Path(root) / "breast_masks" / f"{im['stem']}.png") > 0
        rng = np.random.default_rng(seed)
        image = (rng.integers(1, 256, breast.shape) * breast).astype(np.uint8)
        return image, breast, "synthetic breast mask (common.preprocess unavailable)"


def bench_speed(args) -> dict:
    cfg = get_calc_seg_cfg(GN_CONFIG)
    image, breast, source = _synthetic_study(Path(args.out) / "speed_data", args.height,
                                             args.width, 0)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        # TF32 convolutions and batch-size dependent algorithm choice change the last bits; the
        # comparison below needs the same arithmetic for a tile whichever batch it is in
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    model = build_model(cfg).to(device).eval()
    kw = dict(window=cfg.TEST.WINDOW, stride=cfg.TEST.STRIDE, batch_size=args.batch_size,
              device=device)
    with torch.inference_mode():  # warm-up (allocator, kernels)
        model(torch.zeros(1, 1, cfg.TEST.WINDOW, cfg.TEST.WINDOW, device=device))

    def timed(mask):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prob = predict_image(model, image, mask, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return prob, time.perf_counter() - t0

    p_breast, t_breast = timed(breast)
    p_full, t_full = timed(None)
    diff = float(np.abs(p_breast[breast] - p_full[breast]).max()) if breast.any() else 0.0
    n_full = len(window_positions(image.shape, cfg.TEST.WINDOW, cfg.TEST.STRIDE))
    n_breast = len(window_positions(image.shape, cfg.TEST.WINDOW, cfg.TEST.STRIDE, breast))
    res = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "image": [int(image.shape[0]), int(image.shape[1])],
        "breast_fraction": round(float(breast.mean()), 4),
        "breast_source": source,
        "windows_full": n_full,
        "windows_breast": n_breast,
        "time_full_s": round(t_full, 3),
        "time_breast_s": round(t_breast, 3),
        "speedup": round(t_full / t_breast, 3),
        "max_abs_diff_inside_breast": diff,
        "identical_inside_breast": bool(np.array_equal(p_breast[breast], p_full[breast])),
    }
    print(f"speed: {res['image'][0]}x{res['image'][1]} on {res['device']} "
          f"({res['threads']} threads), breast {100 * res['breast_fraction']:.1f}% of the frame")
    print(f"  full frame : {n_full:4d} windows  {t_full:8.2f} s")
    print(f"  breast only: {n_breast:4d} windows  {t_breast:8.2f} s   "
          f"speed-up {res['speedup']:.2f}x")
    print(f"  max |difference| inside the breast: {diff:.3g} (bitwise identical: "
          f"{res['identical_inside_breast']})")
    # batches of different composition may round differently on some backends; 1e-5 is far below
    # any threshold that matters for a probability map
    assert diff <= 1e-5, f"breast-only and full-frame outputs differ inside the breast by {diff}"
    return res


QUALITY_DEFAULTS = dict(n=30, height=1024, width=832, spacing=0.085)


def quality_data(out: Path, n: int, height: int, width: int, spacing: float) -> Path:
    """Synthetic studies at a real detector resolution: a smaller image is a smaller breast, so dots
    are 0.1-1 mm (1-12 px at 85 µm) as on a full-field mammogram, and the processed labels' minimum
    area of 6.5 mm² is the paper's 900 px."""
    return generate(out, n=n, seed=1, height=height, width=width, pixel_spacing_mm=spacing,
                    progress=False)


def quality_opts(args, root: Path, out: Path) -> list:
    """Overrides of ``unet_gn_cpu.yaml`` for the quality run (only what the command line sets)."""
    opts = ["DATA.ROOT", str(root), "OUTPUT_DIR", str(out),
            "DATA.CACHE_DIR", str(Path(out).parent / "cache"), "MODEL.NORM", args.norm, "SEED", 0]
    for key, value in (("SOLVER.EPOCHS", args.epochs), ("SOLVER.ITERS_PER_EPOCH", args.iters),
                       ("SOLVER.BASE_LR", args.lr)):
        if value is not None:
            opts += [key, value]
    if args.no_aug:
        opts += ["AUG.ENABLED", False]
    return opts


def _fp_levels(report: dict) -> dict:
    levels = report.get("sensitivity_at_fp") or {}
    return {k: round(float(v or 0.0), 4) for k, v in levels.items()}


def bench_quality(args) -> dict:
    """Train the GN U-Net on synthetic studies and score the held-out test split (IoP >= 0.25)."""
    out = Path(args.out)
    t0 = time.perf_counter()
    root = quality_data(out / "quality_data", args.quality_n, args.quality_height,
                        args.quality_width, args.pixel_spacing)
    cfg = get_calc_seg_cfg(CPU_CONFIG, quality_opts(args, root, out / "quality_run"))
    trainer = CalcSegTrainer(cfg)
    trainer.train(progress=not args.no_progress)
    t_train = time.perf_counter() - t0
    load_weights(trainer.model, Path(cfg.OUTPUT_DIR) / "model_best.pth")
    test = load_split(cfg, cfg.DATA.TEST_SPLIT)
    t1 = time.perf_counter()
    report, _ = evaluate_studies(trainer.model, test, cfg, trainer.device, with_raw=True)
    t_test = time.perf_counter() - t1
    per_type = {t: {"n_lesions": r["n_lesions"], "recall_at_fp": _fp_levels(r)}
                for t, r in (report.get("per_type") or {}).items()}
    raw = report.get("raw_labels") or {}
    res = {
        "data": f"synthetic n={args.quality_n} studies, "
                f"{args.quality_height}x{args.quality_width} px at {args.pixel_spacing} mm",
        "model": f"U-Net {args.norm.upper()} (calc_seg/configs/unet_gn_cpu.yaml, "
                 f"MODEL.NORM {args.norm})",
        "train_images": len(trainer.train_studies),
        "test_images": len(test),
        "test_lesions": report.get("n_lesions"),
        "schedule": f"{cfg.SOLVER.EPOCHS} epochs x {trainer.iters_per_epoch} iters x batch "
                    f"{cfg.SOLVER.BATCH_SIZE} ({cfg.PATCH.SIZE} px patches, test windows "
                    f"{cfg.TEST.WINDOW} at stride {cfg.TEST.STRIDE}), Adam lr "
                    f"{cfg.SOLVER.BASE_LR}, warm-up {cfg.SOLVER.WARMUP_ITERS}"
                    + ("" if cfg.AUG.ENABLED else ", no augmentation"),
        "device": str(trainer.device),
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        "positive_pixel_fraction": round(trainer.positive_fraction, 5),
        "pos_weight": round(trainer.pos_weight, 3),
        "train_time_s": round(t_train, 1),
        "test_time_s": round(t_test, 1),
        "best_val_recall_at_1fp": trainer.best_score,
        "gt_labels": report.get("gt_labels"),
        "recall_at_fp": _fp_levels(report),
        "per_type": per_type,
        "raw_labels": {"recall_at_fp": _fp_levels(raw),
                       "per_type": {t: _fp_levels(r)
                                    for t, r in (raw.get("per_type") or {}).items()}},
        "final_train_loss": trainer.history[-1]["loss"] if trainer.history else None,
    }
    print(f"quality: {res['data']}, {res['train_images']} train / {res['test_images']} test images "
          f"({res['test_lesions']} lesions), {res['schedule']}; {res['train_time_s']} s data + "
          f"training, {res['test_time_s']} s test")
    print(f"  test recall at 1/2/5/10 FP/image (processed labels): {res['recall_at_fp']}")
    print(f"  same maps against the raw masks: {res['raw_labels']['recall_at_fp']}")
    for t, r in per_type.items():
        print(f"  {t:7s} ({r['n_lesions']:3d} lesions): {r['recall_at_fp']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=3518)
    ap.add_argument("--width", type=int, default=2800)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--quality", action="store_true", help="only the quality run")
    ap.add_argument("--speed", action="store_true", help="only the speed comparison")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    q = QUALITY_DEFAULTS
    ap.add_argument("--quality-n", type=int, default=q["n"],
                    help="synthetic studies (2 images each)")
    ap.add_argument("--quality-height", type=int, default=q["height"])
    ap.add_argument("--quality-width", type=int, default=q["width"])
    ap.add_argument("--pixel-spacing", type=float, default=q["spacing"], help="mm per pixel")
    ap.add_argument("--norm", choices=["gn", "bn", "ln"], default="gn")
    ap.add_argument("--epochs", type=int, default=None, help="override SOLVER.EPOCHS of the recipe")
    ap.add_argument("--iters", type=int, default=None, help="override SOLVER.ITERS_PER_EPOCH")
    ap.add_argument("--lr", type=float, default=None, help="override SOLVER.BASE_LR (paper: 0.01)")
    ap.add_argument("--no-aug", action="store_true", help="train without albumentations")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default="bench_out/calc_seg")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_speed = not args.skip_speed and not args.quality
    run_quality = not args.skip_quality and not args.speed
    result = {}
    if run_speed:
        result["speed"] = bench_speed(args)
    if run_quality:
        result["quality"] = bench_quality(args)
    # last line: one JSON object (the quality figures themselves when only they were asked for)
    print(json.dumps(result["quality"] if list(result) == ["quality"] else result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
