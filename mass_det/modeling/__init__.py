"""Mass-detection model components; importing this module registers them in detectron2's registries
(backbones, ROI heads, proposal generator)."""

from .backbone import (
    NonLocalResNet,
    build_nonlocal_resnet_backbone,
    build_nonlocal_resnet_fpn_backbone,
    convert_torchvision_resnet_names,
)
from .box_predictor import FocalLossFastRCNNOutputLayers
from .nonlocal_block import NonLocalBlock2D
from .roi_heads import FocalLossROIHeads
from .rpn import FocalLossRPN

__all__ = [
    "FocalLossFastRCNNOutputLayers",
    "FocalLossROIHeads",
    "FocalLossRPN",
    "NonLocalBlock2D",
    "NonLocalResNet",
    "build_nonlocal_resnet_backbone",
    "build_nonlocal_resnet_fpn_backbone",
    "convert_torchvision_resnet_names",
]
