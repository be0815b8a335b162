#!/usr/bin/env python
r"""Calcification segmentation benchmark: whole-image speed, the tiling stride, quality.

    python bench/calc_segmentation.py [--speed | --tiling | --quality] [--height 3328] \
        [--width 2560] [--device cpu] [--threads 2] [--norm gn|bn|ln] [--out bench_out/calc_seg]

Speed (``--speed``): the paper's GN U-Net (``calc_seg/configs/unet_gn.yaml``, 512 px tiles;
random weights with the last layer biased to background as ``bench/pipeline.py`` does: speed does
not depend on the weights, and a sparse map keeps the component stage realistic) on one synthetic
``--height x --width`` mammogram (default the pipeline benchmark's 3328 x 2560). Stages:
``preprocess`` (``common.preprocess`` of the DICOM), ``calc`` (the shipped ``TEST`` settings:
stride, tile placement over the breast, bf16 autocast, channels-last), ``components`` and, for
reference, ``naive`` (every tile of the frame, background included, at stride = half the window,
float32, eager) with the same weights. Before that, the seconds per tile of each execution choice
(float32 / bf16 autocast, contiguous / channels-last) on tiles of the same image. The last output
line is one JSON object with ``stages_s``, ``tiles``, ``cpu_path_s_per_tile`` and
``speedup_vs_naive``. On the 2-core CPU the whole part takes ~8 min (the naive run ~5).

Tiling (``--tiling``): the quality run's trained model (trained first when
``<out>/quality_run/model_best.pth`` is missing) predicts the held-out test split at window =
``PATCH.SIZE`` (GroupNorm sees tiles of the size it was trained on) with strides window/2,
3·window/4 and window, float32 eager; each stride's seconds per image and IoP FROC (sensitivity at
1 and 10 FP per image, IoP >= 0.25, processed labels), tiles on the frame grid. The chosen stride is
the fastest whose sensitivity at 1 and at 10 FP/image are within 0.01 of the half-window stride's.
At that stride each tile placement (``TEST.PLACEMENT``: the frame grid, the cover that follows the
breast) is scored the same way and compared with the frame grid's maps; the chosen placement has
the fewest tiles within 0.01 of the frame grid's sensitivities. With both chosen, each execution
choice (bf16 autocast, channels-last) is compared with float32 eager: maximum absolute probability
difference, identical components at ``TEST.THRESHOLD``, identical FROC.

Quality (``--quality``): the GN U-Net of ``unet_gn.yaml`` (paper widths, GroupNorm, Adam at 0.01
after a warm-up, class weight from the measured positive-pixel fraction) trained from scratch on 30
synthetic studies (60 images of 1024 x 832 px at 0.085 mm: a small breast at full detector
resolution, so the dots are 0.1-1 mm = 1-12 px as on a full-field image), with 128 px patches so
that it fits a 2-core CPU (about 15-20 minutes with bf16 autocast), then scored on the held-out test
split with the IoP rule (>= 0.25) through ``calc_seg.engine`` and ``common.metrics``: against the
processed labels (the training target, the default) and, beside it, against the raw masks. The last
output line is one JSON object with ``recall_at_fp`` {"1", "2", "5", "10"}, ``per_type`` (lesion
counts and recall per type) and ``raw_labels``.

With no mode flag the speed and quality parts run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep rather than spin (the CPU is usually shared; set before torch loads
# OpenMP), as in bench/pipeline.py
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import calc_seg  # noqa: E402
from calc_seg.config import get_calc_seg_cfg  # noqa: E402
from calc_seg.data.patches import load_image  # noqa: E402
from calc_seg.engine.trainer import (  # noqa: E402
    CalcSegTrainer,
    evaluate_studies,
    load_split,
    recall_at,
    score_studies,
)
from calc_seg.inference import (  # noqa: E402
    PLACEMENTS,
    CalcPredictor,
    mask_components,
    predict_image,
    window_positions,
)
from calc_seg.model import build_model, load_weights  # noqa: E402
from common.io import read_json  # noqa: E402
from datasets.synthetic import generate  # noqa: E402

CONFIG_DIR = Path(calc_seg.__file__).resolve().parent / "configs"
GN_CONFIG = CONFIG_DIR / "unet_gn.yaml"
CPU_CONFIG = CONFIG_DIR / "unet_gn_cpu.yaml"  # the quality run's recipe


# execution choices of the forward pass: (TEST.AMP, TEST.CHANNELS_LAST)
CPU_PATH_CHOICES = {
    "fp32": (False, False),
    "fp32_channels_last": (False, True),
    "bf16": (True, False),
    "bf16_channels_last": (True, True),
}


def _synthetic_study(out: Path, height: int, width: int, seed: int):
    """(image uint8 (H, W), breast bool (H, W), pre-processing seconds) of one synthetic mammogram,
    pre-processed by ``common.preprocess`` (image frame = the DICOM's)."""
    root = generate(out, n=1, seed=seed, height=height, width=width, progress=False)
    im = read_json(Path(root) / "calcifications.json")["images"][0]
    t0 = time.perf_counter()
    image, breast, _ = load_image(Path(root) / im["file_name"])
    return image, breast, time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model_copy(cfg, state: dict, device: torch.device) -> torch.nn.Module:
    model = build_model(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


def _predictor(cfg, state: dict, device: torch.device, stride: int, choice: str,
               window: int | None = None, placement: str | None = None) -> CalcPredictor:
    """:class:`CalcPredictor` of ``cfg.TEST`` with fresh weights ``state`` and one execution
    choice of :data:`CPU_PATH_CHOICES` (window and stride given; placement None =
    ``TEST.PLACEMENT``)."""
    amp, channels_last = CPU_PATH_CHOICES[choice]
    t = cfg.TEST
    return CalcPredictor(_model_copy(cfg, state, device), window=int(window or t.WINDOW),
                         stride=stride, batch_size=int(t.BATCH_SIZE), blend=str(t.BLEND),
                         threshold=float(t.THRESHOLD), device=device, amp=amp,
                         channels_last=channels_last,
                         placement=str(placement or t.PLACEMENT))


def _choice_of(cfg) -> str:
    """The :data:`CPU_PATH_CHOICES` name of a config's TEST settings."""
    t = cfg.TEST
    key = (bool(t.AMP), bool(t.CHANNELS_LAST))
    return next(k for k, v in CPU_PATH_CHOICES.items() if v == key)


@torch.inference_mode()
def seconds_per_tile(calc: CalcPredictor, tiles: torch.Tensor, repeats: int = 2) -> float:
    """Best-of-``repeats`` seconds per tile of one forward pass of ``calc`` over ``tiles``
    (N, 1, w, w) float, after a warm-up pass, with its autocast and memory layout."""
    fmt = torch.channels_last if calc.channels_last else torch.contiguous_format
    x = tiles.to(calc.device).contiguous(memory_format=fmt)
    dtype = calc.amp_dtype
    best = float("inf")
    for k in range(repeats + 1):
        _sync(calc.device)
        t0 = time.perf_counter()
        with torch.autocast(calc.device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            calc.model(x).float()
        _sync(calc.device)
        if k:  # the first pass is the warm-up (allocator, kernels)
            best = min(best, time.perf_counter() - t0)
    return best / len(tiles)


def bench_speed(args) -> dict:
    """Default whole-image inference of the paper config against the naive full-frame window."""
    cfg = get_calc_seg_cfg(GN_CONFIG)
    t = cfg.TEST
    window, stride, naive_stride = int(t.WINDOW), int(t.STRIDE), int(t.WINDOW) // 2
    image, breast, t_pre = _synthetic_study(Path(args.out) / "speed_data", args.height,
                                            args.width, 0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        # softmax[:, 1] mostly ~3e-4: a sparse map as with a trained model (bench/pipeline.py)
        model.segmentation_head[0].bias.copy_(torch.tensor([4.0, -4.0]))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    # seconds per tile of each execution choice, on breast tiles of this image
    placement = str(t.PLACEMENT)
    pos = window_positions(image.shape, window, stride, breast, placement)
    pick = [pos[i] for i in np.linspace(0, len(pos) - 1, int(t.BATCH_SIZE)).round().astype(int)]
    x = torch.from_numpy(image.astype(np.float32) / 255.0)
    tiles = torch.stack([x[y : y + window, xx : xx + window] for y, xx in pick])[:, None]
    per_tile = {}
    for name in CPU_PATH_CHOICES:
        per_tile[name] = round(seconds_per_tile(_predictor(cfg, state, device, stride, name),
                                                tiles), 3)
        print(f"  {name:20s} {per_tile[name]:7.3f} s per {window} px tile", flush=True)

    # the shipped default: CalcPredictor.from_config's settings with these weights
    t0 = time.perf_counter()
    calc = _predictor(cfg, state, device, stride, _choice_of(cfg))
    t_setup = time.perf_counter() - t0  # once per process
    calc.predict_prob(image[:window, :window], None)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    prob = calc.predict_prob(image, breast)
    _sync(device)
    t_calc = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, comps = calc.components(prob)
    t_comp = time.perf_counter() - t0

    # naive: every tile of the frame at half-window stride, float32, eager, same weights
    naive = _model_copy(cfg, state, device)
    predict_image(naive, image[:window, :window], None, window, naive_stride, device=device)
    _sync(device)
    t0 = time.perf_counter()
    prob_naive = predict_image(naive, image, None, window=window, stride=naive_stride,
                               batch_size=int(t.BATCH_SIZE), device=device)
    _sync(device)
    t_naive = time.perf_counter() - t0
    _, comps_naive = mask_components(prob_naive, float(t.THRESHOLD))

    n_default = len(pos)
    n_naive = len(window_positions(image.shape, window, naive_stride))
    res = {
        "benchmark": "calc_seg whole-image inference",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "image": [int(image.shape[0]), int(image.shape[1])],
        "breast_fraction": round(float(breast.mean()), 4),
        "config": f"{GN_CONFIG.name}: window {window}, stride {stride}, placement {placement}, "
                  f"AMP {bool(t.AMP)} "
                  f"({str(calc.amp_dtype).replace('torch.', '') if calc.amp_dtype else 'fp32'}), "
                  f"CHANNELS_LAST {bool(t.CHANNELS_LAST)}, batch {int(t.BATCH_SIZE)}",
        "default_choice": _choice_of(cfg),
        "weights": "random init, last layer biased to background (timing only)",
        "cpu_path_s_per_tile": per_tile,
        "tiles": {"default": n_default, "naive": n_naive,
                  "frame_grid_over_breast": len(window_positions(image.shape, window, stride,
                                                                 breast, "frame"))},
        "setup_s": round(t_setup, 2),
        "stages_s": {"preprocess": round(t_pre, 2), "calc": round(t_calc, 2),
                     "components": round(t_comp, 2), "naive": round(t_naive, 2)},
        "seconds_per_image": round(t_pre + t_calc + t_comp, 2),
        "speedup_vs_naive": round(t_naive / t_calc, 2),
        "components": {"default": len(comps), "naive": len(comps_naive)},
    }
    print(f"speed: {res['image'][0]}x{res['image'][1]} on {res['device']} "
          f"({res['threads']} threads), breast {100 * res['breast_fraction']:.1f}% of the frame")
    print(f"  default ({res['config']}): {n_default:4d} tiles {t_calc:8.2f} s")
    print(f"  naive (full frame, stride {naive_stride}, fp32 eager): {n_naive:4d} tiles "
          f"{t_naive:8.2f} s   -> default is {res['speedup_vs_naive']:.1f}x faster")
    return res


def _quality_root(args, out: Path) -> Path:
    """The quality run's synthetic data: reused when ``out`` already holds it (same seed, same
    bytes), so the cache of pre-processed studies stays valid."""
    if (out / "calcifications.json").is_file() and (out / "split.json").is_file():
        return out
    return quality_data(out, args.quality_n, args.quality_height, args.quality_width,
                        args.pixel_spacing)


def bench_tiling(args) -> dict:
    """Stride table (FROC and seconds per image) and execution choices, on the trained CPU model."""
    out = Path(args.out)
    best = out / "quality_run" / "model_best.pth"
    if not best.is_file():
        print(f"{best} missing: training the quality model first", flush=True)
        bench_quality(args)
    root = _quality_root(args, out / "quality_data")
    cfg = get_calc_seg_cfg(CPU_CONFIG, quality_opts(args, root, out / "quality_run"))
    device = torch.device(args.device)
    state = build_and_load(cfg, best).state_dict()
    test = load_split(cfg, cfg.DATA.TEST_SPLIT)
    window = int(cfg.PATCH.SIZE)
    thr = float(cfg.TEST.THRESHOLD)

    def run(stride: int, choice: str, placement: str = "frame"):
        """({stem: prob}, seconds per image, FROC report) of one stride, execution choice and
        tile placement."""
        calc = _predictor(cfg, state, device, stride, choice, window=window, placement=placement)
        calc.predict_prob(test[0].array("image")[:window, :window], None)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        probs = {s.stem: calc.predict_prob(s.array("image"), s.array("breast")) for s in test}
        _sync(device)
        sec = (time.perf_counter() - t0) / len(test)
        return probs, sec, score_studies(test, probs, cfg)

    rows, fp32_maps = [], {}
    for stride in (window // 2, 3 * window // 4, window):
        probs, sec, rep = run(stride, "fp32")
        fp32_maps[stride] = (probs, rep)
        rows.append({
            "stride": stride, "s_per_image": round(sec, 2),
            "tiles": sum(len(window_positions(s.array("image").shape, window, stride,
                                              s.array("breast"))) for s in test),
            "sens_at_1fp": round(recall_at(rep, 1), 4),
            "sens_at_10fp": round(recall_at(rep, 10), 4),
            "n_lesions": rep["n_lesions"],
        })
        print(f"  window {window} stride {stride:4d}: {sec:6.2f} s/image  "
              f"sens@1 {rows[-1]['sens_at_1fp']:.4f}  sens@10 {rows[-1]['sens_at_10fp']:.4f}  "
              f"({rep['n_lesions']} lesions, {rows[-1]['tiles']} tiles)", flush=True)
    ref = rows[0]
    ok = [r for r in rows if abs(r["sens_at_1fp"] - ref["sens_at_1fp"]) <= 0.01
          and abs(r["sens_at_10fp"] - ref["sens_at_10fp"]) <= 0.01]
    chosen = min(ok, key=lambda r: r["s_per_image"])["stride"]
    print(f"  chosen stride: {chosen} (= {chosen / window:g} x window)", flush=True)

    # tile placement at that stride: the frame grid against the cover that follows the breast
    placements = {}
    maps = {"frame": fp32_maps[chosen]}
    for placement in PLACEMENTS:
        if placement != "frame":
            probs, sec, rep = run(chosen, "fp32", placement)
            maps[placement] = (probs, rep)
        else:
            probs, rep = maps["frame"]
            sec = next(r["s_per_image"] for r in rows if r["stride"] == chosen)
        placements[placement] = {
            "s_per_image": round(sec, 2),
            "tiles": sum(len(window_positions(s.array("image").shape, window, chosen,
                                              s.array("breast"), placement)) for s in test),
            "sens_at_1fp": round(recall_at(rep, 1), 4),
            "sens_at_10fp": round(recall_at(rep, 10), 4),
            "max_abs_prob_diff_vs_frame": float(max(
                np.abs(probs[k] - maps["frame"][0][k]).max() for k in probs)),
            **findings_diff(maps["frame"][0], probs, thr),
        }
        print(f"  placement {placement:6s}: {placements[placement]}", flush=True)
    ref = placements["frame"]
    ok = [p for p, r in placements.items()
          if abs(r["sens_at_1fp"] - ref["sens_at_1fp"]) <= 0.01
          and abs(r["sens_at_10fp"] - ref["sens_at_10fp"]) <= 0.01]
    chosen_placement = min(ok, key=lambda p: placements[p]["tiles"])
    print(f"  chosen placement: {chosen_placement}", flush=True)

    ref_probs, ref_rep = maps[chosen_placement]
    choices = {}
    for name in CPU_PATH_CHOICES:
        if name == "fp32":
            continue
        probs, sec, rep = run(chosen, name, chosen_placement)
        choices[name] = {
            "s_per_image": round(sec, 2),
            "max_abs_prob_diff": float(max(np.abs(probs[k] - ref_probs[k]).max() for k in probs)),
            **findings_diff(ref_probs, probs, thr),
            "froc_identical": (rep["sensitivity_at_fp"] == ref_rep["sensitivity_at_fp"]
                               and rep["n_predictions"] == ref_rep["n_predictions"]),
            "sens_at_1fp": round(recall_at(rep, 1), 4),
            "sens_at_10fp": round(recall_at(rep, 10), 4),
            "n_predictions": [ref_rep["n_predictions"], rep["n_predictions"]],
        }
        print(f"  {name:20s} {choices[name]}", flush=True)
    return {
        "data": f"synthetic quality test split ({len(test)} images, {root})",
        "model": f"{best} (calc_seg/configs/unet_gn_cpu.yaml)",
        "device": str(device), "threads": torch.get_num_threads(),
        "window": window, "strides": rows, "chosen_stride": chosen,
        "rule": "fastest stride with |sens@1 - sens@1(window/2)| <= 0.01 and the same at 10 FP",
        "placements_at_chosen_stride": placements, "chosen_placement": chosen_placement,
        "placement_rule": "fewest tiles with sens@1 and sens@10 within 0.01 of the frame grid's",
        "cpu_path_at_chosen_stride": choices,
    }


def findings_diff(ref: dict, other: dict, threshold: float) -> dict:
    """How the components at ``threshold`` of two sets of maps ``{stem: float (H, W)}`` differ:
    ``components`` [n in ``ref``, n in ``other``], ``components_identical`` (every label map
    equal), ``components_changed`` (components of either side without a pixel-identical twin on
    the other) and ``pixels_flipped`` (pixels binarised differently)."""
    n_ref = n_other = changed = flipped = 0
    for k, p in ref.items():
        a, b = mask_components(p, threshold)[0], mask_components(other[k], threshold)[0]
        flipped += int(((a > 0) != (b > 0)).sum())
        for x, y in ((a, b), (b, a)):
            n = int(x.max())
            # a component of x is unchanged when y labels its pixels with one label of that size
            inside = x > 0
            pairs = np.unique(np.stack([x[inside], y[inside]]), axis=1)
            size_x = np.bincount(x.ravel(), minlength=n + 1)
            size_y = np.bincount(y.ravel())
            same = {int(i) for i, j in pairs.T
                    if j and size_x[i] == size_y[j] and (pairs[0] == i).sum() == 1}
            changed += n - len(same)
        n_ref, n_other = n_ref + int(a.max()), n_other + int(b.max())
    return {"components": [n_ref, n_other], "components_identical": changed == 0,
            "components_changed": changed, "pixels_flipped": flipped}


def build_and_load(cfg, weights: Path) -> torch.nn.Module:
    model = build_model(cfg)
    load_weights(model, weights)
    return model


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
    ap.add_argument("--height", type=int, default=3328)
    ap.add_argument("--width", type=int, default=2560)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", action="store_true", help="only the quality run")
    ap.add_argument("--speed", action="store_true", help="only the speed comparison")
    ap.add_argument("--tiling", action="store_true",
                    help="only the stride table and execution choices on the trained CPU model")
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
    only = [m for m in ("speed", "tiling", "quality") if getattr(args, m)]
    run = set(only) if only else {"speed", "quality"}
    run -= {m for m in ("speed", "quality") if getattr(args, f"skip_{m}")}
    result = {}
    if "speed" in run:
        result["speed"] = bench_speed(args)
    if "tiling" in run:
        result["tiling"] = bench_tiling(args)
    if "quality" in run:
        result["quality"] = bench_quality(args)
    # last line: one JSON object (the part's own figures when only one part was asked for)
    print(json.dumps(result[next(iter(result))] if len(result) == 1 else result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
