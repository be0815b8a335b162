"""Mass-detection model components; importing this module registers them in detectron2's registries."""

from .backbone import (
    NonLocalResNet,
    build_nonlocal_resnet_backbone,
    build_nonlocal_resnet_fpn_backbone,
    convert_torchvision_resnet_names,
)
from .box_predictor import FocalLossFastRCNNOutputLayers
from .nonlocal_block import NonLocalBlock2D
from .roi_heads import FocalLossROIHeads

__all__ = [
    "FocalLossFastRCNNOutputLayers",
    "FocalLossROIHeads",
    "NonLocalBlock2D",
    "NonLocalResNet",
    "build_nonlocal_resnet_backbone",
    "build_nonlocal_resnet_fpn_backbone",
    "convert_torchvision_resnet_names",
]
