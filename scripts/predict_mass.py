r"""Detect masses in mammograms with the mass detector alone: ``deeplima predict-mass``.

    python -m scripts.predict_mass --config-file mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml \
        --weights output/mass_det/faster_rcnn_R50_FPN_FL_NL/model_final.pth \
        --input study1.dcm folder/ --output predictions/ [--threshold 0.5] [KEY VALUE ...]

Writes the prediction folder of ``deeplima/writer.py`` without its calcification entries and files.
See ``python -m deeplima predict-mass --help``.
"""

import sys

from deeplima.cli import main as deeplima_main


def main(argv: list[str] | None = None) -> int:
    return deeplima_main(["predict-mass", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
