"""Constants of the synthetic mammogram generator (shared by every module of the package)."""

from __future__ import annotations

GENERATOR_VERSION = "1.0"
FULL_FIELD = (3328, 2560)  # rows, cols of a typical full-field digital mammogram
MG_FOR_PRESENTATION = (
    "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Pres.
)
VIEWS = ("CC", "MLO")
DENSITIES = ("A", "B", "C", "D")
DENSE_FRACTION = {
    "A": 0.12,
    "B": 0.32,
    "C": 0.58,
    "D": 0.82,
}  # share of the breast that is fibroglandular
MASS_SHAPES = ("round", "oval", "irregular", "spiculated")
# How the display window is stored: one Window Center/Width pair, two pairs (diagnostic, full
# range), or a VOI LUT Sequence holding the diagnostic window as a table.
WINDOW_MODES = ("single", "multi", "voi_lut")
S_MAX = 1.25  # largest signal the stored range must hold (calcification on dense tissue, text)
CALC_TYPE_CODE = {"dot": 1, "vessel": 2, "large": 3}  # canonical codes (datasets.canonical)
