"""The calcification U-Net (paper §2.2.2, Fig. 4) and its normalisation variants (Table 3).

The network is a ``segmentation_models_pytorch.Unet`` with 3 downsampling and 3 upsampling stages and a
skip connection at each of the three resolutions. The default encoder is smp's ``vgg13_bn`` cut after
its fourth conv block: full resolution (64 channels), 1/2 (128), 1/4 (256) and the 1/8 bottleneck (512),
each stage the paper's "two convolution layers, each followed by a normalisation and ReLU", separated by
max-pooling. smp's ``UnetDecoder`` drops the encoder's first feature map (for most encoders it is the
input image) and adds a two-conv centre block for VGG encoders; with a VGG encoder that would lose the
full-resolution skip, which the 1-3 px dots need, and double the bottleneck. :class:`FullSkipUnetDecoder`
is smp's decoder with every encoder feature as a skip and no centre block: decoder block inputs are
512 + 256, 256 + 128 and 128 + 64 channels (paper Fig. 4). Other smp encoders (``MODEL.ENCODER``) keep
smp's own decoder. No pretrained weights are ever downloaded (``encoder_weights=None``).

smp builds every normalisation as ``BatchNorm2d``; :func:`retrofit_groupnorm` then swaps each for a
``GroupNorm`` (the paper's model) the way ``detectron2.layers.FrozenBatchNorm2d.convert_frozen_batchnorm``
converts modules: recursively, returning the new module. The layer-norm variant is the same retrofit with
one group, i.e. ``GroupNorm(1, C)`` normalises each sample over (C, H, W).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import initialization
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from common.errors import InputError, checkpoint_error

NORMS = ("gn", "bn", "ln")


class FullSkipUnetDecoder(UnetDecoder):
    """smp's ``UnetDecoder`` that keeps the encoder's first feature map as a skip connection.

    ``encoder_channels`` are the channels of every encoder feature, full resolution first, e.g.
    (64, 128, 256, 512); block ``i`` upsamples to the resolution of the skip it concatenates. smp's decoder
    treats its first feature as "same resolution as the input, no skip": a duplicate of the
    full-resolution feature is put in that place, so that every real feature becomes a skip.
    """

    def __init__(self, encoder_channels, decoder_channels, use_norm="batchnorm"):
        super().__init__(
            encoder_channels=(0, *encoder_channels),
            decoder_channels=decoder_channels,
            n_blocks=len(decoder_channels),
            use_norm=use_norm,
            add_center_block=False,
        )

    def forward(self, features):
        return super().forward([features[0], *features])


def largest_divisor_at_most(channels: int, groups: int) -> int:
    """The largest ``g <= groups`` that divides ``channels`` (at least 1)."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def retrofit_groupnorm(module: nn.Module, groups: int = 32) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``GroupNorm``; returns the (new) module.

    Each layer gets the largest group count ``<= groups`` that divides its channels (SMP decoders can
    have 16-channel blocks; any width works). The affine weight and bias are copied, ``eps`` is kept,
    running statistics are dropped (GroupNorm normalises with per-sample statistics in train and eval
    alike, so it does not depend on the batch composition). ``groups=1`` gives layer normalisation over
    (C, H, W).

    Args:
        module: any module; a bare ``BatchNorm2d`` is converted and returned.
        groups: upper bound of the number of groups (GN paper default 32).
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    res = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.BatchNorm1d):
        c = module.num_features
        res = nn.GroupNorm(largest_divisor_at_most(c, groups), c, eps=module.eps, affine=True)
        if module.affine:
            with torch.no_grad():
                res.weight.copy_(module.weight)
                res.bias.copy_(module.bias)
        res.to(device=module.weight.device if module.affine else None)
    else:
        for name, child in module.named_children():
            new_child = retrofit_groupnorm(child, groups)
            if new_child is not child:
                module.add_module(name, new_child)
    return res


def count_batchnorm(module: nn.Module) -> int:
    """Number of BatchNorm layers (of any dimension) inside ``module``."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def build_unet(
    norm: str = "gn",
    encoder: str = "vgg13_bn",
    encoder_depth: int = 3,
    decoder_channels: Sequence[int] = (256, 128, 64),
    in_channels: int = 1,
    classes: int = 2,
    groups: int = 32,
) -> nn.Module:
    """Build the U-Net; the defaults are the paper's model.

    Args:
        norm: "gn" (GroupNorm, ``groups`` at most), "bn" (BatchNorm2d) or "ln" (GroupNorm(1, C)).
        encoder: smp encoder name (built without pretrained weights).
        encoder_depth: number of downsampling stages (the decoder has as many upsampling stages).
        decoder_channels: widths of the decoder stages, ``len == encoder_depth``.
        in_channels: image channels (1 for the windowed grey mammogram).
        classes: output channels; 2 = softmax background/calcification logits, 1 = sigmoid logit.

    Returns:
        ``nn.Module`` mapping (N, in_channels, H, W) float to (N, classes, H, W) logits; H and W must be
        multiples of ``2 ** encoder_depth``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if len(decoder_channels) != encoder_depth:
        raise ValueError("decoder_channels needs one entry per encoder stage")
    model = smp.Unet(
        encoder_name=encoder,
        encoder_depth=encoder_depth,
        encoder_weights=None,
        decoder_channels=tuple(int(c) for c in decoder_channels),
        in_channels=in_channels,
        classes=classes,
        activation=None,
    )
    if encoder.startswith("vgg"):
        # smp's VGG encoder keeps all five stages and stops its forward after ``encoder_depth``; the
        # deeper layers would be parameters without gradients (DistributedDataParallel rejects those)
        feats = model.encoder.features
        model.encoder.features = feats[: model.encoder._out_indexes[encoder_depth] + 1]
        # the VGG encoder's first feature is its full-resolution conv block: keep it as a skip
        model.decoder = FullSkipUnetDecoder(model.encoder.out_channels, tuple(decoder_channels))
        initialization.initialize_decoder(model.decoder)
    if norm == "gn":
        model = retrofit_groupnorm(model, groups)
    elif norm == "ln":
        model = retrofit_groupnorm(model, 1)
    return model


def build_model(cfg) -> nn.Module:
    """:func:`build_unet` from ``cfg.MODEL``; loads ``MODEL.WEIGHTS`` when set."""
    m = cfg.MODEL
    model = build_unet(
        norm=m.NORM,
        encoder=m.ENCODER,
        encoder_depth=m.ENCODER_DEPTH,
        decoder_channels=m.DECODER_CHANNELS,
        in_channels=m.IN_CHANNELS,
        classes=m.NUM_CLASSES,
        groups=m.GN_GROUPS,
    )
    if m.WEIGHTS:
        load_weights(model, m.WEIGHTS)
    return model


def _numpy_scalar_globals() -> list:
    """What a pickled numpy number needs (its dtype and the scalar constructor): numbers only, no code.

    Checkpoints written before the trainer stored plain Python numbers can hold numpy floats in their
    metric history; these are allowed so that such files still load with ``weights_only=True``.
    """
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    scalar = getattr(getattr(core, "multiarray", None), "scalar", None)
    return [g for g in (scalar, np.dtype) if g is not None] + [
        type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                                    "?")]


def load_checkpoint(path: str | Path, map_location="cpu"):
    """``torch.load`` of a checkpoint as data: tensors, numbers, strings and plain containers only.

    ``weights_only=True`` refuses any other object, so a crafted pickle (a ``__reduce__`` that runs a
    command) is an error instead of code run. The trainer's checkpoints (model, Adam and LambdaLR
    states, epoch, history, ``cfg.dump()``) are such data.

    Raises:
        common.errors.InputError: missing, damaged or foreign file (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found (give a local checkpoint path)")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()), warnings.catch_warnings():
            # (a foreign pickle's protocol: the refusal below says what matters)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch and pickle raise many types for a foreign file
        raise InputError(path, f"not a readable PyTorch checkpoint ({checkpoint_error(e)})") from None


def state_dict_mismatch(expected: dict, state: dict, limit: int = 3) -> str:
    """One-line summary of how ``state`` differs from a model's ``expected`` state dict ("" if it fits):
    counts of missing, unexpected and differently shaped entries, with a few of their keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and hasattr(state[k], "shape")
                and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")):
        if keys:
            more = ", ..." if len(keys) > limit else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:limit])}{more})")
    return "; ".join(parts)


def load_weights(model: nn.Module, path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by the trainer (``{"model": state_dict, ...}``) or a bare state dict.

    The file is read as data only (:func:`load_checkpoint`, ``torch.load(weights_only=True)``), and it
    must hold exactly the model's parameters: a checkpoint that would leave some of them at their
    random initialisation is refused.

    Raises:
        common.errors.InputError: the file is missing, is not a checkpoint (or holds Python objects), or
            is not a checkpoint of this model (missing / unexpected / differently shaped parameters,
            some of them named).
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(path, "checkpoint holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(path, f"weights do not fit this model config: parameters {mismatch}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise InputError(path, f"weights do not fit this model config: {' '.join(first)}") from None
    return ckpt if isinstance(ckpt, dict) else {"model": state}


def logits_to_prob(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, H, W) calcification probability (sigmoid for C=1, softmax[:,1] else)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
