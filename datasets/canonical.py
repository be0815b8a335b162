"""Writing the canonical dataset form (schema and reader: :mod:`common.canonical`).

Layout of a canonical dataset folder ``OUT/``::

    masses.json          COCO detection file, category 1 = "mass"
    calcifications.json  COCO file, category 1 = "calcification", one annotation per 8-connected
                         component of the calcification mask, with ``calc_type`` and ``point``
    calc_masks/<stem>.png  uint8 0/255 calcification masks (same size as the image)
    split.json           patient-level train/val/test split with a SHA-256 per image file
    conversion_report.json  the converter's per-row problems
    images/<stem>.<ext>  images written into the folder (the synthetic DICOMs; MIAS PGMs re-encoded as
                         PNG, which the loaders read); the other converters reference the download's
                         files by absolute path

Image records (shared by both COCO files) carry ``id``, ``file_name`` (relative to ``OUT`` or absolute),
``stem`` (unique, names masks and prediction files), ``height``, ``width``, ``patient_id``,
``laterality`` ("L"/"R"/None), ``view`` ("CC", "MLO", ...), ``pixel_spacing`` ([row_mm, col_mm] or None),
``density`` (BI-RADS 1-4 or None), ``split`` and, in ``calcifications.json``, ``mask_file``.
Boxes are ``[x, y, w, h]`` in original image pixels, top-left origin, x along columns.

This module is the one import for what the converters and the synthetic generator share; each part
lives in its own module:

* :mod:`datasets.shapes` - polygons, circles, points, boxes -> bool masks and boxes;
  :func:`coordinates_problem` (hostile coordinates);
* :mod:`datasets.calc_mask` - :class:`CalcMask` (one image's calcification mask plus the types its
  source states) and :func:`calc_components` (8-connected components typed "dot" / "vessel" /
  "large" by :mod:`common.calcifications`);
* :mod:`datasets.tables` - :class:`ConversionReport` (``conversion_report.json``), :func:`read_table`,
  cells, :func:`path_inside` (table paths confined to ``--root``), :func:`image_size`;
* :mod:`datasets.splits` - :func:`patient_split` and ``split.json``;
* :mod:`datasets.output` - :func:`write_canonical` and the staged output folder
  (:func:`staged_output`, the ``--out`` / ``--overwrite`` rules);
* :mod:`datasets.converter` - :class:`~datasets.converter.Converter`, the conversion skeleton and
  command line every ``datasets/<source>.py`` runs.
"""

from __future__ import annotations

from common.canonical import (
    CALC_CATEGORIES,
    CALC_TYPES,
    CANONICAL_FILES,
    MASK_DIR,
    MASS_CATEGORIES,
    SPLITS,
    resolve_file,
)
from common.dicom import pixel_spacing as dicom_pixel_spacing
from common.dicom import read_dicom_header
from datasets.calc_mask import CalcMask, calc_components
from datasets.output import (
    build_coco,
    check_out,
    owned_files,
    staged_output,
    write_canonical,
)
from datasets.shapes import (
    POINT_RADIUS,
    box_to_mask,
    circle_to_mask,
    clip_bbox,
    coordinates_problem,
    leaves_image,
    mask_bbox,
    mask_polygons,
    outline_mass,
    points_bbox,
    points_to_mask,
    polygon_area,
    polygon_to_mask,
)
from datasets.splits import DEFAULT_RATIOS, assign_splits, patient_split, write_split_json
from datasets.tables import (
    ConversionReport,
    check_root,
    image_size,
    int_or_none,
    path_inside,
    read_table,
    require_columns,
    unique_stem,
)

__all__ = [
    # the schema (common.canonical) and the DICOM header reader (common.dicom)
    "CALC_CATEGORIES",
    "CALC_TYPES",
    "CANONICAL_FILES",
    "MASK_DIR",
    "MASS_CATEGORIES",
    "SPLITS",
    "dicom_pixel_spacing",
    "read_dicom_header",
    "resolve_file",
    # shapes
    "POINT_RADIUS",
    "box_to_mask",
    "circle_to_mask",
    "clip_bbox",
    "coordinates_problem",
    "leaves_image",
    "mask_bbox",
    "mask_polygons",
    "outline_mass",
    "points_bbox",
    "points_to_mask",
    "polygon_area",
    "polygon_to_mask",
    # calcification masks
    "CalcMask",
    "calc_components",
    # reading a download
    "ConversionReport",
    "check_root",
    "image_size",
    "int_or_none",
    "path_inside",
    "read_table",
    "require_columns",
    "unique_stem",
    # splits and the output folder
    "DEFAULT_RATIOS",
    "assign_splits",
    "build_coco",
    "check_out",
    "owned_files",
    "patient_split",
    "staged_output",
    "write_canonical",
    "write_split_json",
]
