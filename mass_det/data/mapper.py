"""Dataset mapper: pre-processed 8-bit mammogram -> augmented 3-channel tensor + boxes.

Every image is read through :func:`common.preprocess.preprocess` (the same entry the converters and
prediction use), so training, evaluation and prediction see identical pixels. That step (DICOM decode,
windowing, breast mask, artifact removal) dominates loading time, so its uint8 result is cached in
memory and optionally on disk, keyed by path, size and modification time.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from common.errors import InputError
from common.io import atomic_write_png
from common.preprocess import preprocess

from .transforms import gray_to_model_input

__all__ = ["MassCrop", "MassDatasetMapper", "build_mass_augmentations"]

logger = logging.getLogger(__name__)

# An annotation cropped by translation keeps its box only if this fraction of it is still visible;
# a sliver at the border is not a mass the detector should be asked to find.
MIN_VISIBLE_FRACTION = 0.5


class MassCrop(T.Augmentation):
    """A square crop of ``size`` pixels (smaller sides are kept whole) that, with probability
    ``positive_prob``, holds one randomly chosen box whole (a box larger than the crop is centred);
    otherwise its centre lies on a non-zero pixel (breast tissue; the pre-processed background is 0),
    drawn from up to ``tries`` uniform positions."""

    def __init__(self, size: int, positive_prob: float = 0.5, tries: int = 10):
        super().__init__()
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        if not 0.0 <= positive_prob <= 1.0:
            raise ValueError(f"positive_prob must be in [0, 1], got {positive_prob}")
        self._init(locals())

    def get_transform(self, image, boxes):
        h, w = image.shape[:2]
        ch, cw = min(self.size, h), min(self.size, w)
        if boxes is not None and len(boxes) and self._rand_range() < self.positive_prob:
            x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float64)[np.random.randint(len(boxes))]
            left = self._start(x0, x1, cw, w)
            top = self._start(y0, y1, ch, h)
        else:
            for _ in range(self.tries):
                top, left = np.random.randint(h - ch + 1), np.random.randint(w - cw + 1)
                if image[top + ch // 2, left + cw // 2].any():
                    break
        return T.CropTransform(int(left), int(top), cw, ch)

    @staticmethod
    def _start(lo: float, hi: float, crop: int, size: int) -> int:
        """A uniform start of a ``crop``-long window in ``[0, size]`` that holds ``[lo, hi]`` whole
        (centred on it when it does not fit)."""
        if hi - lo >= crop:
            start = 0.5 * (lo + hi - crop)
        else:
            start = np.random.uniform(hi - crop, lo)
        return int(np.clip(np.floor(start), 0, size - crop))


def build_mass_augmentations(cfg, is_train: bool) -> list[T.Augmentation]:
    """Augmentations of paper §4.1.1 for training (flip, translation, scaling); resize only for test.

    Translation and zoom come from :class:`RandomExtent` (a shifted, rescaled crop/pad window of the
    image); the following :class:`ResizeShortestEdge` brings the short edge to ``INPUT.MIN_SIZE_*``
    (around 1200 px), which also varies the scale through ``MIN_SIZE_TRAIN``.
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    m = cfg.INPUT.MAMMO
    augs: list[T.Augmentation] = []
    if m.HFLIP_PROB > 0:
        augs.append(T.RandomFlip(prob=m.HFLIP_PROB, horizontal=True, vertical=False))
    if m.EXTENT_PROB > 0:
        extent = T.RandomExtent(scale_range=tuple(m.SCALE_RANGE), shift_range=tuple(m.SHIFT_RANGE))
        augs.append(T.RandomApply(extent, prob=m.EXTENT_PROB))
    augs.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    if m.CROP_SIZE > 0:
        augs.append(MassCrop(m.CROP_SIZE, m.CROP_POSITIVE_PROB))
    return augs


def _default_reader(remove_artifacts: bool, normalize_laterality: bool):
    def read(path: str) -> tuple[np.ndarray, bool]:
        p = preprocess(
            path, remove_artifacts=remove_artifacts, normalize_laterality=normalize_laterality
        )
        return p.image, bool(p.record.get("flipped", False))

    return read


class PreprocessCache:
    """Memory (LRU) + optional disk cache of ``reader(path) -> (uint8 image, flipped)``."""

    def __init__(self, reader: Callable[[str], tuple[np.ndarray, bool]], size: int = 32,
                 cache_dir: str | os.PathLike | None = None, tag: str = ""):
        self.reader = reader
        self.size = int(size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.tag = tag  # pre-processing options, part of the key
        self._mem: OrderedDict[tuple, tuple[np.ndarray, bool]] = OrderedDict()

    def _key(self, path: str) -> tuple:
        try:
            st = os.stat(path)
        except OSError as e:
            raise InputError(path, f"cannot read file ({e.strerror})") from None
        return (os.path.abspath(path), st.st_size, st.st_mtime_ns, self.tag)

    def __call__(self, path: str) -> tuple[np.ndarray, bool]:
        key = self._key(path)
        if key in self._mem:
            self._mem.move_to_end(key)
            return self._mem[key]
        value = self._read_disk(key)
        if value is None:
            image, flipped = self.reader(path)
            value = (np.ascontiguousarray(image, dtype=np.uint8), bool(flipped))
            self._write_disk(key, value)
        if self.size > 0:
            self._mem[key] = value
            while len(self._mem) > self.size:
                self._mem.popitem(last=False)
        return value

    def _disk_paths(self, key: tuple) -> tuple[Path, Path]:
        digest = hashlib.sha1(repr(key).encode()).hexdigest()
        assert self.cache_dir is not None
        return self.cache_dir / f"{digest}.png", self.cache_dir / f"{digest}.flipped.png"

    def _read_disk(self, key: tuple):
        if self.cache_dir is None:
            return None
        for path, flipped in zip(self._disk_paths(key), (False, True)):
            if path.is_file():
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if image is not None and image.ndim == 2:
                    return image, flipped
        return None

    def _write_disk(self, key: tuple, value: tuple[np.ndarray, bool]) -> None:
        if self.cache_dir is None:
            return
        plain, flipped = self._disk_paths(key)
        try:
            atomic_write_png(flipped if value[1] else plain, value[0])
        except OSError as e:  # a full or read-only cache must not stop training
            logger.warning("cannot write pre-processing cache %s: %s", self.cache_dir, e)


class MassDatasetMapper:
    """Map a dataset dict (``file_name``, ``height``, ``width``, ``annotations`` in original pixels) to
    the model's input: ``image`` (3, H', W') uint8 tensor in ``INPUT.FORMAT``, ``instances`` with
    ``gt_boxes`` (XYXY, resized-image pixels) and ``gt_classes`` when training, ``flipped`` (True when
    pre-processing mirrored the image; predictions must then be mirrored back).

    For evaluation (``is_train=False``) annotations are dropped: the evaluator looks ground truth up by
    ``image_id``. A file that cannot be read is logged and skipped while training (detectron2's
    ``MapDataset`` draws another image when the mapper returns None) and raises during evaluation.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str = "BGR",
        remove_artifacts: bool = True,
        normalize_laterality: bool = False,
        cache_size: int = 32,
        cache_dir: str | None = None,
        reader: Callable[[str], tuple[np.ndarray, bool]] | None = None,
    ):
        """
        Args:
            augmentations: detectron2 augmentations applied to the (H, W, 3) uint8 image.
            reader: ``path -> (uint8 (H, W) image, flipped)``; defaults to common.preprocess with
                ``remove_artifacts`` / ``normalize_laterality``.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        reader = reader or _default_reader(remove_artifacts, normalize_laterality)
        tag = f"artifacts={int(remove_artifacts)},laterality={int(normalize_laterality)}"
        self.read = PreprocessCache(reader, cache_size, cache_dir, tag)
        mode = "training" if is_train else "inference"
        logger.info(f"[MassDatasetMapper] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        m = cfg.INPUT.MAMMO
        return {
            "is_train": is_train,
            "augmentations": build_mass_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "remove_artifacts": m.REMOVE_ARTIFACTS,
            "normalize_laterality": m.NORMALIZE_LATERALITY,
            "cache_size": m.CACHE_SIZE,
            "cache_dir": m.CACHE_DIR or None,
        }

    def __call__(self, dataset_dict: dict) -> dict | None:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            gray, flipped = self.read(dataset_dict["file_name"])
        except InputError as e:
            if not self.is_train:
                raise
            logger.warning("skipping unreadable training image: %s", e)
            return None
        image = gray_to_model_input(gray, self.image_format)
        utils.check_image_size(dataset_dict, image)
        original_hw = image.shape[:2]

        annos = [a for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)]
        # Annotations are in the original frame; a laterality flip happened before augmentation.
        frame = T.TransformList([T.HFlipTransform(original_hw[1])] if flipped else [])
        # The boxes travel with the image: augmentations may look at them (MassCrop), and they come
        # out in the augmented frame.
        aug_input = T.AugInput(image, boxes=frame.apply_box(self._xyxy(annos)) if self.is_train else None)
        self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["flipped"] = flipped

        if not self.is_train:
            return dataset_dict
        dataset_dict["instances"] = self._boxes_to_instances(annos, aug_input.boxes, image_shape)
        return dataset_dict

    @staticmethod
    def _xyxy(annos: list[dict]) -> np.ndarray:
        """(N, 4) float64 XYXY_ABS boxes of the annotations."""
        return np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
            dtype=np.float64,
        ).reshape(-1, 4)

    @staticmethod
    def _boxes_to_instances(annos: list[dict], boxes: np.ndarray, image_shape) -> Instances:
        """Instances of the annotations whose ``boxes`` (XYXY, already augmented with the image) keep
        at least ``MIN_VISIBLE_FRACTION`` of their area inside it, clipped to it."""
        instances = Instances(image_shape)
        if annos:
            area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
            h, w = image_shape
            clipped = np.stack(
                [boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                 boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1
            )
            visible = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
            keep = (visible > 0) & (visible >= MIN_VISIBLE_FRACTION * np.maximum(area, 1e-6))
            classes = np.array([a.get("category_id", 0) for a in annos], dtype=np.int64)[keep]
            boxes = clipped[keep]
        else:
            boxes, classes = np.zeros((0, 4)), np.zeros((0,), dtype=np.int64)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        return instances
