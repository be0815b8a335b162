"""Shared test data of the mass detector tests."""

import torch
from detectron2.structures import Boxes, Instances


def training_batch(size: int = 128) -> list[dict]:
    """Two detectron2 training inputs of one random ``size`` x ``size`` uint8 image: one with a mass
    box (XYXY, input pixels), one without any (a lesion-free mammogram)."""
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.tensor([[30.0, 40.0, 70.0, 80.0]]))
    inst.gt_classes = torch.tensor([0])
    empty = Instances((size, size))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    return [{"image": image, "instances": inst}, {"image": image, "instances": empty}]
