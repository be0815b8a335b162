"""Configuration of the calcification segmentation pipeline (paper §2.2, §4.2).

A plain fvcore :class:`CfgNode` (no detectron2): YAML files may name a parent with ``_BASE_`` (resolved
relative to the child file). Every key has a default here with the reason next to it; ``get_calc_seg_cfg``
returns a fresh copy that is the one entry point used by training, inference, scripts and tests. New keys
are never allowed at merge time, so a typo in a YAML file or in ``--opts`` is an error. YAML is read with
PyYAML's safe loader only: a config is data, a ``!!python/...`` tag is refused (:func:`merge_yaml_file`).
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml
from fvcore.common.config import CfgNode as CN

from common.calcifications import LARGE_MIN_AREA_PX, VESSEL_MIN_ELONGATION, VESSEL_MIN_LENGTH_PX
from common.errors import yaml_error

_C = CN()
_C.VERSION = 1

# ---------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# smp encoder name. "vgg13_bn": each stage is two 3x3 conv + norm + ReLU followed by max-pooling, which
# is the paper's Fig. 4 U-Net; with ENCODER_DEPTH 3 its widths are 64/128/256 + a 512 bottleneck.
_C.MODEL.ENCODER = "vgg13_bn"
_C.MODEL.ENCODER_DEPTH = 3  # paper: 3 downsampling + 3 upsampling stages
_C.MODEL.DECODER_CHANNELS = [256, 128, 64]  # one per decoder stage, so its length equals ENCODER_DEPTH
_C.MODEL.IN_CHANNELS = 1  # the windowed 8-bit grey image
# 2 = background/calcification logits trained with weighted softmax cross-entropy (paper §2.2.2);
# the calcification probability is softmax(...)[:, 1].
_C.MODEL.NUM_CLASSES = 2
_C.MODEL.NORM = "gn"  # "gn" (paper's model), "bn" or "ln" (= GroupNorm(1, C)), the Table 3 variants
_C.MODEL.GN_GROUPS = 32  # upper bound; each layer uses the largest divisor of its channels <= this
_C.MODEL.WEIGHTS = ""  # optional checkpoint (local path) to initialise from; no pretrained downloads

# ---------------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.ROOT = ""  # canonical dataset folder (datasets/canonical.py)
_C.DATA.CACHE_DIR = ""  # pre-processed images + patch index; "" -> <OUTPUT_DIR>/cache
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.VAL_SPLIT = "val"
_C.DATA.TEST_SPLIT = "test"
_C.DATA.REMOVE_ARTIFACTS = True  # paper §2.2.1: vertical artifact lines look like calcifications
_C.DATA.NUM_WORKERS = 2

# ---------------------------------------------------------------------------------------------------
# Label processing (paper §4.2.1): one definition for the training target and the IoP ground truth
# (common.calcifications). Areas in pixels of the original image unless in mm², lengths in pixels.
_C.LABELS = CN()
# Components smaller than this physical area are grown (disc growth) up to it; the image's pixel
# spacing converts it to pixels. 6.5 mm² = the paper's 900 px at ~85 µm pixels (3518x2800 images).
# 0 = use MIN_AREA (pixels) for every image.
_C.LABELS.MIN_AREA_MM2 = 6.5
_C.LABELS.MIN_AREA = 900  # pixels; used for images without a known pixel spacing
# A component is a "vessel" when its skeleton is at least VESSEL_MIN_LENGTH long and it is thin:
# skeleton_length**2 / area (length over mean width) >= VESSEL_MIN_ELONGATION.
# (defaults shared with common.calcifications.classify_component, which converters use)
_C.LABELS.VESSEL_MIN_LENGTH = float(VESSEL_MIN_LENGTH_PX)
_C.LABELS.VESSEL_MIN_ELONGATION = float(VESSEL_MIN_ELONGATION)
# Otherwise a component this large is a "large" region (a cluster outlined as one area); else "dot".
_C.LABELS.LARGE_MIN_AREA = int(LARGE_MIN_AREA_PX)
# Use calc_type of calcifications.json when one of its points lies in the component (the annotation is
# authoritative); the shape classifier above decides only components without such a point.
_C.LABELS.PREFER_CANONICAL_TYPE = True
_C.LABELS.EXCLUDE_TYPES = ["vessel", "large"]  # patches touching these are left out of train/val

# ---------------------------------------------------------------------------------------------------
_C.PATCH = CN()
_C.PATCH.SIZE = 512  # paper §4.2.1
_C.PATCH.STRIDE = 256

# ---------------------------------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.ENABLED = True
_C.AUG.HFLIP_PROB = 0.5
_C.AUG.VFLIP_PROB = 0.5
_C.AUG.AFFINE_PROB = 0.5
_C.AUG.SCALE = [0.9, 1.1]  # small zoom
_C.AUG.ROTATE = 10.0  # degrees, +-
_C.AUG.TRANSLATE = 0.05  # fraction of the patch, +-
_C.AUG.BRIGHTNESS = 0.1
_C.AUG.CONTRAST = 0.1
_C.AUG.INTENSITY_PROB = 0.5
_C.AUG.GAMMA = [90, 110]  # percent

# ---------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.BATCH_SIZE = 8  # per process; half positive, half negative patches (paper §2.2.2)
_C.SOLVER.BASE_LR = 0.01  # paper: Adam, initial learning rate 0.01, decreasing gradually
_C.SOLVER.WEIGHT_DECAY = 0.0
_C.SOLVER.LR_SCHEDULER = "cosine"  # "cosine" | "poly" | "step", stepped once per iteration
_C.SOLVER.POLY_POWER = 0.9
_C.SOLVER.STEPS = [0.6, 0.85]  # "step": fractions of the total iterations where LR *= GAMMA
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.MIN_LR_RATIO = 0.01  # cosine/poly end at BASE_LR * this
_C.SOLVER.EPOCHS = 30
# 0 -> every positive patch once per epoch: ceil(2 * n_pos / BATCH_SIZE) batches (over all processes)
_C.SOLVER.ITERS_PER_EPOCH = 0
# Cross-entropy class weight of calcification pixels (background 1). <= 0: derived from the measured
# positive-pixel fraction f of the balanced batches as (1 - f) / f (both classes weigh the same in an
# average batch), capped at POS_WEIGHT_MAX; the trainer logs f and the weight it used.
_C.SOLVER.POS_WEIGHT = 0.0
_C.SOLVER.POS_WEIGHT_MAX = 100.0
_C.SOLVER.GRAD_CLIP = 0.0  # 0 = off (the gradient norm is logged either way)
# Linear warm-up from BASE_LR * WARMUP_FACTOR over the first WARMUP_ITERS iterations, then the decay:
# Adam at 0.01 from the first step lets the GroupNorm affine parameters and the head diverge.
_C.SOLVER.WARMUP_ITERS = 200
_C.SOLVER.WARMUP_FACTOR = 0.01
# bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX);
# the loss is computed in float32. Measured on the 2-core AVX512-BF16 CPU: 2-3x faster training steps.
_C.SOLVER.AMP = True
_C.SOLVER.CHANNELS_LAST = True  # NHWC convolutions (faster with oneDNN and cuDNN)
_C.SOLVER.TENSORBOARD = True  # event files in OUTPUT_DIR

# ---------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Tile size = the training patch size (PATCH.SIZE): GroupNorm then normalises test tiles over the
# same extent as training patches.
_C.TEST.WINDOW = 512
# Largest step between tiles; they are spread evenly, the last flush with the edge (nnU-Net step
# placement), so every tile lies inside the image. = WINDOW: the fewest tiles, each pixel predicted
# once (twice on the few seams where the image is not a multiple of the window), the paper's test
# stage (§2.2.2: patch predictions put back at their locations). Chosen by measurement: on the
# synthetic quality set (bench/calc_segmentation.py --tiling, 128 px CPU recipe) stride = window
# kept sensitivity at 1 and 10 FP/image within 0.01 of half-window overlap at about 1/3.4 of the
# time; WINDOW / 2 is the training patches' overlap.
_C.TEST.STRIDE = 512
# Where the tiles go over an image with a breast mask (calc_seg.inference.window_positions):
# "frame" = the frame grid's tiles that hold breast (inside the breast, the output of a full-frame
# sliding window); "breast" = the cover with the fewest tiles among the frame grid and bands of
# tiles that follow the breast's outline: 17 and 22 tiles of 512 px instead of 22 and 25 on the two
# full-field images of bench/pipeline.py (25.1 instead of 31.1 s per image on the 2-core CPU). On
# the synthetic quality set (bench/calc_segmentation.py --tiling, 128 px tiles): 352 instead of 399
# tiles, sensitivity 0.9936 instead of 0.9873 at 1 and 10 FP/image; the maps differ where the model
# depends on a tile's position (max |dp| 0.99, 118 components at TEST.THRESHOLD instead of 90).
_C.TEST.PLACEMENT = "breast"
_C.TEST.BATCH_SIZE = 4  # tiles per forward pass; CalcPredictor.predict_probs fills it across images
_C.TEST.BLEND = "mean"  # "mean" or "gaussian" weighting of overlapping windows
# bf16 autocast of the forward pass where the device computes bf16 natively (common.amp.native_bf16;
# elsewhere float32); the blending stays float64. On the 2-core AVX512-BF16 CPU a 512 px tile of the
# paper's U-Net takes 1.17 s instead of 2.52 s (with CHANNELS_LAST; bench/calc_segmentation.py
# --speed). On the quality set (--tiling) the probabilities move by <= 0.050: 122 components at
# TEST.THRESHOLD instead of 118 (outlines move by a pixel here and there: 258 of 10 M pixels) and the
# same sensitivity at 1 and 10 FP/image.
_C.TEST.AMP = True
# NHWC tiles and weights (oneDNN / cuDNN layouts; the values are NCHW's up to summation order,
# <= 7e-4 in probability): 1.57x faster with bf16 and 1.28x in float32 on that CPU.
_C.TEST.CHANNELS_LAST = True
# IoP ground truth of validation and test: "processed" = the training target (small components grown
# to LABELS.MIN_AREA_MM2, common.calcifications), "raw" = the masks as annotated.
_C.TEST.GT_LABELS = "processed"
_C.TEST.THRESHOLD = 0.5  # binarisation of the probability map for components / IoP matching
_C.TEST.IOP_THR = 0.25  # paper §4.2.2
_C.TEST.FPS = [1, 2, 5, 10]  # Table 3
_C.TEST.EVAL_PERIOD = 1  # epochs between validations; the score is recall at 1 FP per image

_C.SEED = 0
_C.OUTPUT_DIR = "output/calc_seg"


def merge_yaml_file(cfg: CN, config_file) -> None:
    """Merge a YAML file (and its ``_BASE_`` chain) into ``cfg`` with PyYAML's safe loader only.

    A ``!!python/...`` tag (which ``yaml.unsafe_load`` would execute) or malformed YAML is an
    :class:`InputError` naming the file.
    """
    try:
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    except yaml.YAMLError as e:
        raise yaml_error(config_file, e) from None


def get_calc_seg_cfg(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Defaults, then ``config_file`` (with ``_BASE_`` chain), then ``KEY VALUE`` pairs, checked.

    Named and called like :func:`mass_det.config.get_mass_det_cfg`; with no argument it is a fresh
    copy of the defaults. YAML is read with the safe loader only (a Python object tag is an
    :class:`~common.errors.InputError` naming the file). The result is not frozen: callers freeze it
    once their own settings are in.
    """
    cfg = _C.clone()
    if config_file:
        merge_yaml_file(cfg, config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    check_cfg(cfg)
    return cfg


def check_cfg(cfg: CN) -> None:
    """Reject inconsistent settings early, with the key that is wrong."""
    if cfg.MODEL.NORM not in ("gn", "bn", "ln"):
        raise ValueError(f"MODEL.NORM must be gn, bn or ln, got {cfg.MODEL.NORM!r}")
    if len(cfg.MODEL.DECODER_CHANNELS) != cfg.MODEL.ENCODER_DEPTH:
        raise ValueError("MODEL.DECODER_CHANNELS needs one entry per encoder stage (ENCODER_DEPTH)")
    if cfg.SOLVER.BATCH_SIZE < 2 or cfg.SOLVER.BATCH_SIZE % 2:
        raise ValueError("SOLVER.BATCH_SIZE must be even (half positive, half negative patches)")
    if cfg.SOLVER.LR_SCHEDULER not in ("cosine", "poly", "step"):
        raise ValueError(f"SOLVER.LR_SCHEDULER must be cosine, poly or step, got {cfg.SOLVER.LR_SCHEDULER!r}")
    if cfg.TEST.GT_LABELS not in ("processed", "raw"):
        raise ValueError(f"TEST.GT_LABELS must be processed or raw, got {cfg.TEST.GT_LABELS!r}")
    if cfg.TEST.BLEND not in ("mean", "gaussian"):
        raise ValueError(f"TEST.BLEND must be mean or gaussian, got {cfg.TEST.BLEND!r}")
    if cfg.TEST.PLACEMENT not in ("frame", "breast"):
        raise ValueError(f"TEST.PLACEMENT must be frame or breast, got {cfg.TEST.PLACEMENT!r}")
    if not 0 < cfg.TEST.STRIDE <= cfg.TEST.WINDOW or not 0 < cfg.PATCH.STRIDE <= cfg.PATCH.SIZE:
        raise ValueError("strides must be in (0, window size]")
