"""Training patches as a torch ``Dataset`` with joint image/mask augmentation."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from calc_seg.data.patches import Study, crop


def build_augmentation(cfg):
    """albumentations pipeline from ``cfg.AUG`` (None when disabled).

    Flips and a small affine warp move image and mask together; the mask is resampled with nearest
    neighbour so it stays binary, and the area brought in from outside is zero (background) in both.
    Brightness / contrast / gamma change the image only.
    """
    if not cfg.AUG.ENABLED:
        return None
    a = cfg.AUG
    return A.Compose(
        [
            A.HorizontalFlip(p=a.HFLIP_PROB),
            A.VerticalFlip(p=a.VFLIP_PROB),
            A.Affine(
                scale=tuple(a.SCALE),
                translate_percent=(-a.TRANSLATE, a.TRANSLATE),
                rotate=(-a.ROTATE, a.ROTATE),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=a.AFFINE_PROB,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=a.BRIGHTNESS, contrast_limit=a.CONTRAST, p=a.INTENSITY_PROB
            ),
            A.RandomGamma(gamma_limit=tuple(a.GAMMA), p=a.INTENSITY_PROB),
        ]
    )


class CalcPatchDataset(Dataset):
    """Patches listed in a patch index (``calc_seg.data.patches.build_patch_index``).

    Item ``i`` is ``(image, target)``: image float32 (1, S, S) in [0, 1] (the uint8 pre-processed image
    / 255), target int64 (S, S) with 1 = processed calcification label (grown to the minimum area), 0 = background; S = ``size``.
    """

    def __init__(self, studies: list[Study], entries: np.ndarray, size: int, transform=None):
        self.studies = studies
        self.entries = entries
        self.size = int(size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def positive(self) -> np.ndarray:
        return np.asarray(self.entries["positive"], dtype=bool)

    def __getitem__(self, i: int):
        e = self.entries[i]
        s = self.studies[int(e["study"])]
        y, x = int(e["y"]), int(e["x"])
        image = crop(s.array("image"), y, x, self.size)
        mask = crop(s.array("train_mask"), y, x, self.size).astype(np.uint8)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None]
        return img, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
