r"""Train the calcification U-Net.

    python -m calc_seg.train_net --config-file calc_seg/configs/unet_gn.yaml [--resume] \
        [--eval-only] [KEY VALUE ...]          # e.g. DATA.ROOT /data/canonical SOLVER.EPOCHS 10
    torchrun --nproc_per_node 4 -m calc_seg.train_net --config-file ... DATA.ROOT ...   # multi-GPU

The flags are those of Detectron2's ``default_argument_parser`` (as ``mass_det.train_net`` takes
them): ``--config-file FILE`` then ``KEY VALUE`` overrides; processes come from ``torchrun``.

``--eval-only`` evaluates ``MODEL.WEIGHTS`` (or ``OUTPUT_DIR/model_best.pth``) on the test split and
writes ``OUTPUT_DIR/test_report.json``: scored against the processed labels (``TEST.GT_LABELS``), with
the raw-mask figures beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from calc_seg.config import get_calc_seg_cfg
from calc_seg.engine.trainer import CalcSegTrainer, evaluate_studies, load_split
from calc_seg.model import build_model, load_weights
from common.device import select_device
from common.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="YAML config (calc_seg/configs/...)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/model_last.pth")
    p.add_argument("--eval-only", action="store_true", help="evaluate on the test split and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. DATA.ROOT data/synthetic SOLVER.EPOCHS 10")
    return p


def setup(args):
    cfg = get_calc_seg_cfg(args.config_file, args.opts)
    if not cfg.DATA.ROOT:
        raise SystemExit("error: DATA.ROOT is not set (add DATA.ROOT /path/to/canonical after the flags)")
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    (Path(cfg.OUTPUT_DIR) / "config.yaml").write_text(cfg.dump())
    cfg.freeze()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return cfg


def main(args) -> int:
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg)
        if not cfg.MODEL.WEIGHTS:
            load_weights(model, Path(cfg.OUTPUT_DIR) / "model_best.pth")
        device = select_device()
        report, _ = evaluate_studies(model.to(device), load_split(cfg, cfg.DATA.TEST_SPLIT), cfg,
                                     device, progress=not args.no_progress, with_raw=True)
        atomic_write_json(Path(cfg.OUTPUT_DIR) / "test_report.json", report)
        other = "raw_labels" if report.get("gt_labels") == "processed" else "processed_labels"
        print(json.dumps({"gt_labels": report.get("gt_labels"),
                          "sensitivity_at_fp": report.get("sensitivity_at_fp"),
                          other: (report.get(other) or {}).get("sensitivity_at_fp")}))
        return 0
    trainer = CalcSegTrainer(cfg, resume=args.resume)
    last = trainer.train(progress=not args.no_progress)
    if trainer.rank == 0:
        print(json.dumps({"best_val_recall_at_1fp": trainer.best_score, "last": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
