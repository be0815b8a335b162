#!/usr/bin/env python
"""Segment calcifications in mammograms with a trained U-Net.

    python scripts/predict_calc.py --config calc_seg/configs/unet_gn.yaml --weights model_best.pth \
        --input scans/ one.dcm --output preds/ [--threshold 0.5]

Per input image ``<stem>`` it writes to ``--output``: ``<stem>_prob.png`` (16-bit probability,
0..65535 = 0..1), ``<stem>_mask.png`` (0/255), ``<stem>.json`` (components: bbox [x, y, w, h] in original
pixels, area, score, type) and ``<stem>_overlay.png``. Files that cannot be read are reported on stderr
and skipped; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def predict_file(model, path: Path, stem: str, out_dir: Path, cfg, threshold: float, device,
                 weights: str) -> dict:
    import numpy as np

    from calc_seg.data.labels import LabelParams
    from calc_seg.data.patches import load_image
    from calc_seg.inference import mask_components, overlay, predict_from_cfg
    from common.io import atomic_write_json, atomic_write_png

    image, breast, record = load_image(path, cfg.DATA.REMOVE_ARTIFACTS)
    prob = predict_from_cfg(model, image, breast, cfg, device)
    labels, comps = mask_components(prob, threshold, LabelParams.from_cfg(cfg))
    mask = labels > 0
    atomic_write_png(out_dir / f"{stem}_prob.png", np.round(prob * 65535).astype(np.uint16))
    atomic_write_png(out_dir / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
    atomic_write_png(out_dir / f"{stem}_overlay.png", overlay(image, mask))
    atomic_write_json(out_dir / f"{stem}.json", {
        "source": str(path), "stem": stem, "height": int(prob.shape[0]), "width": int(prob.shape[1]),
        "weights": weights, "threshold": threshold, "frame": "original image pixels, x = column",
        "components": comps, "preprocess": record,
    })
    return {"stem": stem, "n_components": len(comps)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True, help="checkpoint (.pth) written by calc_seg.train_net")
    ap.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    ap.add_argument("--output", required=True)
    ap.add_argument("--threshold", type=float, default=None, help="default: TEST.THRESHOLD")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from calc_seg.config import get_calc_seg_cfg
    from calc_seg.model import build_model, load_weights
    from common.errors import InputError
    from common.inputs import collect_inputs, unique_stems

    try:
        cfg = get_calc_seg_cfg(args.config, args.opts)  # safe YAML only
        model = build_model(cfg)
        load_weights(model, args.weights)  # data only (weights_only=True), every parameter set
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    threshold = cfg.TEST.THRESHOLD if args.threshold is None else args.threshold
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = collect_inputs(args.input)
    failed = []
    for path, stem in tqdm(list(zip(files, unique_stems(files), strict=True)), desc="predict",
                           disable=len(files) < 2):
        try:
            predict_file(model, path, stem, out_dir, cfg, threshold, device, str(args.weights))
        except Exception as e:  # one bad file must not stop the others
            msg = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
            print(f"failed: {msg}", file=sys.stderr)
            failed.append(str(path))
    print(f"{len(files) - len(failed)} of {len(files)} images written to {out_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
