"""Seconds per full-field mammogram for the whole deeplima pipeline, each stage's share, and the
speed-ups of both models over the baselines they are measured against, in the same process.

    python bench/pipeline.py [--images 2] [--batch-size 1] [--threads 2]
                             [--height 3328 --width 2560] [--device cpu] [--no-baselines]

Builds a bundle from the paper's configs as shipped (mass: ``faster_rcnn_R50_FPN_FL_NL.yaml``,
short edge 1200, with the predictor's fast path ``MODEL.INFERENCE``; calcifications:
``unet_gn.yaml``, 512-pixel tiles at its ``TEST.STRIDE`` placed by its ``TEST.PLACEMENT``,
``TEST.AMP``, ``TEST.CHANNELS_LAST``; the tile count of each image under each placement is
reported) with RANDOMLY INITIALISED weights: the cost of a forward pass does not
depend on the weight values. The U-Net's last layer is biased towards background so that the
calcification map is sparse as with a trained model (a random map would be one image-sized
component and time the shape classifier instead). Synthetic full-field DICOMs come from
``datasets.synthetic``. Stages: preprocess (DICOM read, window, breast, artifacts), mass
(``DefaultPredictor``), calc (tiling), postprocess (components, mapping back). One small warm-up
image is run first and not counted; images are given to the models ``--batch-size`` at a time
(``FindingsPredictor.predict_batch``, as ``deeplima predict --batch-size``).

Baselines (unless ``--no-baselines``), on the first timed image, same weights, same process:

- ``calc_naive``: the sliding window over the whole frame, every tile, stride 256 (half the
  window), float32, eager, NCHW (``calc_seg.inference.predict_image`` without a breast mask).
  ``calc_speedup_vs_naive`` = its seconds / the calc stage's seconds on that image.
- ``mass_stock_coco``: detectron2's stock COCO Faster R-CNN R50-FPN
  (``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``: FrozenBN ResNet-50, FPN, 1000 test proposals,
  80 classes) in its stock ``DefaultPredictor``, float32 eager, with the test size of the FL+NL
  config (short edge 1200) so that both see the same input. ``mass_over_stock_coco`` = the mass
  stage's seconds / the stock model's, best of 3 interleaved runs each.

The last output line is a JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep rather than spin (the CPU is usually shared; set before torch loads
# OpenMP)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402

import calc_seg  # noqa: E402
import mass_det  # noqa: E402
from calc_seg.inference import PLACEMENTS, predict_image, window_positions  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from deeplima.bundle import random_bundle  # noqa: E402
from deeplima.pipeline import Pipeline  # noqa: E402
from mass_det.inference import MassPredictor  # noqa: E402

STOCK_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
NAIVE_STRIDE = 256  # the training patches' overlap (§2.2.2), every tile of the frame
TARGETS = {"calc_speedup_vs_naive": 10.0, "mass_over_stock_coco": 0.6, "seconds_per_image": 30.0}


def stock_predictor(mass_cfg, device: str) -> MassPredictor:
    """Detectron2's stock COCO R50-FPN (random weights) in its ``DefaultPredictor``, at the test
    size of ``mass_cfg``."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(STOCK_CONFIG), allow_unsafe=False)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""  # DefaultPredictor keeps the random initialisation
    cfg.INPUT.MIN_SIZE_TEST = mass_cfg.INPUT.MIN_SIZE_TEST
    cfg.INPUT.MAX_SIZE_TEST = mass_cfg.INPUT.MAX_SIZE_TEST
    cfg.freeze()
    return MassPredictor(DefaultPredictor(cfg), image_format=cfg.INPUT.FORMAT, cfg=cfg)


def _seconds(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def baselines(pipe: Pipeline, image, naive_model, device: str, repeats: int = 3) -> dict:
    """Seconds of both baselines and of the pipeline's two models on the same pre-processed
    image (module docstring)."""
    out: dict = {}
    stock = stock_predictor(pipe.mass_cfg, device)
    stock(image.image)  # warm-up at this size
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved: load from other processes hits both alike
        ours.append(_seconds(pipe.mass, image.image))
        theirs.append(_seconds(stock, image.image))
    out["mass_s"], out["mass_stock_coco_s"] = min(ours), min(theirs)
    print(f"mass: FL+NL fast path {out['mass_s']:.2f} s, stock COCO R50-FPN "
          f"{out['mass_stock_coco_s']:.2f} s (best of {repeats})", flush=True)

    t = pipe.calc_cfg.TEST
    out["calc_s"] = _seconds(pipe.calc.predict_prob, image.image, image.breast_mask)
    out["calc_naive_s"] = _seconds(
        lambda: predict_image(naive_model, image.image, None, window=int(t.WINDOW),
                              stride=NAIVE_STRIDE, batch_size=int(t.BATCH_SIZE), blend="mean",
                              device=device))
    print(f"calc: shipped tiling {out['calc_s']:.2f} s, naive sliding window "
          f"{out['calc_naive_s']:.2f} s", flush=True)
    out["calc_speedup_vs_naive"] = out["calc_naive_s"] / out["calc_s"]
    out["mass_over_stock_coco"] = out["mass_s"] / out["mass_stock_coco_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2, help="timed images (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per predict_batch call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=3328)
    ap.add_argument("--width", type=int, default=2560)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-baselines", action="store_true",
                    help="skip the naive sliding window and the stock detector")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        n_studies = (args.images + 2) // 2
        generate(tmp / "data", n=n_studies, seed=11, height=args.height, width=args.width,
                 progress=False)
        files = sorted((tmp / "data" / "images").glob("*.dcm"))[: args.images]
        print(f"{len(files)} synthetic {args.height}x{args.width} DICOM(s) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        bundle = random_bundle(
            tmp / "bundle",
            Path(mass_det.__file__).parent / "configs" / "faster_rcnn_R50_FPN_FL_NL.yaml",
            Path(calc_seg.__file__).parent / "configs" / "unet_gn.yaml",
        )
        pipe = Pipeline(bundle, threshold=0.5, device=args.device)
        head = pipe.calc.model.segmentation_head[0]
        with torch.no_grad():
            head.bias.copy_(torch.tensor([4.0, -4.0]))  # softmax[:, 1] mostly ~3e-4
        # the baseline's U-Net: the same weights in plain NCHW memory, run without autocast
        naive_model = copy.deepcopy(pipe.calc.model).to(memory_format=torch.contiguous_format)

        warm = generate(tmp / "warm", n=1, seed=12, height=1024, width=800, views=("CC",),
                        progress=False)
        pipe(sorted((warm / "images").glob("*.dcm"))[0])

        totals = {"preprocess": 0.0, "mass": 0.0, "calc": 0.0, "postprocess": 0.0}
        calc_test = pipe.calc_cfg.TEST
        tiles = {p: [] for p in PLACEMENTS}  # 512 px tiles of each image by placement
        wall = 0.0
        first = None
        for b in range(0, len(files), args.batch_size):
            group = files[b : b + args.batch_size]
            t = time.perf_counter()
            prepared, seconds = [], []
            for f in group:
                t1 = time.perf_counter()
                prepared.append(pipe.preprocess(f))
                seconds.append(time.perf_counter() - t1)
            results = pipe.predict_batch(prepared, [str(f) for f in group], seconds)
            dt = time.perf_counter() - t
            wall += dt
            first = first or prepared[0]
            for p in prepared:
                for placement in PLACEMENTS:
                    tiles[placement].append(len(window_positions(
                        p.image.shape, int(calc_test.WINDOW), int(calc_test.STRIDE),
                        p.breast_mask, placement)))
            for f, res in zip(group, results):
                for k, v in res.timings.items():
                    totals[k] += v
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.timings.items())
                print(f"{f.name}: {stages}; {len(res.masses)} boxes, "
                      f"{len(res.calcifications)} calc components", flush=True)
        base = None if args.no_baselines else baselines(pipe, first, naive_model, args.device)
    n = len(files)
    per = {k: v / n for k, v in totals.items()}
    stage_sum = sum(per.values())
    t = pipe.calc_cfg.TEST
    result = {
        "benchmark": "deeplima pipeline",
        "device": args.device,
        "image": f"{args.height}x{args.width}",
        "images": n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "weights": "random init (timing only)",
        "seconds_per_image": round(wall / n, 2),
        "stages_s": {k: round(v, 2) for k, v in per.items()},
        "stages_share": {k: round(v / stage_sum, 3) for k, v in per.items()},
        "mass_input_short_edge": int(pipe.mass_cfg.INPUT.MIN_SIZE_TEST),
        "mass_fast_path": getattr(pipe.mass.predictor, "fast_path", None),
        "calc": {"window": int(t.WINDOW), "stride": int(t.STRIDE),
                 "placement": str(t.PLACEMENT), "tiles_by_placement": tiles, "amp": bool(t.AMP),
                 "bf16": pipe.calc.amp_dtype is not None, "channels_last": bool(t.CHANNELS_LAST),
                 "batch_size": int(t.BATCH_SIZE)},
        "targets": TARGETS,
    }
    if base is not None:
        result["baselines_s"] = {k: round(v, 2) for k, v in base.items() if k.endswith("_s")}
        result["calc_speedup_vs_naive"] = round(base["calc_speedup_vs_naive"], 2)
        result["mass_over_stock_coco"] = round(base["mass_over_stock_coco"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
