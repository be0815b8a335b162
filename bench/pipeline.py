"""Seconds per full-field mammogram for the whole deeplima pipeline on the CPU, with each stage's
share.

    python bench/pipeline.py [--images 1] [--threads 2] [--height 3328 --width 2560]

Builds a bundle from the paper's configs (mass: ``faster_rcnn_R50_FPN_FL_NL.yaml``, short edge 1200;
calcifications: ``unet_gn.yaml``, 512-pixel windows at stride 256 over the breast) with RANDOMLY
INITIALISED weights: the cost of a forward pass does not depend on the weight values. The U-Net's
last layer is biased towards background so that the calcification map is sparse as with a trained
model (a random map would be one image-sized component and time the shape classifier instead).
Synthetic full-field DICOMs come from ``datasets.synthetic``. Stages: preprocess (DICOM read,
window, breast, artifacts), mass (DefaultPredictor), calc (sliding window), postprocess (components,
mapping back). One warm-up image is run first and not counted. The last output line is a JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep rather than spin (the CPU is usually shared; set before torch loads
# OpenMP)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import calc_seg
import mass_det
from datasets.synthetic import generate
from deeplima.bundle import random_bundle
from deeplima.pipeline import Pipeline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1, help="timed images (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=3328)
    ap.add_argument("--width", type=int, default=2560)
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
        pipe = Pipeline(bundle, threshold=0.5, device="cpu")
        head = pipe.calc.model.segmentation_head[0]
        with torch.no_grad():
            head.bias.copy_(torch.tensor([4.0, -4.0]))  # softmax[:, 1] mostly ~3e-4

        warm = generate(tmp / "warm", n=1, seed=12, height=1024, width=800, views=("CC",),
                        progress=False)
        pipe(sorted((warm / "images").glob("*.dcm"))[0])

        totals = {"preprocess": 0.0, "mass": 0.0, "calc": 0.0, "postprocess": 0.0}
        wall = 0.0
        for f in files:
            t = time.perf_counter()
            res = pipe(f)
            dt = time.perf_counter() - t
            wall += dt
            for k, v in res.timings.items():
                totals[k] += v
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.timings.items())
            print(f"{f.name}: {dt:.1f} s ({stages}); {len(res.masses)} boxes, "
                  f"{len(res.calcifications)} calc components", flush=True)
    n = len(files)
    per = {k: v / n for k, v in totals.items()}
    stage_sum = sum(per.values())
    result = {
        "benchmark": "deeplima pipeline, CPU",
        "image": f"{args.height}x{args.width}",
        "images": n,
        "threads": args.threads,
        "weights": "random init (timing only)",
        "seconds_per_image": round(wall / n, 2),
        "stages_s": {k: round(v, 2) for k, v in per.items()},
        "stages_share": {k: round(v / stage_sum, 3) for k, v in per.items()},
        "mass_input_short_edge": int(pipe.mass_cfg.INPUT.MIN_SIZE_TEST),
        "calc_window": int(pipe.calc_cfg.TEST.WINDOW),
        "calc_stride": int(pipe.calc_cfg.TEST.STRIDE),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
