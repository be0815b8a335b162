"""ROI heads whose box predictor is :class:`FocalLossFastRCNNOutputLayers`.

detectron2 has no box-predictor registry; like ``RROIHeads`` we subclass :class:`StandardROIHeads` and
swap the predictor in ``_init_box_head``. With ``MODEL.FOCAL_LOSS.ENABLED False`` the stock softmax
cross-entropy predictor is kept, so the same heads serve the ablation.
"""

from __future__ import annotations

from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .box_predictor import FocalLossFastRCNNOutputLayers

__all__ = ["FocalLossROIHeads"]


@ROI_HEADS_REGISTRY.register()
class FocalLossROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with a sigmoid focal-loss box classifier."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        if cfg.MODEL.FOCAL_LOSS.ENABLED:
            # The only difference from StandardROIHeads.
            ret["box_predictor"] = FocalLossFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
