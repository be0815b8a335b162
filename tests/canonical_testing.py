"""Helpers shared by the converter tests (not a test module)."""


def by_stem(coco: dict) -> tuple[dict, dict]:
    """Image records and annotation lists of a COCO dict, both keyed by image stem."""
    images = {im["stem"]: im for im in coco["images"]}
    anns: dict[str, list] = {s: [] for s in images}
    id2stem = {im["id"]: im["stem"] for im in coco["images"]}
    for a in coco["annotations"]:
        anns[id2stem[a["image_id"]]].append(a)
    return images, anns
