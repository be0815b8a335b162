r"""Table 1 of the paper: train and evaluate the three detectors on the same data.

    python -m mass_det.ablate --data data/synthetic --out output/mass_ablation [--iters N] \
        [--split test] [KEY VALUE ...]

Rows: Faster R-CNN (vanilla, C4), + FPN, + FPN + focal loss + non-local. Each model is trained with
``MassDetTrainer`` on ``<data>`` train split for ``--iters`` iterations and evaluated on
``--split``. The trailing ``KEY VALUE`` pairs override the config of all three rows, last (as in
``mass_det.train_net``; each row has its own YAML, so there is no ``--config-file``). Writes
``table1.md``, ``table1.json`` and ``froc.png`` (the three FROC curves) to ``--out``; every run
keeps its own folder (checkpoint, TensorBoard events, FROC report).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

from detectron2.utils.logger import setup_logger

from common.io import atomic_write_bytes, atomic_write_json, read_json
from common.plots import plot_froc

from .config import get_mass_det_cfg, resolve_device
from .data.register import register_mass_datasets
from .engine.trainer import MassDetTrainer
from .evaluation.froc_evaluator import summarize_report

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ROWS = (
    ("Faster R-CNN (vanilla)", "faster_rcnn_R50_C4_vanilla.yaml"),
    ("Faster R-CNN+FPN", "faster_rcnn_R50_FPN.yaml"),
    ("Faster R-CNN+FPN+FL+NL", "faster_rcnn_R50_FPN_FL_NL.yaml"),
)
COLUMNS = ("AP50_COCO", "AP50_VOC", "recall", "sens_at_1fp", "sens_at_2fp", "sens_at_5fp",
           "sens_at_10fp")


def _dataset_prefix(data: str) -> str:
    # Registration is idempotent by name; a prefix derived from the folder keeps two folders apart.
    return "ablate" + hashlib.sha1(str(Path(data).resolve()).encode()).hexdigest()[:8]


def build_run_cfg(config_file: str | Path, data: str, out_dir: str | Path, iters: int, split: str,
                  opts: Sequence[str] = ()):
    """Config of one ablation run: the row's YAML, our data, ``iters`` iterations, ``opts`` last."""
    prefix = _dataset_prefix(data)
    cfg = get_mass_det_cfg(str(config_file))
    cfg.DATASETS.CANONICAL.ROOTS = [f"{prefix}={Path(data).resolve()}"]
    cfg.DATASETS.TRAIN = (f"{prefix}_mass_train",)
    cfg.DATASETS.TEST = (f"{prefix}_mass_{split}",)
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.SOLVER.MAX_ITER = int(iters)
    cfg.SOLVER.STEPS = (int(0.75 * iters),)  # one LR drop late in the short schedule
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(iters // 10, 1))
    cfg.SOLVER.CHECKPOINT_PERIOD = 10 * max(iters, 1)  # only model_final.pth
    cfg.TEST.EVAL_PERIOD = 0  # DefaultTrainer's EvalHook still evaluates after the last iteration
    cfg.merge_from_list(list(opts))
    resolve_device(cfg)
    return cfg


def run_row(cfg) -> dict:
    """Train one model and evaluate it; returns ``{"metrics": {...}, "froc": {...}}``."""
    register_mass_datasets(cfg)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    trainer = MassDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # DefaultTrainer's EvalHook evaluates after the last iteration
    dataset = cfg.DATASETS.TEST[0]
    report = read_json(os.path.join(cfg.OUTPUT_DIR, "inference", dataset, "froc_report.json"))
    metrics = summarize_report(report["report"], cfg.TEST.FROC.FPS)
    return {"metrics": dict(metrics), "froc": report["report"]["froc"]}


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per method, AP50 (COCO, VOC), recall, sensitivity at 1/2/5/10
    FP/image."""
    head = ["Method", "AP50 (COCO)", "AP50 (VOC)", "Recall", "Sens@1FP", "Sens@2FP", "Sens@5FP",
            "Sens@10FP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name] + [_fmt(row["metrics"].get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    undefined = value is None or (isinstance(value, float) and math.isnan(value))
    return "n/a" if undefined else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate the three Table 1 detectors.")
    parser.add_argument("--data", required=True, help="canonical dataset folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, default=2000, help="training iterations per model")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides applied to all three runs, after the other flags, "
                             "e.g. SOLVER.BASE_LR 0.0005 MODEL.DEVICE cpu")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="mass_det")
    out = Path(args.out)
    rows: dict[str, dict] = {}
    for name, config in ROWS:
        cfg = build_run_cfg(CONFIG_DIR / config, args.data, out / Path(config).stem, args.iters,
                            args.split, args.opts)
        rows[name] = {"config": config, **run_row(cfg)}
        print(f"{name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in rows[name]["metrics"].items()),
              flush=True)

    table = format_table(rows)
    atomic_write_bytes(out / "table1.md", table.encode())
    atomic_write_json(out / "table1.json", {
        "data": str(Path(args.data).resolve()), "split": args.split, "iters": args.iters,
        "opts": list(args.opts),
        "rows": {n: {"config": r["config"], **{k: (None if math.isnan(v) else v)
                                               for k, v in r["metrics"].items()}}
                 for n, r in rows.items()},
    })
    plot_froc({n: r["froc"] for n, r in rows.items()}, out / "froc.png",
              title=f"FROC, {args.split} split")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
