"""Calcification segmentation: GroupNorm U-Net on 512x512 patches, sliding-window inference (paper §2.2).

Independent of detectron2 and of ``mass_det``: configs are plain fvcore ``CfgNode`` files
(:func:`calc_seg.config.get_calc_seg_cfg`), the model is segmentation_models_pytorch's U-Net
(:func:`calc_seg.model.build_unet`), metrics come from ``common.metrics``.
"""

from calc_seg.config import get_calc_seg_cfg

__all__ = ["get_calc_seg_cfg"]
