"""Helpers shared by the converter tests (not a test module)."""


def by_stem(coco: dict) -> tuple[dict, dict]:
    """Image records and annotation lists of a COCO dict, both keyed by image stem."""
    images = {im["stem"]: im for im in coco["images"]}
    anns: dict[str, list] = {s: [] for s in images}
    id2stem = {im["id"]: im["stem"] for im in coco["images"]}
    for a in coco["annotations"]:
        anns[id2stem[a["image_id"]]].append(a)
    return images, anns


def breast_phantom(rows: int, cols: int, dtype="uint16", peak: int = 1500):
    """A loadable mammogram stand-in (rows x cols): a half-disc of tissue against the left edge whose
    brightness falls off towards the skin line, zero background. Unlike a constant image it survives
    ``common.preprocess`` (windowing, breast region), so converted fixtures can be loaded end to end.
    """
    import numpy as np

    yy, xx = np.mgrid[:rows, :cols].astype(np.float64)
    r = np.hypot(xx / (0.85 * cols), (yy - rows / 2) / (0.48 * rows))
    img = np.where(r <= 1, peak * (0.4 + 0.6 * (1 - r)), 0)
    img += np.where(r <= 1, (xx * 7 + yy * 3) % 11, 0)  # texture: no flat tissue
    return img.astype(dtype)
