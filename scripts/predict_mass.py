"""Detect masses in mammograms (DICOM/PNG/TIFF files or folders).

    python scripts/predict_mass.py --config-file mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml \
        --weights output/mass_det/faster_rcnn_R50_FPN_FL_NL/model_final.pth \
        --input study1.dcm folder/ --output predictions/ [--threshold 0.05] [KEY VALUE ...]

Writes predictions.json (COCO results, original image pixels), images.json (id -> file) and
overlays/<stem>.png. Unreadable files are reported and skipped; the exit status is 1 if any failed.

Weights are data: a ``.pth`` is read with ``torch.load(weights_only=True)`` and must set every parameter
of the config's model. detectron2/Caffe2 ``.pkl`` weights are Python pickles, which can run code when
loaded: a local or downloaded ``.pkl`` is refused unless ``--trust-pickle`` is given (the model zoo's
own ``detectron2://`` files are read without it).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="mass_det YAML config")
    parser.add_argument("--weights", required=True, help="trained model (.pth), local file")
    parser.add_argument("--input", nargs="+", required=True, help="files and/or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="minimum score kept in predictions.json (default 0: full FROC range)")
    parser.add_argument("--overlay-threshold", type=float, default=0.5,
                        help="minimum score drawn on the overlays")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="accept .pkl (pickle) weights from outside detectron2's model zoo; "
                             "unpickling can run any code, so only for files you trust")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    import mass_det  # noqa: F401  (registers the model components)
    from common.errors import InputError
    from mass_det.inference import predict_mass

    try:
        # refused pickle, unreadable file, or weights leaving parameters unloaded: one line, from the
        # predictor's own loading (mass_det.inference.build_default_predictor)
        failures = predict_mass(args.config_file, args.weights, args.input, args.output,
                                threshold=args.threshold, overlay_threshold=args.overlay_threshold,
                                opts=args.opts, progress=not args.no_progress,
                                trust_pickle=args.trust_pickle)
    except (FileNotFoundError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if failures:
        print(f"{len(failures)} file(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
