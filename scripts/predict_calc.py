r"""Segment calcifications in mammograms with the U-Net alone: ``deeplima predict-calc``.

    python -m scripts.predict_calc --config-file calc_seg/configs/unet_gn.yaml \
        --weights output/calc_seg/unet_gn/model_best.pth \
        --input scans/ one.dcm --output preds/ [--threshold 0.5] [KEY VALUE ...]

Writes the prediction folder of ``deeplima/writer.py`` without its mass entries and files.
See ``python -m deeplima predict-calc --help``.
"""

import sys

from deeplima.cli import main as deeplima_main


def main(argv: list[str] | None = None) -> int:
    return deeplima_main(["predict-calc", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
