"""The mass detector's predictor: a pre-processed 8-bit mammogram in, boxes and scores out.

:class:`MassPredictor` wraps detectron2's :class:`~detectron2.engine.DefaultPredictor` (which
resizes the image to ``INPUT.MIN_SIZE_TEST`` and maps the boxes back to the frame it was given) with
the weights loaded as data and required to set every parameter (:func:`build_default_predictor`). It
does no pre-processing: the caller gives it the uint8 (H, W) result of
:func:`common.preprocess.preprocess` and gets boxes in the frame of that image. Reading files,
laterality and writing outputs belong to ``deeplima`` (``deeplima.pipeline``, ``deeplima.writer``;
``python -m deeplima predict-mass``).

The fast path (:func:`prepare_for_inference`, keys under ``MODEL.INFERENCE``) changes how the
loaded model computes, never its weights: FrozenBN folded into the convolutions before it, the
convolutional trunk (backbone and RPN head) in channels-last memory and, where the device computes
it natively, in bfloat16, with float32 at the trunk's boundary so proposals, ROI heads, scores and
boxes stay float32.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.engine import DefaultPredictor
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from common.amp import autocast_dtype
from common.errors import InputError

from .config import resolve_device
from .data.transforms import gray_to_model_input
from .engine.trainer import load_mass_weights, resolve_weights_file

__all__ = [
    "MassPredictor",
    "build_default_predictor",
    "convert_trunk",
    "fold_frozen_batchnorm",
    "inference_trunk",
    "prepare_for_inference",
]


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every :class:`FrozenBatchNorm2d` that is the ``norm`` of a detectron2 :class:`Conv2d`
    into that convolution, in place: ``W' = W * s``, ``b' = b * s + t`` with
    ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``; the norm is removed.

    The same function of the input up to float rounding, one pass over each feature map less.
    Inference only: the folded weights are no longer the checkpoint's (a frozen norm has nothing
    to train, but ``state_dict()`` loses its buffers). Trainable norms (GroupNorm, BatchNorm) are
    left alone.

    Returns:
        The number of norms folded.
    """
    folded = 0
    for conv in module.modules():
        if not (isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d)):
            continue
        bn = conv.norm
        with torch.no_grad():
            scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
            shift = bn.bias - bn.running_mean * scale
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        conv.norm = None
        folded += 1
    return folded


def _to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) tensor in any dtype and memory format -> float32, NCHW-contiguous. A
    channels-last map is transposed as the (B, H*W, C) matrix it is in memory, in its own dtype
    (half the bytes of float32 for bf16): PyTorch's 2-D transpose copy is about twice as fast
    as its generic 4-D one."""
    if x.is_contiguous():
        return x.float()
    if x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        nchw = x.permute(0, 2, 3, 1).reshape(b, h * w, c).transpose(1, 2).contiguous()
        return nchw.float().reshape(b, c, h, w)
    return x.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def _cast_tree(x, fn):
    """``fn`` applied to every floating-point tensor of a (nested) list / tuple / dict; other
    values unchanged."""
    if isinstance(x, torch.Tensor):
        return fn(x) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_tree(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: _cast_tree(v, fn) for k, v in x.items()}
    return x


def inference_trunk(model: nn.Module) -> list[nn.Module]:
    """The convolutional trunk of a detectron2 detector that the fast path converts: the backbone
    (ResNet + non-local blocks + FPN) and, when there is one, the RPN head. Proposal generation,
    ROI heads and post-processing stay float32: with few proposals they are cheap, and
    torchvision's CPU ROIAlign and NMS have no bf16 kernels."""
    trunk = [model.backbone]
    rpn_head = getattr(getattr(model, "proposal_generator", None), "rpn_head", None)
    if rpn_head is not None:
        trunk.append(rpn_head)
    return trunk


def convert_trunk(model: nn.Module, dtype: torch.dtype = torch.bfloat16, *,
                  channels_last: bool = True) -> list:
    """Make the :func:`inference_trunk` of a detectron2 R-CNN compute in ``dtype`` (and NHWC
    memory), in place, with float32 wherever the rest of the model reads its outputs.

    Parameters and buffers of the trunk are converted; forward hooks move the tensors across its
    boundary. The image enters the backbone in ``dtype`` / NHWC. The feature maps stay so between
    the backbone and the RPN head (a float32 NCHW copy of every FPN level and back would cost
    about as much as the RPN head itself). The RPN head returns its objectness logits and box
    deltas as float32, so proposals are decoded, ranked and suppressed in float32; every
    :class:`~detectron2.modeling.poolers.ROIPooler` of the ROI heads receives the feature maps as
    float32 NCHW (torchvision's ROIAlign), so box features, scores and boxes are float32. Unlike
    ``torch.autocast`` over the whole detector (which fails on the CPU: ROIAlign has no bf16
    kernel, NMS refuses bf16 scores with float32 boxes) this leaves no region to close.

    Args:
        model: a :class:`~detectron2.modeling.GeneralizedRCNN` in eval mode (FPN or C4).
        dtype: compute dtype of the trunk (``torch.bfloat16`` or ``torch.float32``).
        channels_last: NHWC memory for the trunk's 4-D parameters and feature maps.

    Returns:
        The hook handles (``.remove()`` drops the casts, not the conversion).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    trunk = inference_trunk(model)
    for module in trunk:
        module.to(dtype=dtype)
        if channels_last:
            module.to(memory_format=torch.channels_last)

    def to_trunk(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=dtype, memory_format=fmt) if x.dim() == 4 else x.to(dtype)

    handles = [m.register_forward_pre_hook(lambda mod, args: _cast_tree(args, to_trunk))
               for m in trunk]
    if len(trunk) > 1:  # RPN head outputs: float32, memory format kept (RPN permutes to NHWC)
        handles.append(trunk[1].register_forward_hook(
            lambda mod, args, out: _cast_tree(out, lambda t: t.float())))
    for m in model.roi_heads.modules():
        if isinstance(m, ROIPooler):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args: (_cast_tree(args[0], _to_float_nchw), *args[1:])))
    return handles


def prepare_for_inference(model: nn.Module, cfg) -> dict:
    """Apply the fast path of ``cfg.MODEL.INFERENCE`` to a loaded detector in eval mode, in place.

    ``FOLD_FROZEN_BN``: :func:`fold_frozen_batchnorm` over the whole model. ``BF16`` (only where
    :func:`common.amp.native_bf16` holds for ``cfg.MODEL.DEVICE``) and ``CHANNELS_LAST``:
    :func:`convert_trunk`. With every switch off the model is untouched.

    Returns:
        What was applied: ``{"bf16": bool, "channels_last": bool, "folded_norms": int}``.
    """
    opts = cfg.MODEL.INFERENCE
    folded = fold_frozen_batchnorm(model) if opts.FOLD_FROZEN_BN else 0
    bf16 = autocast_dtype(cfg.MODEL.DEVICE, bool(opts.BF16)) is not None
    channels_last = bool(opts.CHANNELS_LAST)
    if bf16 or channels_last:
        convert_trunk(model, torch.bfloat16 if bf16 else torch.float32,
                      channels_last=channels_last)
    return {"bf16": bf16, "channels_last": channels_last, "folded_norms": folded}


def build_default_predictor(cfg, *, trust_pickle: bool = False) -> DefaultPredictor:
    """detectron2's :class:`DefaultPredictor` for ``cfg`` with ``MODEL.WEIGHTS`` loaded as data
    (:func:`~mass_det.engine.trainer.load_mass_weights`): a ``.pth`` through
    ``torch.load(weights_only=True)``, a ``.pkl`` only from the model zoo or with ``trust_pickle``,
    and every parameter set by the file. A refused, damaged, foreign or incomplete file raises
    :class:`InputError` naming it. The loaded model then gets the fast path of
    ``cfg.MODEL.INFERENCE`` (:func:`prepare_for_inference`; what was applied is in the
    predictor's ``fast_path``)."""
    weights = str(cfg.MODEL.WEIGHTS)
    if not weights:
        raise InputError(None, "no weights given: the mass detector would predict with random ones")
    empty = cfg.clone()
    empty.defrost()
    empty.MODEL.WEIGHTS = ""  # DefaultPredictor builds the model only; the weights are loaded below
    predictor = DefaultPredictor(empty)
    try:
        load_mass_weights(predictor.model, weights, trust_pickle=trust_pickle)
    except InputError:
        raise
    except Exception as e:
        raise InputError(weights, f"not a readable checkpoint ({type(e).__name__}: {e})") from None
    predictor.cfg = cfg.clone()
    predictor.fast_path = prepare_for_inference(predictor.model, cfg)
    return predictor


class MassPredictor:
    """``MassPredictor(predictor)(image)`` -> (boxes, scores) of one pre-processed mammogram.

    Built from parts (any ``predictor`` that maps an (H, W, 3) uint8 array to ``{"instances":
    Instances}`` with ``pred_boxes`` and ``scores`` in that array's frame, e.g. a
    :class:`DefaultPredictor`) or from a config with :meth:`from_config`.
    """

    def __init__(self, predictor, *, image_format: str = "BGR", cfg=None):
        """
        Args:
            predictor: callable (H, W, 3) uint8 -> ``{"instances": Instances}``.
            image_format: channel order ``predictor`` takes ("BGR" | "RGB"; grey levels are equal in
                both, see :func:`~mass_det.data.transforms.gray_to_model_input`).
            cfg: the detectron2 config the predictor was built from (kept for the caller; frozen).
        """
        self.predictor = predictor
        self.image_format = image_format
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg, weights: str | None = None, *, device: str | None = None,
                    trust_pickle: bool = False) -> MassPredictor:
        """The predictor of a detectron2 config (``mass_det.config.get_mass_det_cfg``).

        Args:
            cfg: the config (not modified).
            weights: checkpoint path or model-zoo URL; None = ``cfg.MODEL.WEIGHTS``.
            device: "cpu", "cuda", ... (None = ``cfg.MODEL.DEVICE``); CUDA asked for but absent
                falls back to the CPU (:func:`~mass_det.config.resolve_device`).
            trust_pickle: accept ``.pkl`` (pickle) weights from outside detectron2's model zoo.

        Raises:
            FileNotFoundError: the weights file is missing or cannot be downloaded
                (:class:`~mass_det.engine.trainer.WeightsNotFoundError`, one line).
            InputError: the weights are refused, unreadable, or leave parameters unset (one line).
        """
        cfg = cfg.clone()
        cfg.defrost()
        if weights is not None:
            cfg.MODEL.WEIGHTS = str(weights)
        # a missing file or a failed download: one line, before anything else is built or logged
        resolve_weights_file(str(cfg.MODEL.WEIGHTS))
        if device is not None:
            cfg.MODEL.DEVICE = str(device)
        resolve_device(cfg)
        cfg.freeze()
        # DefaultPredictor takes BGR and converts when INPUT.FORMAT is RGB: BGR is always right here
        return cls(build_default_predictor(cfg, trust_pickle=trust_pickle), image_format="BGR",
                   cfg=cfg)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect masses in one pre-processed mammogram.

        Args:
            image: uint8 (H, W), the output of :func:`common.preprocess.preprocess` (in whatever
                frame it returned: mirrored when it normalised laterality).

        Returns:
            (boxes, scores): boxes (N, 4) float32 XYXY in the pixels of ``image`` (top-left origin,
            x = column), scores (N,) float32 in [0, 1], in the order of the model's output
            (decreasing score).
        """
        rgb = gray_to_model_input(image, self.image_format)
        with torch.inference_mode():
            out = self.predictor(rgb)["instances"].to("cpu")
        boxes = out.pred_boxes.tensor.numpy().astype(np.float32, copy=False).reshape(-1, 4)
        return boxes, out.scores.numpy().astype(np.float32, copy=False)
