r"""Normalisation ablation (paper §4.2.3): train and evaluate U-Net BN / LN / GN on the same data.

    python -m calc_seg.ablate --data /data/canonical --out output/ablation [--epochs 30] \
        [--config-file calc_seg/configs/unet_gn.yaml] [--norms bn,ln,gn] [KEY VALUE ...]

The flags are those of ``calc_seg.train_net`` (Detectron2's ``default_argument_parser``):
``--config-file FILE``, then ``KEY VALUE`` config overrides after the other flags.

Each variant starts from the same config, seed and cached patches (``OUT/cache``), differing only in
``MODEL.NORM``; the best checkpoint (recall at 1 FP/image on the validation split) is evaluated on
the test split with the IoP FROC of ``common.metrics.evaluate_masks``. Writes to ``OUT``:

* ``table3.md`` / ``table3.json``: recall at k = 1, 2, 5, 10 FP per image per variant (paper
  Table 3), against the processed labels (the training target) and, beside it, against the raw
  masks, with the number of test lesions,
* ``table4.md`` / ``table4.json``: the same per calcification type for U-Net GN (paper Table 4),
* ``froc.png``: the three FROC curves (paper Fig. 8), and ``unet_<norm>/`` with checkpoints and
  ``test_report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calc_seg.config import get_calc_seg_cfg
from calc_seg.engine.trainer import CalcSegTrainer, evaluate_studies, load_split
from calc_seg.model import load_weights
from common.io import atomic_write_bytes, atomic_write_json
from common.metrics.froc import DEFAULT_FPS, at_fp, fp_key
from common.plots import plot_froc

VARIANTS = (("bn", "U-Net BN"), ("ln", "U-Net LN"), ("gn", "U-Net GN"))
TYPE_NAMES = (("dot", "Dot"), ("vessel", "Vessel"), ("large", "Large Region"))
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "unet_gn.yaml"


def _cell(report: dict, k) -> float | None:
    """Sensitivity at ``k`` FP/image of ``report``; None when there is no report (``{}``: raw
    labels not scored, a type without lesions) or the value is undefined. A report without the
    level ``k`` raises KeyError (:func:`common.metrics.froc.at_fp`)."""
    s = report.get("sensitivity_at_fp")
    if not s:
        return None
    v = at_fp(s, k)
    return None if v is None else float(v)


def markdown_table(rows: dict[str, dict], fps, caption: str) -> str:
    """Rows of recall at k FP/image, with the lesion count (what one point of recall means)."""
    head = "| Method | lesions | " + " | ".join(f"k = {k}" for k in fps) + " |"
    sep = "|---" * (len(fps) + 2) + "|"
    lines = [caption, "", head, sep]
    for name, rep in rows.items():
        cells = [_cell(rep, k) for k in fps]
        n = rep.get("n_lesions")
        lines.append(f"| {name} | {'n/a' if n is None else n} | "
                     + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run_variant(base_cfg_file, opts, norm: str, out: Path, progress: bool) -> dict:
    """Train the U-Net of ``base_cfg_file`` + ``opts`` with ``MODEL.NORM norm`` into
    ``out/unet_<norm>`` and score its best checkpoint on the test split (``test_report.json``)."""
    cfg = get_calc_seg_cfg(base_cfg_file, list(opts) + [
        "MODEL.NORM", norm, "OUTPUT_DIR", str(out / f"unet_{norm}"),
    ])
    trainer = CalcSegTrainer(cfg)
    trainer.train(progress=progress)
    best = Path(cfg.OUTPUT_DIR) / "model_best.pth"
    load_weights(trainer.model, best, map_location=trainer.device)
    report, _ = evaluate_studies(trainer.model, load_split(cfg, cfg.DATA.TEST_SPLIT), cfg,
                                 trainer.device, progress=progress, with_raw=True)
    report["best_val_recall_at_1fp"] = trainer.best_score
    atomic_write_json(Path(cfg.OUTPUT_DIR) / "test_report.json", report)
    return report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True,
                    help="canonical dataset folder (train/val/test splits)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=None, help="override SOLVER.EPOCHS")
    ap.add_argument("--config-file", default=str(DEFAULT_CONFIG), metavar="FILE",
                    help="base config (MODEL.NORM is overridden)")
    ap.add_argument("--norms", default="bn,ln,gn", help="comma-separated subset of bn,ln,gn")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                    help="config overrides of every variant, after the other flags, e.g. "
                         "SOLVER.ITERS_PER_EPOCH 40 SOLVER.BATCH_SIZE 16")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    opts = list(args.opts) + ["DATA.ROOT", str(args.data), "DATA.CACHE_DIR", str(out / "cache")]
    if args.epochs is not None:
        opts += ["SOLVER.EPOCHS", args.epochs]
    wanted = [n.strip() for n in args.norms.split(",") if n.strip()]
    reports = {}
    for norm, name in VARIANTS:
        if norm in wanted:
            reports[name] = run_variant(args.config_file, opts, norm, out, not args.no_progress)
    fps = list(DEFAULT_FPS)  # the k of the paper's Tables 3 and 4
    t3 = {name: {fp_key(k): _cell(r, k) for k in fps} for name, r in reports.items()}
    t3_raw = {name: {fp_key(k): _cell(r.get("raw_labels") or {}, k) for k in fps}
              for name, r in reports.items()}
    n_lesions = {name: r.get("n_lesions") for name, r in reports.items()}
    atomic_write_json(out / "table3.json", {"recall": t3, "recall_raw_labels": t3_raw,
                                            "n_lesions": n_lesions})
    md = markdown_table(reports, fps, "Table 3: recall at k false positives per image (test split, "
                        "IoP >= 0.25 against the processed labels).")
    md += "\n" + markdown_table({n: r.get("raw_labels") or {} for n, r in reports.items()}, fps,
                                "The same probability maps scored against the raw masks.")
    atomic_write_bytes(out / "table3.md", md.encode())
    summary = {"table3": t3}
    if "U-Net GN" in reports:
        per_type = reports["U-Net GN"].get("per_type") or {}
        rows = {label: per_type.get(t, {}) for t, label in TYPE_NAMES}
        t4 = {label: {fp_key(k): _cell(r, k) for k in fps} for label, r in rows.items()}
        t4_n = {label: r.get("n_lesions") for label, r in rows.items()}
        atomic_write_json(out / "table4.json", {"recall": t4, "n_lesions": t4_n})
        md4 = markdown_table(rows, fps, "Table 4: U-Net GN recall per calcification type at k FP "
                             "per image.")
        atomic_write_bytes(out / "table4.md", md4.encode())
        summary["table4"] = t4
    plot_froc({name: r["froc"] for name, r in reports.items()}, out / "froc.png",
              title="Calcification segmentation FROC (IoP >= 0.25)")
    print(md, end="")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
