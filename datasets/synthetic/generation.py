"""Study and dataset generation: one image (:func:`render_image`), a canonical dataset folder
(:func:`generate`) and the command line (:func:`main`, ``python -m datasets.synthetic``).

Same seed, same bytes: the study plan of patient ``i`` draws from ``default_rng([seed, i, 0])``,
the image of view ``v`` from ``default_rng([seed, i, v, 1])`` and its column artifact from
``default_rng([seed, i, v, 2])``; the draw order inside an image is fixed by :func:`render_image`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.dicom import dicom_bytes
from common.io import atomic_write_bytes, atomic_write_json, atomic_write_png
from datasets.canonical import DEFAULT_RATIOS, patient_split, write_canonical
from datasets.synthetic.acquisition import (
    add_column_artifact,
    add_noise,
    burn_text,
    display_window,
    draw_image_params,
    force_pixel_module,
    stored_pixels,
)
from datasets.synthetic.anatomy import Anatomy, draw_anatomy
from datasets.synthetic.constants import (
    DENSITIES,
    FULL_FIELD,
    GENERATOR_VERSION,
    S_MAX,
    VIEWS,
    WINDOW_MODES,
)
from datasets.synthetic.dicom import build_dicom
from datasets.synthetic.lesions import (
    Lesions,
    calc_annotations,
    draw_lesions,
    lesion_room,
    mass_annotation,
)

DESCRIPTION = "Synthetic DICOM mammograms with exact ground truth."

# --------------------------------------------------------------------------------------------------
# one image


def _mirror(
    arrays: tuple[np.ndarray, ...], les: Lesions, vessel_paths: list[np.ndarray], w: int
) -> tuple[tuple[np.ndarray, ...], list[np.ndarray]]:
    """Left breast: mirror the (H, W) ``arrays`` and, in place, the lesion footprints and points.

    Returns the mirrored arrays (contiguous copies) and vessel paths ((N, 2) ``(x, y)``).
    """
    arrays = tuple(np.ascontiguousarray(a[:, ::-1]) for a in arrays)
    for m in les.masses:
        m["footprint"] = np.ascontiguousarray(m["footprint"][:, ::-1])
        m["center"][0] = w - 1 - m["center"][0]
    for rec in les.calc_records:
        rec["center"][0] = w - 1 - rec["center"][0]
        if "dots" in rec:
            rec["dots"] = [[w - 1 - x, y, d] for x, y, d in rec["dots"]]
        if "path" in rec:
            rec["path"] = [[round(w - 1 - x, 2), y] for x, y in rec["path"]]
    paths = [np.stack([w - 1 - p[:, 0], p[:, 1]], axis=1) for p in vessel_paths]
    return arrays, paths


def _column_artifact(
    seed: int,
    patient: int,
    view_index: int,
    forced: bool | None,
    params: dict,
    s: np.ndarray,
    calc_mask: np.ndarray,
    text_boxes: list,
) -> dict | None:
    """The column artifact when ``params["artifact"]`` (or ``forced``) says so, from its own
    random stream ``(seed, patient, view_index, 2)``; in place on ``s``. None: no artifact."""
    if forced is not None:
        params["artifact"] = bool(forced)
    if not params["artifact"]:
        return None
    art_rng = np.random.default_rng([seed, patient, view_index, 2])
    h, w = s.shape
    return add_column_artifact(art_rng, s, calc_mask, text_boxes, h, w)


def _record_params(
    params: dict,
    anat: Anatomy,
    les: Lesions,
    vessel_paths: list[np.ndarray],
    artifact: dict | None,
    *,
    density: str,
    view: str,
    laterality: str,
) -> None:
    """In place: add the json-able anatomy, lesion and artifact parameters to ``params``."""
    geo, pect = anat.geometry, anat.pectoral
    geo["pectoral"] = None if pect is None else {k: v for k, v in pect.items() if k != "polygon"}
    params.update(
        density=density,
        view=view,
        laterality=laterality,
        breast=geo,  # silhouette and muscle parameters in the chest-wall-at-column-0 frame
        normal_vessels={
            "width_px": anat.vessels["width_px"],
            "amplitude": round(anat.vessels["amplitude"], 4),
            "paths": [np.round(p[::10], 2).tolist() for p in vessel_paths],
        },
        fat_signal=round(anat.fat, 4),
        dense_amplitude=round(anat.dense_amp, 4),
        skin_amplitude=round(anat.skin_amp, 4),
        lesion_free=bool(not les.masses and not les.calc_records),
        lesions_requested={"masses": les.n_mass, "calcifications": les.calc_types},
        artifact_columns=[] if artifact is None else [artifact["column"]],
        artifact_detail=artifact,
    )


def render_image(
    seed: int,
    patient: int,
    view_index: int,
    height: int,
    width: int,
    laterality: str,
    density: str,
    view: str,
    artifact: bool | None = None,
    pixel_spacing_mm: float = 0.085,
) -> dict:
    """Draw one synthetic mammogram.

    Returns a dict with ``signal`` (float32 (H, W), 0 = background, canonical "bright = dense"),
    ``breast`` (uint8 0/1), ``calc_mask`` (uint8 0/1), ``calc_owner`` (int32 record index per calc
    pixel, -1 elsewhere), ``calc_records``, ``masses`` (with footprints), ``params`` (json-able)
    and ``text_boxes``. Coordinates are in the final (laterality-flipped) frame. ``artifact`` forces
    the column artifact on or off (None: drawn); its dots come from their own random stream, so
    forcing it changes nothing else.
    """
    h, w = height, width
    rng = np.random.default_rng([seed, patient, view_index, 1])
    params = draw_image_params(rng)
    params["pixel_spacing_mm"] = pixel_spacing_mm
    # canonical frame (chest wall at column 0): the normal breast, then the lesions
    anat = draw_anatomy(rng, h, w, view, density)
    room = lesion_room(anat.dist, None if anat.pectoral is None else anat.muscle, h)
    les = draw_lesions(rng, anat.signal, anat.breast, room, density, pixel_spacing_mm)
    s = add_noise(rng, les.signal, anat.breast, params)
    arrays = (s, anat.breast, les.calc_mask, les.calc_owner)
    vessel_paths = anat.vessels["paths"]
    if laterality == "L":  # R keeps the chest wall at column 0, L is mirrored
        arrays, vessel_paths = _mirror(arrays, les, vessel_paths, w)
    s, breast, calc_mask, owner = arrays
    # final frame: burned-in text and the detector artifact
    text_boxes = burn_text(rng, s, breast, laterality, view, h, w)
    art = _column_artifact(seed, patient, view_index, artifact, params, s, calc_mask, text_boxes)
    s = np.clip(s, 0.0, S_MAX)
    _record_params(
        params, anat, les, vessel_paths, art, density=density, view=view, laterality=laterality
    )
    return {
        "signal": s.astype(np.float32),
        "breast": breast,
        "calc_mask": calc_mask,
        "calc_owner": owner,
        "calc_records": les.calc_records,
        "masses": les.masses,
        "params": params,
        "text_boxes": text_boxes,
    }


# --------------------------------------------------------------------------------------------------
# dataset


def _study_plan(
    seed: int, n: int, height: int, pixel_spacing_mm: float | None = None
) -> list[dict]:
    """Per patient: ``patient_id``, ``laterality``, ``density`` and ``pixel_spacing_mm`` (drawn,
    scaled to the field of view, unless ``pixel_spacing_mm`` forces it)."""
    plan = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0])
        plan.append(
            {
                "patient_id": f"S{seed}P{i:04d}",
                "laterality": "L" if rng.random() < 0.5 else "R",
                "density": str(rng.choice(DENSITIES, p=[0.15, 0.4, 0.35, 0.1])),
                # one detector per patient; a smaller image stands for the same field of view
                "pixel_spacing_mm": round(
                    float(rng.choice([0.07, 0.085, 0.1])) * FULL_FIELD[0] / height, 5
                ),
            }
        )
    if pixel_spacing_mm is not None:
        for st in plan:
            st["pixel_spacing_mm"] = float(pixel_spacing_mm)
    return plan


def _check_arguments(
    height: int,
    width: int,
    views: Sequence[str],
    photometric: str | None,
    bits_stored: int | None,
    window_mode: str | None,
    pixel_spacing_mm: float | None,
) -> None:
    """ValueError on an unsupported :func:`generate` argument."""
    if height < 128 or width < 96:
        raise ValueError(f"image too small for a mammogram: {height}x{width} (need >= 128x96)")
    if any(v not in VIEWS for v in views) or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {views}")
    if photometric not in (None, "MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric}")
    if bits_stored not in (None, 12, 14, 16):
        raise ValueError(f"bits_stored must be 12, 14 or 16, got {bits_stored}")
    if window_mode not in (None, *WINDOW_MODES):
        raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode}")
    if pixel_spacing_mm is not None and not pixel_spacing_mm > 0:
        raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")


def _write_image_files(out: Path, img: dict, ds, stem: str) -> str:
    """Write the DICOM, breast mask and calcification mask of one image; returns the DICOM's
    path relative to ``out``."""
    file_name = f"images/{stem}.dcm"
    atomic_write_bytes(out / file_name, dicom_bytes(ds))
    atomic_write_png(out / "breast_masks" / f"{stem}.png", img["breast"] * np.uint8(255))
    atomic_write_png(out / f"calc_masks/{stem}.png", img["calc_mask"] * np.uint8(255))
    return file_name


def _image_record(
    image_id: int, file_name: str, stem: str, st: dict, view: str, p: dict, split: str, hw: tuple
) -> dict:
    """The canonical image record (``images`` of :func:`datasets.canonical.write_canonical`)."""
    sp = p["pixel_spacing_mm"]
    return {
        "id": image_id,
        "file_name": file_name,
        "stem": stem,
        "height": hw[0],
        "width": hw[1],
        "patient_id": st["patient_id"],
        "laterality": st["laterality"],
        "view": view,
        "pixel_spacing": [sp, sp],
        "density": DENSITIES.index(st["density"]) + 1,
        "split": split,
    }


def _annotate(
    image_id: int, img: dict, mass_anns: list, calc_anns: list
) -> tuple[list[dict], list[dict]]:
    """Append the image's COCO mass and calcification annotations to ``mass_anns`` and
    ``calc_anns`` (pops the mass footprints); returns the manifest's mass records and the
    calcification components (see :func:`datasets.synthetic.lesions.calc_annotations`)."""
    mass_records = []
    for m in img["masses"]:
        ann = mass_annotation(m.pop("footprint"))
        mass_anns.append(
            {
                "image_id": image_id,
                "bbox": ann["bbox"],
                "area": ann["area"],
                "segmentation": ann["segmentation"],
                "shape": m["shape"],
                "contrast": m["contrast"],
                "contrast_level": m["contrast_level"],
            }
        )
        mass_records.append({**m, "bbox": ann["bbox"], "area": ann["area"]})
    comps = calc_annotations(img["calc_mask"], img["calc_owner"], img["calc_records"])
    for c in comps:
        calc_anns.append(
            {
                "image_id": image_id,
                "bbox": c["bbox"],
                "area": c["area"],
                "calc_type": c["calc_type"],
                "point": c["point"],
            }
        )
    return mass_records, comps


def _manifest_entry(
    stem: str, file_name: str, patient_id: str, ds, p: dict, img: dict, mass_records, comps
) -> dict:
    """The per-image record of ``manifest.json``: every generation parameter and the truth."""
    return {
        "stem": stem,
        "file_name": file_name,
        "patient_id": patient_id,
        "study_instance_uid": str(ds.StudyInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        **{k: v for k, v in p.items() if k not in ("artifact",)},
        "text_boxes": img["text_boxes"],
        "masses": mass_records,
        "calcifications": img["calc_records"],
        "calc_components": [
            {"calc_type": c["calc_type"], "bbox": c["bbox"], "records": c["records"]} for c in comps
        ],
    }


def _write_dataset_files(
    out: Path,
    images: list,
    mass_anns: list,
    calc_anns: list,
    manifest_images: list,
    seed: int,
    ratios: Sequence[float],
    arguments: dict,
) -> None:
    """Write the canonical JSON files (:func:`datasets.canonical.write_canonical`) and
    ``manifest.json``."""
    info = {
        "description": "DeepLIMa synthetic mammograms",
        "version": GENERATOR_VERSION,
        "seed": seed,
    }
    # the synthetic truth is exhaustive: every image has a mask file, empty without calcification
    for im in images:
        im["mask_file"] = f"calc_masks/{im['stem']}.png"
    write_canonical(out, images, mass_anns, calc_anns, seed, ratios=ratios, info=info)
    atomic_write_json(
        out / "manifest.json",
        {
            "generator": "datasets.synthetic",
            "version": GENERATOR_VERSION,
            "arguments": arguments,
            "signal_model": "stored = raw_base + signal * raw_span (clipped to BitsStored; "
            "MONOCHROME1: maxval - that); modality = stored * rescale_slope + rescale_intercept",
            "images": manifest_images,
        },
    )


def generate(
    out_dir: str | Path,
    n: int = 4,
    seed: int = 0,
    height: int = FULL_FIELD[0],
    width: int = FULL_FIELD[1],
    *,
    views: Sequence[str] = VIEWS,
    photometric: str | None = None,
    bits_stored: int | None = None,
    window_mode: str | None = None,
    artifact: bool | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    progress: bool = True,
    pixel_spacing_mm: float | None = None,
) -> Path:
    """Write ``n`` synthetic studies as a canonical dataset folder and return ``out_dir``.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced atomically,
            other files are left alone).
        n: number of studies (patients); each has one image per entry of ``views`` of one breast.
        seed: everything (pixels, lesions, UIDs, split) is a function of ``seed`` and the arguments.
        height, width: image rows and columns; anatomy, lesions and text scale with the height.
        views: subset of ("CC", "MLO").
        photometric, bits_stored, window_mode, artifact: force a pixel-module choice for every image
            (None: drawn per image). Forcing changes no other draw, so e.g. the MONOCHROME1 and
            MONOCHROME2 versions of a seed show the same image.
        ratios: train/val/test patient ratios for :func:`datasets.canonical.patient_split`.
        progress: show a tqdm progress bar.
        pixel_spacing_mm: one pixel spacing for every image: a smaller ``height`` then stands for a
            smaller breast at that resolution (e.g. 0.085 gives real-size calcifications on a small
            image). None: drawn per patient from 0.07 / 0.085 / 0.1 mm at full field, scaled by
            ``3328 / height`` (a smaller image stands for the same field of view).
    """
    _check_arguments(height, width, views, photometric, bits_stored, window_mode, pixel_spacing_mm)
    out = Path(out_dir)
    plan = _study_plan(seed, n, height, pixel_spacing_mm)
    split = patient_split([s["patient_id"] for s in plan], seed, ratios)
    images, mass_anns, calc_anns, manifest_images = [], [], [], []
    jobs = [(i, st, VIEWS.index(v), v) for i, st in enumerate(plan) for v in views]
    for i, st, vi, view in tqdm(
        jobs, desc="synthetic mammograms", unit="img", disable=not progress
    ):
        pid, lat = st["patient_id"], st["laterality"]
        img = render_image(
            seed,
            i,
            vi,
            height,
            width,
            lat,
            st["density"],
            view,
            artifact,
            pixel_spacing_mm=st["pixel_spacing_mm"],
        )
        p = img["params"]
        force_pixel_module(p, photometric, bits_stored, window_mode)
        p["window"] = display_window(p)
        stem = f"{pid}_{lat}_{view}"
        pixels = stored_pixels(img["signal"], p)
        ds = build_dicom(pixels, p, patient_id=pid, stem=stem, seed=seed, study=i, view_index=vi)
        file_name = _write_image_files(out, img, ds, stem)
        image_id = len(images) + 1
        images.append(
            _image_record(image_id, file_name, stem, st, view, p, split[pid], (height, width))
        )
        mass_records, comps = _annotate(image_id, img, mass_anns, calc_anns)
        manifest_images.append(
            _manifest_entry(stem, file_name, pid, ds, p, img, mass_records, comps)
        )
    arguments = {
        "n": n,
        "seed": seed,
        "height": height,
        "width": width,
        "views": list(views),
        "photometric": photometric,
        "bits_stored": bits_stored,
        "window_mode": window_mode,
        "artifact": artifact,
        "ratios": list(ratios),
    }
    _write_dataset_files(
        out, images, mass_anns, calc_anns, manifest_images, seed, ratios, arguments
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.synthetic --out DIR [--n N] [--seed S] ...``: run :func:`generate`,
    print the output folder and return 0."""
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=DESCRIPTION)
    ap.add_argument("--out", required=True, help="output folder (canonical dataset form)")
    ap.add_argument("--n", type=int, default=4, help="number of studies (patients), two views each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=FULL_FIELD[0])
    ap.add_argument("--width", type=int, default=FULL_FIELD[1])
    ap.add_argument("--photometric", choices=["MONOCHROME1", "MONOCHROME2"], default=None)
    ap.add_argument("--bits-stored", type=int, choices=[12, 14, 16], default=None)
    ap.add_argument("--window-mode", choices=WINDOW_MODES, default=None)
    ap.add_argument(
        "--pixel-spacing",
        type=float,
        default=None,
        metavar="MM",
        help="one pixel spacing for all images (default: full field of view at any size)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    out = generate(
        a.out,
        n=a.n,
        seed=a.seed,
        height=a.height,
        width=a.width,
        photometric=a.photometric,
        bits_stored=a.bits_stored,
        window_mode=a.window_mode,
        progress=not a.quiet,
        pixel_spacing_mm=a.pixel_spacing,
    )
    print(out)
    return 0
