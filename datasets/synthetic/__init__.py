"""Synthetic DICOM mammograms with exact ground truth.

The embedded default data for the demo and the tests, since no real mammography dataset can be
downloaded in every environment. ``generate()`` (or ``python -m datasets.synthetic --out DIR --n N
--seed S``) writes a canonical dataset folder (see :mod:`datasets.canonical`)::

    OUT/
      images/<stem>.dcm        DICOM, Digital Mammography X-Ray Image Storage - For Presentation
      masses.json              COCO boxes of the masses
      calcifications.json      COCO, one annotation per 8-connected component of the calc. mask
      calc_masks/<stem>.png    uint8 0/255 calcification mask (written for every image: the
                               synthetic annotation is exhaustive, so an empty mask is a true
                               "no calcification")
      breast_masks/<stem>.png  uint8 0/255 true breast region (skin line and pectoral muscle)
      split.json               patient-level split (datasets.canonical.write_split_json)
      manifest.json            every generation parameter, per image

Studies. One study is one patient: the CC and the MLO view of one breast (laterality drawn per
patient, density shared by the two views; lesions are drawn independently per view). The stem is
``<patient_id>_<laterality>_<view>``, e.g. ``S0P0003_L_MLO``.

Image model. Everything is built in a "signal" unit ``s`` where 0 is the unexposed-detector
background, fatty tissue is ~0.3, dense tissue ~0.7 and calcifications ~1 (bright = more
attenuation, as displayed in MONOCHROME2). The breast is a perturbed semi-ellipse from the chest
wall (R breasts have the chest wall at column 0, L breasts at the last column, as DICOM PS3.3
C.8.11.7 orients them) with a thickness fall-off and a skin line; parenchymal texture is filtered
noise at several scales, generated on a coarse grid and upsampled, thresholded to the BI-RADS
density fraction (A-D); faint vessels; MLO views have a pectoral muscle triangle. Anatomy, lesion
and text sizes scale with the image height, so small test images (e.g. 512x416) stay sensible; the
pixel spacing scales too (a smaller image stands for the same field of view).

Acquisition, drawn per image (``generate`` can force each): BitsStored 12/14/16; MONOCHROME1
(stored inverted, tissue dark) or MONOCHROME2; a window that displays the breast (background below
``c - w/2``, calcifications near ``c + w/2``), given once, as the first of two values, or as a VOI
LUT Sequence tabulating it. Every file is a complete Digital Mammography X-Ray Image - For
Presentation IOD (Rescale Slope 1 and Intercept 0, as that IOD requires; coded view, laterality,
anatomy; patient, study, series, equipment and frame of reference), checked with dicom3tools'
``dciodvfy`` by the tests. Burned-in view label, laterality marker and
acquisition text lie in the background on the nipple side, at least ~1 % of the height away from
the breast. In ~30 % of images, the detector artifact of the paper (Fig. 2): isolated 1-pixel
bright and dark dots on one column.

Lesions (none in ~25 % of images), all inside the breast, off the pectoral muscle and apart from
each other:

* masses: round, oval, irregular or spiculated; diameter 2-6 % of the image height; soft margins;
  contrast 0.1-0.28 signal units, or 0.05-0.09 ("low") in most masses of dense (C/D) breasts. The
  box is the tight box of the footprint ``r <= R(theta)`` (spicules, drawn below half the
  contrast, are not part of it).
* calcifications, as a pixel mask typed per 8-connected component: ``dot`` (dots of 0.1-1 mm,
  i.e. 1-12 px at 85 µm, mostly small; single (20 %) or in clusters of 5-30, each dot its own
  component; the mask is the dot pixels), ``vessel`` (tram-track dots along a curved vessel; the
  mask is one elongated band along the vessel) and ``large`` (crowded 1-4 px dots; the mask is
  their convex hull, slightly dilated: the region a radiologist would outline).

Cost: about 1-2 s per full-field 3328x2560 image on one core (vectorised numpy/OpenCV).

Ground truth frames: all boxes ``[x, y, w, h]`` and points ``[x, y]`` are in original DICOM pixel
coordinates (top-left origin, x along columns), i.e. after the laterality flip.

Same seed, same bytes: every random draw comes from ``numpy.random.default_rng`` seeded by
``(seed, patient, view)``; UIDs are hashes of the seed and the image identity; dates and times are
a fixed value, never the clock.

Package layout: :mod:`~datasets.synthetic.anatomy` (the normal breast),
:mod:`~datasets.synthetic.lesions` (masses, calcifications, their annotations),
:mod:`~datasets.synthetic.acquisition` (noise, burned-in text, column artifact, pixel module and
window), :mod:`~datasets.synthetic.dicom` (the DICOM writer), :mod:`~datasets.synthetic.generation`
(one image, the dataset folder, the command line), :mod:`~datasets.synthetic.constants` and
:mod:`~datasets.synthetic.raster` (drawing primitives).
"""

from __future__ import annotations

from common.dicom import dicom_bytes
from datasets.synthetic.constants import (
    CALC_TYPE_CODE,
    DENSE_FRACTION,
    DENSITIES,
    FULL_FIELD,
    GENERATOR_VERSION,
    MASS_SHAPES,
    MG_FOR_PRESENTATION,
    S_MAX,
    VIEWS,
    WINDOW_MODES,
)
from datasets.synthetic.dicom import PATIENT_ORIENTATION, build_dicom
from datasets.synthetic.generation import generate, main, render_image

__all__ = [
    "CALC_TYPE_CODE",
    "DENSE_FRACTION",
    "DENSITIES",
    "FULL_FIELD",
    "GENERATOR_VERSION",
    "MASS_SHAPES",
    "MG_FOR_PRESENTATION",
    "PATIENT_ORIENTATION",
    "S_MAX",
    "VIEWS",
    "WINDOW_MODES",
    "build_dicom",
    "dicom_bytes",
    "generate",
    "main",
    "render_image",
]
