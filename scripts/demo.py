"""The whole DeepLIMa pipeline on synthetic mammograms, on a CPU, in minutes (``make demo``).

    python -m scripts.demo --out demo_out [--studies 40] [--mass-iters 600] [--calc-epochs 3]

1. generate synthetic studies (``datasets.synthetic``, 640x512 images, patient-level splits);
2. train the mass detector (``mass_det``: the FPN + focal loss + non-local model as a ResNet-18
   with GroupNorm trained from scratch on 256-pixel crops in bf16, the CPU recipe
   ``faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml`` with a shorter run);
3. train the calcification U-Net (``calc_seg``, GroupNorm, 128-pixel patches, a few short epochs);
4. build a model bundle from the two training folders and choose its operating points on the
   validation split (:func:`deeplima.bundle.build_bundle` and
   :func:`deeplima.calibration.calibrate_bundle`, what ``deeplima bundle --calibrate-on`` runs);
5. run :class:`deeplima.Pipeline` on the held-out test split;
6. evaluate with ``common.evaluate``'s API and write ``OUT/report/index.html``.

The models see a few hundred iterations on a few dozen images: the report's numbers are those of a
smoke run, far below the paper's; the point is that every stage runs and is measured honestly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads of several
# processes slow every one of them down several times (set before torch loads OpenMP)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from detectron2.utils.logger import setup_logger

import calc_seg
import mass_det
from calc_seg.config import get_calc_seg_cfg
from calc_seg.engine.trainer import CalcSegTrainer
from common.canonical import load_canonical_dicts
from datasets.synthetic import generate
from deeplima.bundle import build_bundle, calc_source, mass_source
from deeplima.calibration import calibrate_bundle
from deeplima.pipeline import Pipeline
from deeplima.report import write_report
from deeplima.writer import write_predictions
from mass_det.config import get_mass_det_cfg
from mass_det.data.register import register_mass_datasets
from mass_det.engine.trainer import MassDetTrainer

# demo image size: CPU training in minutes, anatomy and lesions still drawn to scale by the
# generator
HEIGHT, WIDTH = 640, 512
SCALE = HEIGHT / 3328  # lengths relative to a full-field image; areas scale with SCALE ** 2


def mass_opts(data: Path, out: Path, iters: int) -> list[str]:
    """Overrides of ``faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml`` (the CPU recipe): the demo's
    data, run length and output folder."""
    return [
        "DATASETS.CANONICAL.ROOTS", f"['demo={data}']",
        "DATASETS.TRAIN", "('demo_mass_train',)",
        "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * 0.8)},)",
        "SOLVER.WARMUP_ITERS", str(min(50, iters // 5)),
        "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    ]


def calc_opts(data: Path, out: Path, epochs: int, iters_per_epoch: int) -> list[str]:
    """Overrides of ``unet_gn.yaml``: a narrower U-Net on 128-pixel patches, shape thresholds
    scaled.

    The processed labels' minimum area stays the physical 6.5 mm² of the config: the pixel spacing
    of these small images (a full field of view in 640 rows) converts it to about 33 px."""
    return [
        "MODEL.ENCODER", "vgg11_bn",
        "MODEL.DECODER_CHANNELS", "[128, 64, 32]",
        "DATA.ROOT", str(data),
        "DATA.NUM_WORKERS", "0",
        "PATCH.SIZE", "128",
        "PATCH.STRIDE", "64",
        "LABELS.LARGE_MIN_AREA", str(max(25, round(1500 * SCALE**2))),
        "LABELS.VESSEL_MIN_LENGTH", str(round(max(8.0, 40 * SCALE), 1)),
        "SOLVER.BATCH_SIZE", "8",
        "SOLVER.WARMUP_ITERS", str(max(1, epochs * iters_per_epoch // 5)),
        "SOLVER.EPOCHS", str(epochs),
        "SOLVER.ITERS_PER_EPOCH", str(iters_per_epoch),
        "TEST.WINDOW", "128",
        "TEST.STRIDE", "96",
        "TEST.BATCH_SIZE", "16",
        "TEST.EVAL_PERIOD", str(epochs),  # validate once, at the end (model selection needs one)
        "OUTPUT_DIR", str(out),
    ]


class Stages:
    """Prints what each stage does and records its wall time."""

    def __init__(self):
        self.t0 = time.time()
        self.times: dict[str, float] = {}

    def start(self, name: str, what: str):
        self.name, self.t = name, time.time()
        print(f"\n=== [{time.time() - self.t0:6.0f} s] {name}: {what}", flush=True)

    def done(self, detail: str = ""):
        dt = time.time() - self.t
        self.times[self.name] = round(dt, 1)
        print(f"    done in {dt:.0f} s{'; ' + detail if detail else ''}", flush=True)


def train_mass(data: Path, out: Path, iters: int):
    cfg_file = (Path(mass_det.__file__).parent / "configs"
                / "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml")
    cfg = get_mass_det_cfg(str(cfg_file), mass_opts(data, out, iters))
    register_mass_datasets(cfg)
    cfg.freeze()
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(str(out), name="detectron2", abbrev_name="d2")
    logging.getLogger("detectron2").setLevel(logging.INFO)
    # the training folder holds what mass_det.train_net leaves there (its default_setup dumps the
    # config)
    (out / "config.yaml").write_text(cfg.dump())
    trainer = MassDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out / "model_final.pth", cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.MAMMO.CROP_SIZE


def train_calc(data: Path, out: Path, epochs: int, iters_per_epoch: int):
    cfg_file = Path(calc_seg.__file__).parent / "configs" / "unet_gn.yaml"
    cfg = get_calc_seg_cfg(str(cfg_file), calc_opts(data, out, epochs, iters_per_epoch))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.dump())  # as calc_seg.train_net does
    logging.getLogger("calc_seg").setLevel(logging.INFO)
    trainer = CalcSegTrainer(cfg)
    last = trainer.train(progress=True)
    shown = {k: v for k, v in last.items() if k != "val_sensitivity_at_fp"}
    print(f"    U-Net: {json.dumps(shown)}")
    return out / "model_best.pth", trainer.iters_per_epoch * epochs, len(trainer.dataset)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--studies", type=int, default=40, help="synthetic patients (two views each)")
    ap.add_argument("--mass-iters", type=int, default=600)
    ap.add_argument("--calc-epochs", type=int, default=3)
    ap.add_argument("--calc-iters-per-epoch", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    # numpy notices that denormals are flushed (below); library deprecation notices: noise here
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
    torch.set_num_threads(args.threads)
    # denormal floats make CPU convolutions of small from-scratch networks crawl
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    out = args.out.resolve()
    data = out / "data"
    st = Stages()

    st.start("data", f"generating {args.studies} synthetic studies ({2 * args.studies} DICOM "
                     f"mammograms, {HEIGHT}x{WIDTH}) in {data}")
    generate(data, n=args.studies, seed=args.seed, height=HEIGHT, width=WIDTH)
    splits = {s: load_canonical_dicts(data, "mass", s) for s in ("train", "val", "test")}
    n_masses = {s: sum(len(d["annotations"]) for d in v) for s, v in splits.items()}
    st.done(", ".join(f"{s}: {len(v)} images, {n_masses[s]} masses" for s, v in splits.items()))

    st.start("mass detector", f"training Faster R-CNN FPN + focal loss + non-local (ResNet-18 GN "
                              f"from scratch) for {args.mass_iters} iterations on "
                              f"{len(splits['train'])} images")
    mass_weights, mass_batch, mass_crop = train_mass(data, out / "mass_det", args.mass_iters)
    st.done(f"weights {mass_weights}")

    st.start("calcification U-Net",
             f"training the GroupNorm U-Net for {args.calc_epochs} epochs of "
             f"{args.calc_iters_per_epoch} balanced batches of 128-px patches")
    calc_weights, calc_iters, n_patches = train_calc(
        data, out / "calc_seg", args.calc_epochs, args.calc_iters_per_epoch)
    st.done(f"{calc_iters} iterations, weights {calc_weights}")

    n_train = len(splits["train"])
    context = (f"Demo models trained on CPU in minutes: the mass detector for {args.mass_iters} "
               f"iterations (batches of {mass_batch} crops of {mass_crop} px) and the U-Net for "
               f"{calc_iters} iterations (batch 8 patches), "
               f"both from random initialisation on {n_train} synthetic {HEIGHT}x{WIDTH} images. "
               f"Expect low numbers: this shows that every stage runs, not what the method "
               f"reaches.")
    st.start("bundle + operating points",
             "saving the model bundle; choosing thresholds for K FP per image on the "
             f"{len(splits['val'])} validation images")
    # the route of `deeplima bundle --mass OUT/mass_det --calc OUT/calc_seg --calibrate-on OUT/data`
    bundle = build_bundle(out / "bundle", mass_source(out / "mass_det"),
                          calc_source(out / "calc_seg"), description=context)
    calibrate_bundle(bundle, data, split="val", work_dir=out / "val_predictions")
    ops = bundle.operating_points
    st.done("; ".join(f"{k} @1 FP/img: threshold {ops[k]['1']['threshold']:.3f}"
                      for k in ("mass", "calc")))

    st.start("prediction", f"deeplima Pipeline on the {len(splits['test'])} held-out test images "
                           "(operating point 1 FP/image)")
    pipeline = Pipeline(bundle, target_fp=1)
    test = splits["test"]
    summary = write_predictions(pipeline, [d["file_name"] for d in test], out / "predictions",
                                stems=[d["stem"] for d in test])
    st.done(f"{summary['n_done']} images, {summary['n_failed']} failed -> {out / 'predictions'}")

    st.start("report", "evaluating with common.evaluate (FROC, AP) and writing the HTML report")
    index = write_report(out / "predictions", data, out / "report", split="test",
                         title="DeepLIMa demo on synthetic mammograms", context=context)
    rep = json.loads((out / "report" / "report.json").read_text())
    st.done()

    m, c = rep["mass"], rep["calc"]
    total = time.time() - st.t0
    result = {
        "seconds": round(total, 1), "stages_s": st.times, "mass_iters": args.mass_iters,
        "calc_iters": calc_iters, "train_images": n_train, "test_images": len(test),
        "mass": {"ap50_coco": m["ap50_coco"], "recall": m["recall"],
                 "sensitivity_at_fp": m["sensitivity_at_fp"], "n_lesions": m["n_lesions"]},
        "calc": {"recall": c["recall"], "sensitivity_at_fp": c["sensitivity_at_fp"],
                 "n_lesions": c["n_lesions"],
                 "per_type_recall": {t: s["recall"] for t, s in c.get("per_type", {}).items()}},
        "report": str(index),
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmasses: AP50 {m['ap50_coco']}, recall {m['recall']}, sensitivity@FP/img "
          f"{m['sensitivity_at_fp']}")
    print(f"calcifications: recall {c['recall']}, sensitivity@FP/img {c['sensitivity_at_fp']}")
    print(f"demo finished in {total / 60:.1f} min")
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
