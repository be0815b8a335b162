"""Fast R-CNN box predictor classifying with sigmoid focal loss (paper §2.1.3, eqs. 1-2).

The classification logits keep detectron2's layout ``(R, K + 1)`` (last column = background) so the
regression branch, ``fast_rcnn_inference`` and checkpoints are unchanged; the loss uses only the K
foreground columns against one-hot targets (a background proposal is an all-zero row), as RetinaNet does,
and inference turns the same columns into independent sigmoid probabilities (``use_sigmoid_ce``).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from fvcore.nn import sigmoid_focal_loss

__all__ = ["FOCAL_LOSS_NORMALIZERS", "FocalLossFastRCNNOutputLayers"]

# Divisors of the summed focal loss: every sampled RoI (detectron2) or the foreground ones (RetinaNet).
FOCAL_LOSS_NORMALIZERS = ("sampled", "foreground")


class FocalLossFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` whose ``loss_cls`` is the sigmoid focal loss.

    ``loss_cls = sum_{r, k} FL(p_rk) / Z`` with ``p_rk = sigmoid(scores[r, k])`` for the K foreground
    classes. ``Z`` is R, the number of sampled proposals in the batch (``ROI_HEADS.BATCH_SIZE_PER_IMAGE``
    per image; normalizer "sampled", the default), so the loss keeps the scale of detectron2's
    per-proposal cross-entropy; or ``max(R_fg, 1)``, the number of foreground proposals (normalizer
    "foreground", as RetinaNet divides by foreground anchors), which multiplies it by ``R / R_fg``.
    """

    @configurable
    def __init__(self, input_shape, *, focal_loss_gamma: float = 2.0, focal_loss_alpha: float = 0.25,
                 focal_loss_normalizer: str = "sampled", **kwargs):
        """
        Args:
            focal_loss_gamma: focusing parameter (gamma >= 0; 0 gives plain sigmoid cross-entropy).
            focal_loss_alpha: weight of the positive class in [0, 1]; negative disables weighting.
            focal_loss_normalizer: "sampled" (divide by all sampled proposals) or "foreground"
                (divide by the foreground proposals, at least 1).
            Other arguments as :class:`FastRCNNOutputLayers`; ``use_sigmoid_ce`` is forced on so that
            inference reads sigmoid probabilities of the same logits the loss trained.
        """
        kwargs["use_sigmoid_ce"] = True
        if kwargs.get("use_fed_loss"):
            raise ValueError("federated loss is not supported with the focal-loss predictor")
        super().__init__(input_shape, **kwargs)
        if focal_loss_gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {focal_loss_gamma}")
        if focal_loss_normalizer not in FOCAL_LOSS_NORMALIZERS:
            raise ValueError(
                f"focal loss normalizer must be one of {FOCAL_LOSS_NORMALIZERS}, "
                f"got {focal_loss_normalizer!r}"
            )
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_normalizer = focal_loss_normalizer

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["focal_loss_gamma"] = cfg.MODEL.FOCAL_LOSS.GAMMA
        ret["focal_loss_alpha"] = cfg.MODEL.FOCAL_LOSS.ALPHA
        ret["focal_loss_normalizer"] = cfg.MODEL.FOCAL_LOSS.BOX_NORMALIZER
        return ret

    def sigmoid_cross_entropy_loss(self, pred_class_logits: torch.Tensor, gt_classes: torch.Tensor):
        """Focal loss used by :meth:`FastRCNNOutputLayers.losses` in place of sigmoid CE.

        Args:
            pred_class_logits: (R, K + 1) logits; the background column is ignored.
            gt_classes: (R,) int64 in [0, K]; K means background.
        """
        if pred_class_logits.numel() == 0:
            return pred_class_logits.new_zeros([1])[0]
        num_proposals, k = pred_class_logits.shape[0], pred_class_logits.shape[1] - 1
        target = pred_class_logits.new_zeros(num_proposals, k + 1)
        target[torch.arange(num_proposals, device=gt_classes.device), gt_classes] = 1
        loss = sigmoid_focal_loss(
            pred_class_logits[:, :-1],
            target[:, :-1],
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        if self.focal_loss_normalizer == "foreground":
            return loss / (gt_classes < k).sum().clamp(min=1)
        return loss / num_proposals
