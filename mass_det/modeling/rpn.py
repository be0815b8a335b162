"""RPN whose objectness loss can be the sigmoid focal loss (paper §2.1.3).

The paper replaces "the original loss function in Faster R-CNN" with the focal loss. The box classifier
is covered by :class:`~mass_det.modeling.roi_heads.FocalLossROIHeads`; this RPN does the same for the
objectness of the anchors, behind its own switch (``MODEL.FOCAL_LOSS.RPN``). Anchor labelling and
sampling, the box-regression loss and the normaliser stay detectron2's: only the binary cross-entropy
term of ``loss_rpn_cls`` is replaced, so with the switch off this is detectron2's :class:`RPN`.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from fvcore.nn import sigmoid_focal_loss

__all__ = ["FocalLossRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class FocalLossRPN(RPN):
    """:class:`RPN` with ``loss_rpn_cls`` = sigmoid focal loss over the sampled anchors.

    ``loss_rpn_cls = sum_a FL(p_a) / (RPN.BATCH_SIZE_PER_IMAGE * N)`` over the anchors the sampler kept
    (label 0 or 1, at most ``BATCH_SIZE_PER_IMAGE`` per image), N images: detectron2's RPN divides its
    summed cross-entropy by the same number, so gamma 0 and alpha -1 give exactly its loss.
    """

    @configurable
    def __init__(
        self,
        *,
        focal_loss: bool = True,
        focal_loss_gamma: float = 2.0,
        focal_loss_alpha: float = 0.25,
        **kwargs,
    ):
        """
        Args:
            focal_loss: False keeps detectron2's binary cross-entropy (the ablation).
            focal_loss_gamma: focusing parameter (gamma >= 0; 0 gives plain sigmoid cross-entropy).
            focal_loss_alpha: weight of the positive (object) anchors in [0, 1]; negative disables it.
            Other arguments as :class:`RPN`.
        """
        super().__init__(**kwargs)
        if focal_loss_gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {focal_loss_gamma}")
        self.focal_loss = bool(focal_loss)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.focal_loss_alpha = float(focal_loss_alpha)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["focal_loss"] = cfg.MODEL.FOCAL_LOSS.RPN
        ret["focal_loss_gamma"] = cfg.MODEL.FOCAL_LOSS.GAMMA
        ret["focal_loss_alpha"] = cfg.MODEL.FOCAL_LOSS.ALPHA
        return ret

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """:meth:`RPN.losses` (same arguments, same logged statistics) with the focal objectness.

        Args:
            pred_objectness_logits: L tensors of shape (N, Hi*Wi*A), one per feature level.
            gt_labels: N tensors of shape (sum_i Hi*Wi*A,): 1 object, 0 background, -1 ignored
                (not sampled); output of :meth:`RPN.label_and_sample_anchors`.
            anchors, pred_anchor_deltas, gt_boxes: as :meth:`RPN.losses` (box regression unchanged).
        """
        losses = super().losses(
            anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        if not self.focal_loss:
            return losses
        labels = torch.stack(gt_labels)  # (N, sum_i Hi*Wi*A)
        valid = labels >= 0
        objectness_loss = sigmoid_focal_loss(
            cat(pred_objectness_logits, dim=1)[valid],
            labels[valid].to(torch.float32),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        normalizer = self.batch_size_per_image * len(gt_labels)
        losses["loss_rpn_cls"] = (
            objectness_loss / normalizer * self.loss_weight.get("loss_rpn_cls", 1.0)
        )
        return losses
