"""Mass detector benchmark: CPU inference time of the three Table 1 models, and a quality run.

    python bench/mass_detection.py [--speed | --quality] [--threads 2] [--repeats 5]
                             [--quality-iters N] [--quality-studies N] [--out bench_out/mass_det]
                             [--opts KEY VALUE ...]

Without ``--speed`` or ``--quality`` both parts run.

Speed: seconds per image on the CPU at the configured test size (short edge ``INPUT.MIN_SIZE_TEST``
= 1200, a 2560 x 3328 detector aspect, so 1200 x 1560 px), randomly initialised weights (the cost
does not depend on them), best of ``--repeats`` interleaved runs after one warm-up (on a shared CPU
other processes only add time, so the minimum is the estimate; medians and CPU times are printed
too); ratios to the vanilla model. Target: FPN+FL+NL <= 1.15 x FPN.

Quality: the CPU recipe ``faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml`` (the paper's FPN + focal loss
+ non-local detector as a ResNet-18 with GroupNorm, from random initialisation: no ImageNet weights
offline) trained as shipped on synthetic studies of the demo's size (640 x 512), only the data, the
run length and the output folder set here; evaluated on the held-out (val + test) images: AP50,
recall, sensitivity at 1/2/5/10 FP/image (target: >= 0.80 at 1 FP/image) and, at the 1 FP/image
threshold, the sensitivity per mass contrast level of the generator (low masses hide in dense
breasts). The last line printed is a JSON object; with ``--quality`` its top level also carries
``ap50_coco``, ``recall`` and ``sensitivity_at_fp``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import mass_det  # noqa: E402,F401  (registers the project's backbones, ROI heads and RPN)
from common.canonical import load_canonical_dicts  # noqa: E402
from common.io import read_json  # noqa: E402
from common.metrics.matching import match_image_boxes  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from deeplima.operating_point import threshold_at_fp  # noqa: E402
from mass_det.ablate import CONFIG_DIR, build_run_cfg, run_row  # noqa: E402
from mass_det.config import get_mass_det_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the default --out is the repository's bench_out/
CONFIGS = {
    "vanilla": "faster_rcnn_R50_C4_vanilla.yaml",
    "fpn": "faster_rcnn_R50_FPN.yaml",
    "fpn_fl_nl": "faster_rcnn_R50_FPN_FL_NL.yaml",
}
# The CPU recipe (ResNet-18 GN from scratch, FPN + focal loss + non-local), trained as shipped.
QUALITY_CONFIG = "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml"
# Data of the quality run; its length is the config's SOLVER.MAX_ITER unless --quality-iters says.
QUALITY_STUDIES = 120


def bench_speed(threads: int, repeats: int) -> dict:
    """Best (minimum) seconds per image of each model, with medians for reference. Runs are
    interleaved (vanilla, FPN, FPN+FL+NL, vanilla, ...) so that load from other processes on a
    shared CPU hits the three models alike."""
    models, inputs = {}, {}
    for name, config in CONFIGS.items():
        cfg = get_mass_det_cfg(str(CONFIG_DIR / config), ["MODEL.DEVICE", "cpu"])
        short = cfg.INPUT.MIN_SIZE_TEST
        h, w = int(round(short * 3328 / 2560)), short  # portrait mammogram, short edge = width
        torch.manual_seed(0)
        models[name] = build_model(cfg).eval()
        gen = torch.Generator().manual_seed(0)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        inputs[name] = {"image": image, "height": h, "width": w}
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for i in range(repeats + 1):
            for name, model in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                model([inputs[name]])
                if i:  # the first round is a warm-up
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    out = {}
    for name in models:
        h, w = inputs[name]["height"], inputs[name]["width"]
        # Best of N wall time (as timeit advises): other processes only ever add to a run's time.
        out[name] = {"seconds_per_image": min(times[name]),
                     "median_seconds": statistics.median(times[name]),
                     "cpu_seconds_per_image": min(cpu[name]), "runs": times[name], "size": [h, w]}
        print(f"speed {name:10s} {out[name]['seconds_per_image']:.2f} s/image at {h}x{w} "
              f"(best of {repeats}; median {out[name]['median_seconds']:.2f} s; CPU time "
              f"{out[name]['cpu_seconds_per_image']:.2f} s; {threads} threads)", flush=True)
    base = out["vanilla"]["seconds_per_image"]
    for name in models:
        out[name]["ratio_to_vanilla"] = out[name]["seconds_per_image"] / base
    out["fpn_fl_nl_over_fpn"] = (out["fpn_fl_nl"]["seconds_per_image"]
                                 / out["fpn"]["seconds_per_image"])
    return out


def sensitivity_by(dicts: list[dict], predictions: list[dict], froc: dict, key: str, k: float = 1,
                   hit: str = "iou", iou_thr: float = 0.5) -> dict:
    """Sensitivity per value of the annotation field ``key`` at the operating point of ``k``
    FP/image of ``froc`` (the whole set's curve, so every group shares one threshold).

    Boxes are XYWH in original image pixels (``dicts``: Detectron2 dataset dicts, ``predictions``:
    COCO results of the same images)."""
    thr = threshold_at_fp(froc, k)["threshold"]
    by_image: dict = {}
    for p in predictions:
        by_image.setdefault(p["image_id"], []).append(p)
    groups: dict[str, list[int]] = {}
    for d in dicts:
        preds = by_image.get(d["image_id"], [])
        anns = d["annotations"]
        m = match_image_boxes([p["bbox"] for p in preds], [p["score"] for p in preds],
                              [a["bbox"] for a in anns], hit=hit, thr=iou_thr)
        for a, score in zip(anns, m.lesion_scores):
            found = groups.setdefault(str(a.get(key, "unknown")), [0, 0])
            found[0] += int(score >= thr)
            found[1] += 1
    return {g: {"found": f, "lesions": n, "sensitivity": f / n}
            for g, (f, n) in sorted(groups.items())}


def bench_quality(out_dir: Path, iters: int | None, n_studies: int, height: int, width: int,
                  seed: int, device: str = "cpu", opts: list[str] | None = None) -> dict:
    """Train the CPU recipe as shipped (only data, run length and output folder set here, then
    ``opts``) on synthetic studies and evaluate it on their held-out (val + test) images."""
    setup_logger(name="detectron2")
    data = out_dir / f"synthetic_{n_studies}x{height}x{width}_seed{seed}"
    t0 = time.perf_counter()
    if not (data / "masses.json").is_file():
        generate(data, n=n_studies, seed=seed, height=height, width=width, progress=False)
    t_gen = time.perf_counter() - t0
    heldout = f"bench_mass_heldout_{data.name}"
    if heldout not in DatasetCatalog.list():
        DatasetCatalog.register(heldout, lambda: load_canonical_dicts(data, "mass", "val")
                                + load_canonical_dicts(data, "mass", "test"))
        MetadataCatalog.get(heldout).set(thing_classes=["mass"])
    config = CONFIG_DIR / QUALITY_CONFIG
    if iters is None:
        iters = get_mass_det_cfg(str(config)).SOLVER.MAX_ITER
    cfg = build_run_cfg(config, str(data),
                        out_dir / "fpn_fl_nl_cpu", iters, "val",
                        ["DATASETS.TEST", f"('{heldout}',)", "MODEL.DEVICE", device, *(opts or [])])
    t1 = time.perf_counter()
    row = run_row(cfg)
    t_train = time.perf_counter() - t1
    dicts = DatasetCatalog.get(heldout)
    train = load_canonical_dicts(data, "mass", "train")
    inference = Path(cfg.OUTPUT_DIR) / "inference" / heldout
    report = read_json(inference / "froc_report.json")["report"]
    predictions = read_json(inference / "predictions.json")
    by_contrast = sensitivity_by(dicts, predictions, report["froc"], "contrast_level",
                                 hit=cfg.TEST.FROC.HIT, iou_thr=cfg.TEST.FROC.IOU_THRESH)
    m = row["metrics"]
    result = {
        "config": QUALITY_CONFIG, "opts": list(opts or []), "iters": iters,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "crop_size": cfg.INPUT.MAMMO.CROP_SIZE,
        "image_size": [height, width],
        "n_train_images": len(train), "n_train_masses": sum(len(d["annotations"]) for d in train),
        "n_heldout_images": len(dicts),
        "n_heldout_masses": sum(len(d["annotations"]) for d in dicts),
        "ap50_coco": report["ap50_coco"], "ap50_voc": report["ap50_voc"],
        "recall": report["recall"],
        "sensitivity_at_fp": report["sensitivity_at_fp"],
        "sensitivity_at_1fp_by_contrast": by_contrast,
        "device": device, "generate_seconds": t_gen, "train_eval_seconds": t_train,
    }
    print(f"quality: {result['n_train_images']} train images ({result['n_train_masses']} masses), "
          f"{result['n_heldout_images']} held-out images ({result['n_heldout_masses']} masses), "
          f"{iters} iterations in {t_train:.0f} s", flush=True)
    print(f"quality: AP50 (COCO) {m['AP50_COCO']:.3f}  AP50 (VOC) {m['AP50_VOC']:.3f}  "
          f"recall {m['recall']:.3f}  sensitivity at 1 FP/image {m['sens_at_1fp']:.3f} "
          f"(target >= 0.80); at 1 FP/image by contrast: "
          + ", ".join(f"{g} {v['found']}/{v['lesions']}" for g, v in by_contrast.items()),
          flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--speed", action="store_true", help="only the speed benchmark")
    part.add_argument("--quality", action="store_true", help="only the quality run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality-iters", type=int, default=None,
                        help="training iterations (default: the config's SOLVER.MAX_ITER)")
    parser.add_argument("--quality-studies", type=int, default=QUALITY_STUDIES)
    parser.add_argument("--quality-height", type=int, default=640)
    parser.add_argument("--quality-width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="device of the quality run (the speed run is always on the CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "mass_det"))
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides of the quality run (KEY VALUE ...), e.g. "
                             "MODEL.FOCAL_LOSS.BOX_NORMALIZER foreground")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary: dict = {"threads": args.threads}
    if not args.quality:
        speed = bench_speed(args.threads, args.repeats)
        summary["speed"] = speed
        print(f"speed: FPN {speed['fpn']['ratio_to_vanilla']:.2f}x vanilla, FPN+FL+NL "
              f"{speed['fpn_fl_nl']['ratio_to_vanilla']:.2f}x vanilla, FPN+FL+NL / FPN = "
              f"{speed['fpn_fl_nl_over_fpn']:.3f} (target <= 1.15)", flush=True)
    if not args.speed:
        quality = bench_quality(Path(args.out), args.quality_iters, args.quality_studies,
                                args.quality_height, args.quality_width, args.seed, args.device,
                                args.opts)
        summary["quality"] = quality
        if args.quality:
            summary.update({k: quality[k] for k in ("ap50_coco", "recall", "sensitivity_at_fp")})
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
