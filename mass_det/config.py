"""Configuration keys of the mass detector, added to detectron2's defaults as new nodes."""

from __future__ import annotations

from collections.abc import Sequence

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from common.device import select_device
from common.errors import yaml_error


def add_mass_det_config(cfg: CN) -> CN:
    """Add the mass detector's nodes to a detectron2 config (call before ``merge_from_file``).

    New nodes: ``MODEL.NONLOCAL``, ``MODEL.FOCAL_LOSS``, ``MODEL.INFERENCE``, ``SOLVER.OPTIMIZER``,
    ``INPUT.MAMMO``, ``TEST.FROC``, ``DATASETS.CANONICAL``. Defaults leave detectron2's models
    unchanged (no non-local blocks, softmax / binary cross-entropy); the YAMLs under
    ``mass_det/configs`` switch them on. ``MODEL.INFERENCE`` only changes how the predictor runs
    the built model (bf16, channels-last, folded FrozenBN), never its weights.
    """
    _C = cfg

    # Non-local blocks (Wang et al. 2018, embedded dot product) in the late stage(s) of the ResNet;
    # read by build_nonlocal_resnet_backbone / build_nonlocal_resnet_fpn_backbone.
    _C.MODEL.NONLOCAL = CN()
    _C.MODEL.NONLOCAL.ENABLED = False
    # Stages that get blocks; the paper keeps them in the late stage to limit the extra cost.
    _C.MODEL.NONLOCAL.STAGES = ["res5"]
    # Blocks per stage, placed after the last NUM_BLOCKS residual blocks of the stage.
    _C.MODEL.NONLOCAL.NUM_BLOCKS = 1
    # Width of theta/phi/g as a fraction of the stage width (Wang et al.: 1/2).
    _C.MODEL.NONLOCAL.INTER_CHANNELS = 0.5
    # 2x2 max-pool on phi and g: the affinity matrix shrinks 4x, the output stays full resolution.
    _C.MODEL.NONLOCAL.SUBSAMPLE = True
    # Norm after the output projection; its gamma starts at 0 (block = identity) and must be trainable,
    # so FrozenBN is refused. GN does not depend on the (small) detection batch size.
    _C.MODEL.NONLOCAL.NORM = "GN"

    # Sigmoid focal loss (paper §2.1.3) in the Fast R-CNN box classifier (FocalLossROIHeads) and,
    # optionally, in the RPN objectness (FocalLossRPN). Each switch needs its module named in the
    # YAML (ROI_HEADS.NAME / PROPOSAL_GENERATOR.NAME); MassDetTrainer refuses a switch they would ignore.
    _C.MODEL.FOCAL_LOSS = CN()
    # Box classifier. False keeps softmax cross-entropy even under FocalLossROIHeads (for ablations).
    _C.MODEL.FOCAL_LOSS.ENABLED = False
    # RPN objectness: focal loss on the sampled anchors instead of binary cross-entropy, normalised
    # like detectron2's RPN loss (RPN.BATCH_SIZE_PER_IMAGE x images). False keeps BCE even under
    # FocalLossRPN.
    _C.MODEL.FOCAL_LOSS.RPN = False
    _C.MODEL.FOCAL_LOSS.GAMMA = 2.0  # focusing parameter of eq. (1); 0 = sigmoid cross-entropy
    _C.MODEL.FOCAL_LOSS.ALPHA = 0.25  # weight of positives; -1 disables class weighting
    # Divisor of the box classifier's summed focal loss: "sampled" = all sampled RoIs
    # (ROI_HEADS.BATCH_SIZE_PER_IMAGE per image; detectron2's habit, same scale as its cross-entropy)
    # or "foreground" = foreground RoIs in the batch, at least 1 (RetinaNet's habit; with
    # ROI_HEADS.POSITIVE_FRACTION 0.25 usually 4x the "sampled" loss or more).
    _C.MODEL.FOCAL_LOSS.BOX_NORMALIZER = "sampled"

    # Optimizer; SOLVER.BASE_LR, WEIGHT_DECAY, CLIP_GRADIENTS and the LR schedule still apply.
    _C.SOLVER.OPTIMIZER = CN()
    _C.SOLVER.OPTIMIZER.NAME = "ADAM"  # "ADAM" (paper §4.1.1) or "SGD" (uses SOLVER.MOMENTUM/NESTEROV)
    _C.SOLVER.OPTIMIZER.BETAS = (0.9, 0.999)  # Adam only
    _C.SOLVER.OPTIMIZER.EPS = 1e-8  # Adam only

    # Mammogram input: every image goes through common.preprocess (window to 8 bits, breast mask,
    # artifact removal) and is replicated to 3 channels for the ImageNet-shaped stem.
    _C.INPUT.MAMMO = CN()
    _C.INPUT.MAMMO.REMOVE_ARTIFACTS = True  # passed to common.preprocess
    # Flip right breasts to face the same way; boxes are flipped with the image and predictions are
    # mapped back, so outputs stay in the original frame.
    _C.INPUT.MAMMO.NORMALIZE_LATERALITY = False
    _C.INPUT.MAMMO.CACHE_SIZE = 32  # pre-processed images kept in memory per data-loader worker
    _C.INPUT.MAMMO.CACHE_DIR = ""  # optional on-disk cache of pre-processed uint8 images
    # Training augmentation (paper §4.1.1: horizontal flip, translation and scaling). Scaling: the
    # short edge is drawn from INPUT.MIN_SIZE_TRAIN, and RandomExtent zooms by SCALE_RANGE.
    _C.INPUT.MAMMO.HFLIP_PROB = 0.5
    _C.INPUT.MAMMO.EXTENT_PROB = 0.5  # probability of the translation/zoom below
    _C.INPUT.MAMMO.SCALE_RANGE = (0.85, 1.15)  # extent size / image size (<1 zooms in, >1 pads)
    # RandomExtent shifts the centre by shift_range * size * U(-0.5, 0.5): (0.1, 0.1) moves it by up to
    # 5 % of the width / height.
    _C.INPUT.MAMMO.SHIFT_RANGE = (0.1, 0.1)
    # Training on square crops of the resized image (MassCrop): CROP_SIZE pixels a side, 0 = whole
    # images. With probability CROP_POSITIVE_PROB a crop holds a randomly chosen mass whole; otherwise it
    # is centred on breast tissue anywhere. Small crops let one batch hold more images, and so more
    # masses, for the same compute; prediction still sees the whole image.
    _C.INPUT.MAMMO.CROP_SIZE = 0
    _C.INPUT.MAMMO.CROP_POSITIVE_PROB = 0.5

    # Prediction fast path of mass_det.inference.MassPredictor (prepare_for_inference); training
    # and detectron2's evaluator run the model as built. Off, all three give the float32 eager
    # outputs bit for bit. Measured by `python bench/mass_detection.py --speed` (README).
    _C.MODEL.INFERENCE = CN()
    # Backbone (ResNet, non-local blocks, FPN) and RPN head in bfloat16 where the device computes it
    # natively (common.amp.native_bf16: CUDA with bf16, CPUs with AVX512-BF16 or AMX; float32
    # elsewhere). Their outputs return as float32, so anchors, proposals, ROI heads, scores and boxes
    # stay float32. Scores move by about 1e-2 (bf16 keeps 8 significant bits).
    _C.MODEL.INFERENCE.BF16 = True
    # Channels-last (NHWC) memory for the same modules: oneDNN / cuDNN convolutions without layout
    # reorders around every call.
    _C.MODEL.INFERENCE.CHANNELS_LAST = True
    # Fold each FrozenBN (the ImageNet ResNet's) into the convolution before it: one pass over the
    # feature map less per layer, same result up to float rounding; GroupNorm is left as it is.
    _C.MODEL.INFERENCE.FOLD_FROZEN_BN = True

    # FROC / AP evaluation through common.metrics.evaluate_boxes.
    _C.TEST.FROC = CN()
    _C.TEST.FROC.FPS = (1, 2, 5, 10)  # false positives per image at which sensitivity is reported
    _C.TEST.FROC.HIT = "iou"  # hit rule of common.metrics ("iou", "center", "iop")
    _C.TEST.FROC.IOU_THRESH = 0.5

    # Canonical dataset folders registered in setup() as <prefix>_{mass,calc}_{train,val,test,all}
    # (mass_det.data.register.register_canonical; "all" = every image whatever its split, for a source
    # used entirely for training). Relative paths are relative to the working directory; a missing
    # folder is an error only when one of its datasets is used.
    _C.DATASETS.CANONICAL = CN()
    _C.DATASETS.CANONICAL.ROOTS = ["synthetic=data/synthetic"]  # "prefix=path" entries
    return cfg


def merge_yaml_file(cfg, config_file) -> None:
    """``cfg.merge_from_file`` with PyYAML's safe loader only.

    detectron2's ``CfgNode.merge_from_file`` falls back to ``yaml.unsafe_load`` by default, so a
    ``!!python/object/apply:...`` tag in a config (of a model bundle, say) would run code. Here such
    a tag is an :class:`InputError` naming the file; ``_BASE_`` files are read the same way.
    """
    try:
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    except yaml.YAMLError as e:
        raise yaml_error(config_file, e) from None


def get_mass_det_cfg(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """detectron2 defaults + :func:`add_mass_det_config`, then ``config_file`` and ``opts`` merged.

    YAML is read with the safe loader only (:func:`merge_yaml_file`): a Python object tag is an
    :class:`~common.errors.InputError` naming the file, never executed.
    """
    cfg = get_cfg()
    add_mass_det_config(cfg)
    if config_file:
        merge_yaml_file(cfg, config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def resolve_device(cfg: CN) -> CN:
    """Set ``MODEL.DEVICE`` to the device :func:`common.device.select_device` picks for it.

    CUDA asked for but absent falls back to ``cpu`` with a warning; a frozen cfg stays frozen.
    """
    device = str(select_device(cfg.MODEL.DEVICE))
    if device != str(cfg.MODEL.DEVICE):
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        if was_frozen:
            cfg.freeze()
    return cfg


def parse_canonical_roots(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``["prefix=path", ...]`` -> ``[(prefix, path), ...]``.

    Raises ValueError on a malformed entry or a prefix given twice (registration keeps the first
    folder of a name, so the second would be ignored silently).
    """
    out = []
    for entry in entries:
        prefix, sep, path = str(entry).partition("=")
        if not sep or not prefix.strip() or not path.strip():
            raise ValueError(f"DATASETS.CANONICAL.ROOTS entries are 'prefix=path', got {entry!r}")
        if prefix.strip() in dict(out):
            raise ValueError(f"DATASETS.CANONICAL.ROOTS names the prefix {prefix.strip()!r} twice")
        out.append((prefix.strip(), path.strip()))
    return out
