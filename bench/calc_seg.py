#!/usr/bin/env python
"""Calcification segmentation benchmark: breast-only vs full-frame sliding window; synthetic quality.

    python bench/calc_seg.py [--height 3518 --width 2800] [--device cpu] [--threads 2] \
        [--skip-speed] [--skip-quality] [--out bench_out/calc_seg]

Speed: the paper's GN U-Net (``calc_seg/configs/unet_gn.yaml``, random weights: speed does not depend on
them) predicts one synthetic mammogram of ``--height x --width`` pixels (default the paper's largest,
3518 x 2800) twice in one run, with 512 x 512 windows at stride 256: over the breast only (windows with
no breast pixel skipped) and naively over the full frame. The outputs must agree inside the breast.
Target: breast-only >= 2x faster. The gain is bounded by the ratio of window counts, which depends on
how much of the frame the breast covers and on the image size (512 px windows skip less of a small image).
Cost: the GN U-Net takes ~7 s per 512 x 512 window on 2 CPU threads, so the full-size speed part is about
25 min there (130 + 68 windows); on 16 cores it took ~2 min.

Quality: a fixed short CPU training on a small synthetic dataset (``datasets.synthetic.generate``),
then recall at 1 FP/image (IoP >= 0.25) on its test split, through ``calc_seg.engine`` and
``common.metrics``. The last output line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GN_CONFIG = REPO / "calc_seg" / "configs" / "unet_gn.yaml"


def _synthetic_study(out: Path, height: int, width: int, seed: int):
    """(uint8 image, bool breast mask, source) of one synthetic mammogram, pre-processed when possible."""
    from common.io import read_json, read_png
    from datasets.synthetic import generate

    root = generate(out, n=1, seed=seed, height=height, width=width)
    im = read_json(Path(root) / "calcifications.json")["images"][0]
    try:
        from calc_seg.data.patches import load_image

        image, breast, _ = load_image(Path(root) / im["file_name"])
        return image, breast, "common.preprocess"
    except ImportError:
        breast = read_png(Path(root) / "breast_masks" / f"{im['stem']}.png") > 0
        rng = np.random.default_rng(seed)
        image = (rng.integers(1, 256, breast.shape) * breast).astype(np.uint8)
        return image, breast, "synthetic breast mask (common.preprocess unavailable)"


def bench_speed(args) -> dict:
    import torch

    from calc_seg.config import load_calc_seg_cfg
    from calc_seg.inference import predict_image, window_positions
    from calc_seg.model import build_model

    cfg = load_calc_seg_cfg(GN_CONFIG)
    image, breast, source = _synthetic_study(Path(args.out) / "speed_data", args.height, args.width, 0)
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
    kw = dict(window=cfg.TEST.WINDOW, stride=cfg.TEST.STRIDE, batch_size=args.batch_size, device=device)
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
    print(f"speed: {res['image'][0]}x{res['image'][1]} on {res['device']} ({res['threads']} threads), "
          f"breast {100 * res['breast_fraction']:.1f}% of the frame")
    print(f"  full frame : {n_full:4d} windows  {t_full:8.2f} s")
    print(f"  breast only: {n_breast:4d} windows  {t_breast:8.2f} s   speed-up {res['speedup']:.2f}x")
    print(f"  max |difference| inside the breast: {diff:.3g} (bitwise identical: "
          f"{res['identical_inside_breast']})")
    # batches of different composition may round differently on some backends; 1e-5 is far below
    # any threshold that matters for a probability map
    assert diff <= 1e-5, f"breast-only and full-frame outputs differ inside the breast by {diff}"
    return res


def bench_quality(args) -> dict:
    from calc_seg.config import load_calc_seg_cfg
    from calc_seg.engine.trainer import CalcSegTrainer, evaluate_studies, load_split, recall_at
    from calc_seg.model import load_weights
    from datasets.synthetic import generate

    out = Path(args.out)
    root = generate(out / "quality_data", n=args.quality_n, seed=1, height=args.quality_height,
                    width=args.quality_width)
    # image scale ~ 3328 / 512 = 6.5x below full field: 900 px labels become ~900 / 6.5**2 = 21 px
    opts = [
        "DATA.ROOT", str(root), "OUTPUT_DIR", str(out / "quality_run"), "DATA.NUM_WORKERS", 0,
        "PATCH.SIZE", args.patch, "PATCH.STRIDE", args.patch // 2, "TEST.WINDOW", args.patch,
        "TEST.STRIDE", args.patch // 2,
        "LABELS.MIN_AREA", 25, "SOLVER.EPOCHS", args.epochs, "SOLVER.ITERS_PER_EPOCH", args.iters,
        "SOLVER.BATCH_SIZE", 8, "SOLVER.BASE_LR", args.lr, "SEED", 0, "AUG.ENABLED", not args.no_aug,
    ]
    cfg = load_calc_seg_cfg(GN_CONFIG, opts)
    t0 = time.perf_counter()
    trainer = CalcSegTrainer(cfg)
    trainer.train(progress=False)
    t_train = time.perf_counter() - t0
    load_weights(trainer.model, Path(cfg.OUTPUT_DIR) / "model_best.pth")
    test = load_split(cfg, cfg.DATA.TEST_SPLIT)
    report, _ = evaluate_studies(trainer.model, test, cfg, trainer.device)
    res = {
        "data": f"synthetic n={args.quality_n} {args.quality_height}x{args.quality_width}",
        "train_images": len(trainer.train_studies),
        "test_images": len(test),
        "test_lesions": report.get("n_lesions"),
        "schedule": f"{args.epochs} epochs x {args.iters} iters x batch 8 ({args.patch} px patches), lr {args.lr}"
        + (", no augmentation" if args.no_aug else ""),
        "device": str(trainer.device),
        "train_time_s": round(t_train, 1),
        "recall_at_1fp": recall_at(report, 1),
        "sensitivity_at_fp": report.get("sensitivity_at_fp"),
        "per_type_at_1fp": {t: recall_at(r, 1) for t, r in (report.get("per_type") or {}).items()},
        "final_train_loss": trainer.history[-1]["loss"] if trainer.history else None,
    }
    print(f"quality: {res['data']}, {res['train_images']} train / {res['test_images']} test images, "
          f"{res['schedule']}, {res['train_time_s']} s training")
    print(f"  test recall at 1 FP/image: {res['recall_at_1fp']:.3f}  (all: {res['sensitivity_at_fp']})")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=3518)
    ap.add_argument("--width", type=int, default=2800)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--quality-n", type=int, default=6)
    ap.add_argument("--quality-height", type=int, default=512)
    ap.add_argument("--quality-width", type=int, default=416)
    ap.add_argument("--patch", type=int, default=64, help="training patch = inference window (px)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01, help="paper: Adam at 0.01")
    ap.add_argument("--no-aug", action="store_true", help="train without albumentations")
    ap.add_argument("--out", default="bench_out/calc_seg")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    result = {}
    if not args.skip_speed:
        result["speed"] = bench_speed(args)
    if not args.skip_quality:
        result["quality"] = bench_quality(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
