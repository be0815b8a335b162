"""The predictor's fast path (``MODEL.INFERENCE``): folded FrozenBN, channels-last, bf16 trunk.

A tiny model (the CPU recipe's ResNet-18 GN + FPN + non-local + focal-loss box head on 128-px
inputs, random weights) is compared with itself run as built (float32 eager): switched off the fast
path changes nothing, float32 channels-last with folded norms agrees to float rounding, the bf16
trunk to bf16's precision; and the predictor built from a config applies it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.layers import Conv2d, FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, pairwise_iou  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from common.amp import native_bf16  # noqa: E402
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.inference import (  # noqa: E402
    MassPredictor,
    fold_frozen_batchnorm,
    prepare_for_inference,
)

CONFIG_DIR = Path(mass_det.__file__).parent / "configs"
TINY = CONFIG_DIR / "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml"
OFF = ["MODEL.INFERENCE.BF16", "False", "MODEL.INFERENCE.CHANNELS_LAST", "False",
       "MODEL.INFERENCE.FOLD_FROZEN_BN", "False"]
# Tolerances, measured on this model with margin: float32 re-association (folding, NHWC kernels)
# and bf16 (8 significant bits) in the backbone and RPN head.
FP32_TOL = {"feature_rel": 1e-4, "objectness": 1e-4, "box_score": 1e-5, "box_px": 1e-3}
BF16_TOL = {"feature_rel": 4e-2, "objectness": 1e-2, "box_score": 1e-2, "box_px": 5e-2}


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    torch.manual_seed(0)


def _cfg(*opts, norm: str = "GN"):
    return get_mass_det_cfg(str(TINY), [
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        "MODEL.RESNETS.NORM", norm, *opts])


def _model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():  # FrozenBN as loaded from ImageNet weights, not the identity
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        # the non-local block's zero-initialised output norm would hide it
        for m in model.modules():
            if type(m).__name__ == "NonLocalBlock2D":
                m.out_norm.weight.normal_(0, 1, generator=g)
    return model


def _inputs(h: int = 160, w: int = 128):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return [{"image": image, "height": h, "width": w}]


def _raw(ref, fast, inputs) -> dict:
    """Largest differences of the raw outputs (features, RPN logits, box probabilities and
    boxes on the reference's proposals) of two models with the same weights."""
    with torch.no_grad():
        images = ref.preprocess_image(inputs)
        f_ref, f_fast = ref.backbone(images.tensor), fast.backbone(images.tensor)
        assert all(f_fast[k].shape == f_ref[k].shape for k in f_ref)
        rel = max(((f_fast[k].float() - f_ref[k]).abs().max() / f_ref[k].abs().max()).item()
                  for k in f_ref)
        names = ref.proposal_generator.in_features
        o_ref, _ = ref.proposal_generator.rpn_head([f_ref[k] for k in names])
        o_fast, _ = fast.proposal_generator.rpn_head([f_fast[k] for k in names])
        assert all(o.dtype == torch.float32 for o in o_fast)
        proposals, _ = ref.proposal_generator(images, f_ref, None)
        out = []
        for model, feats in ((ref, f_ref), (fast, f_fast)):
            heads = model.roi_heads
            x = heads.box_pooler([feats[f] for f in heads.box_in_features],
                                 [p.proposal_boxes for p in proposals])
            pred = heads.box_predictor(heads.box_head(x))
            out.append((heads.box_predictor.predict_probs(pred, proposals)[0],
                        heads.box_predictor.predict_boxes(pred, proposals)[0]))
    assert out[1][0].dtype == torch.float32 and len(proposals[0]) > 0
    return {"feature_rel": rel,
            "objectness": max((a - b).abs().max().item() for a, b in zip(o_ref, o_fast)),
            "box_score": (out[1][0] - out[0][0]).abs().max().item(),
            "box_px": (out[1][1] - out[0][1]).abs().max().item()}


def test_inference_keys_parse_with_the_fast_path_on_by_default():
    cfg = get_mass_det_cfg(str(CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL.yaml"))
    assert cfg.MODEL.INFERENCE.BF16 and cfg.MODEL.INFERENCE.CHANNELS_LAST
    assert cfg.MODEL.INFERENCE.FOLD_FROZEN_BN
    off = get_mass_det_cfg(str(TINY), OFF)
    assert not (off.MODEL.INFERENCE.BF16 or off.MODEL.INFERENCE.CHANNELS_LAST
                or off.MODEL.INFERENCE.FOLD_FROZEN_BN)
    with pytest.raises((KeyError, AssertionError), match="BF_16"):  # a typo is not a new key
        get_mass_det_cfg(str(TINY), ["MODEL.INFERENCE.BF_16", "False"])


def test_fold_frozen_batchnorm_is_the_same_function():
    g = torch.Generator().manual_seed(0)
    norm = FrozenBatchNorm2d(8)
    norm.weight.uniform_(0.5, 1.5, generator=g)
    norm.bias.normal_(0, 1, generator=g)
    norm.running_mean.normal_(0, 1, generator=g)
    norm.running_var.uniform_(0.5, 2, generator=g)
    conv = Conv2d(4, 8, 3, padding=1, bias=False, norm=norm, activation=torch.relu)
    x = torch.randn(2, 4, 9, 7, generator=g)
    with torch.no_grad():
        before = conv(x)
        assert fold_frozen_batchnorm(conv) == 1
        after = conv(x)
    assert conv.norm is None and conv.bias is not None
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert fold_frozen_batchnorm(conv) == 0  # nothing left to fold


def test_switched_off_gives_exactly_the_float32_eager_outputs():
    cfg = _cfg(*OFF, norm="FrozenBN")
    ref, model = _model(cfg), _model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_for_inference(model, cfg) == {"bf16": False, "channels_last": False,
                                                 "folded_norms": 0}
    assert not model.backbone._forward_pre_hooks and not model.backbone._forward_hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        a, b = ref(_inputs())[0]["instances"], model(_inputs())[0]["instances"]
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores)


def test_float32_channels_last_with_folded_norms_matches_to_rounding():
    cfg = _cfg("MODEL.INFERENCE.BF16", "False", norm="FrozenBN")
    ref, fast = _model(cfg), _model(cfg)
    applied = prepare_for_inference(fast, cfg)
    assert applied["channels_last"] and not applied["bf16"]
    assert applied["folded_norms"] == 20  # ResNet-18: stem, 8 x 2 block convs, 3 shortcuts
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())
    assert fast.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    diff = _raw(ref, fast, _inputs())
    assert all(diff[k] <= tol for k, tol in FP32_TOL.items()), diff
    with torch.no_grad():  # whole detector: same detections in the same order
        a, b = ref(_inputs())[0]["instances"], fast(_inputs())[0]["instances"]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=FP32_TOL["box_score"])
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=0,
                               atol=FP32_TOL["box_px"])


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bfloat16")
@pytest.mark.parametrize("norm", ["GN", "FrozenBN"])
def test_bf16_trunk_matches_float32_within_bf16_precision(norm):
    cfg = _cfg(norm=norm)
    ref, fast = _model(cfg), _model(cfg)
    applied = prepare_for_inference(fast, cfg)
    assert applied["bf16"] and applied["channels_last"]
    assert fast.backbone.bottom_up.res5[0].conv1.weight.dtype == torch.bfloat16
    assert fast.roi_heads.box_predictor.cls_score.weight.dtype == torch.float32
    diff = _raw(ref, fast, _inputs())
    assert all(diff[k] <= tol for k, tol in BF16_TOL.items()), diff
    with torch.no_grad():
        out = fast(_inputs())[0]["instances"]
    assert out.scores.dtype == torch.float32 and out.pred_boxes.tensor.dtype == torch.float32


def test_predictor_from_config_applies_the_fast_path(tmp_path):
    cfg = _cfg()
    weights = tmp_path / "model.pth"
    torch.save({"model": _model(cfg).state_dict()}, weights)
    image = np.random.default_rng(0).integers(0, 256, (200, 160), dtype=np.uint8)
    fast = MassPredictor.from_config(cfg, str(weights))
    off = MassPredictor.from_config(get_mass_det_cfg(str(TINY), [
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        *OFF]), str(weights))
    assert fast.predictor.fast_path == {"bf16": native_bf16("cpu"), "channels_last": True,
                                        "folded_norms": 0}  # GN: nothing to fold
    assert off.predictor.fast_path == {"bf16": False, "channels_last": False, "folded_norms": 0}
    (boxes, scores), (boxes_off, scores_off) = fast(image), off(image)
    assert boxes.dtype == scores.dtype == np.float32 and boxes.shape == (len(scores), 4)
    assert len(scores_off) > 0 and ((scores >= 0) & (scores <= 1)).all()
    # the float32 model's best detection is found again, with nearly its score (near-ties among
    # random weights' scores may reorder the list, so it is looked up by overlap)
    iou = pairwise_iou(Boxes(torch.from_numpy(boxes_off[:1])), Boxes(torch.from_numpy(boxes)))[0]
    j = int(iou.argmax())
    assert iou[j] > 0.95 and abs(scores[j] - scores_off[0]) <= BF16_TOL["box_score"]
