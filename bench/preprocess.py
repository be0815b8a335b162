"""Benchmark: the full pre-processing chain on one full-field 16-bit DICOM, one thread.

    python bench/preprocess.py [--runs 7] [--height 3518] [--width 2800] [--keep DIR]

Generates one synthetic 16-bit MONOCHROME2 DICOM (``datasets.synthetic``, with the column artifact)
of the requested size, then times ``common.preprocess.preprocess(path)`` (read + Modality LUT,
window, breast region, artifact removal) ``--runs`` times after one warm-up run. Every thread pool
(BLAS, OpenMP, OpenCV) is limited to one thread. The last output line is a JSON object with
``seconds_median`` and the individual timings.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy / OpenCV are imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from common.preprocess import preprocess  # noqa: E402  (the packages: pip install -e .)
from datasets.synthetic import generate  # noqa: E402


def make_dicom(folder: Path, height: int, width: int) -> Path:
    """One synthetic 16-bit CC image with the line artifact; returns its path."""
    generate(
        folder,
        n=1,
        seed=0,
        height=height,
        width=width,
        views=("CC",),
        photometric="MONOCHROME2",
        bits_stored=16,
        window_mode="single",
        artifact=True,
        progress=False,
    )
    (path,) = sorted((folder / "images").glob("*.dcm"))
    return path


def breast_iou(result, folder: Path, stem: str) -> float:
    """IoU of the extracted breast mask with the generator's true breast mask."""
    truth = cv2.imread(str(folder / "breast_masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE) > 0
    mask = result.breast_mask
    return float((truth & mask).sum() / (truth | mask).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs (>= 5)")
    parser.add_argument("--height", type=int, default=3518)
    parser.add_argument("--width", type=int, default=2800)
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the DICOM here instead of a temp dir"
    )
    args = parser.parse_args(argv)
    cv2.setNumThreads(0)  # 0: OpenCV runs every function sequentially

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        path = make_dicom(folder, args.height, args.width)
        result = preprocess(path)  # warm-up (imports, page cache)
        times = []
        for _ in range(max(5, args.runs)):
            t0 = time.perf_counter()
            result = preprocess(path)
            times.append(time.perf_counter() - t0)
        iou = breast_iou(result, folder, path.stem)
    summary = {
        "benchmark": "preprocess",
        "image": [args.height, args.width],
        "bits_stored": 16,
        "threads": 1,
        "runs": len(times),
        "seconds_median": round(statistics.median(times), 4),
        "seconds_min": round(min(times), 4),
        "seconds": [round(t, 4) for t in times],
        "artifact_columns": result.record["artifact_columns"],
        "breast_fraction": round(result.record["breast_fraction"], 4),
        "breast_iou": round(iou, 5),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{os.cpu_count()} cpu".strip(),
        "python": platform.python_version(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
