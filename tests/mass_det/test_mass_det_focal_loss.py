"""Focal loss switches: RPN objectness (FocalLossRPN) and the box classifier's normaliser (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, build_model  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.proposal_generator import RPN  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from mass_det_testing import training_batch  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.engine.trainer import IgnoredLossSwitchError, check_loss_switches  # noqa: E402
from mass_det.modeling import FocalLossFastRCNNOutputLayers, FocalLossRPN  # noqa: E402

CONFIG_DIR = Path(mass_det.__file__).parent / "configs"
INSTANT = CONFIG_DIR / "quick_schedules" / "mass_det_instant_test.yaml"
FPN_LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    torch.manual_seed(0)


def _cfg(*opts, path=INSTANT):
    return get_mass_det_cfg(str(path), ["MODEL.DEVICE", "cpu", *opts])


def _rpns(*opts):
    """(FocalLossRPN, detectron2 RPN) built from the same config."""
    cfg = _cfg(*opts)
    shape = {k: ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, stride=s) for k, s in FPN_LEVELS.items()}
    return FocalLossRPN(cfg, shape), RPN(cfg, shape), cfg


def _rpn_inputs():
    """Two images, one feature level of 6 anchors: labels 1 object, 0 background, -1 not sampled."""
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 30, 30],
                                   [10, 10, 40, 40], [2, 2, 12, 14], [20, 0, 40, 20]]))]
    logits = [torch.tensor([[2.0, -1.0, 0.3, -3.0, 0.5, 1.5], [-0.5, 0.2, 4.0, -2.0, 1.0, -0.7]])]
    gt_labels = [torch.tensor([1, 0, -1, 0, 1, -1]), torch.tensor([0, 0, -1, -1, 0, 1])]
    deltas = [torch.randn(2, 6, 4) * 0.1]
    gt_boxes = [torch.tensor([[1.0, 1, 11, 11]] * 6), torch.tensor([[19.0, 1, 41, 21]] * 6)]
    return anchors, logits, gt_labels, deltas, gt_boxes


def test_focal_rpn_is_registered_and_named_by_the_paper_configs():
    assert PROPOSAL_GENERATOR_REGISTRY.get("FocalLossRPN") is FocalLossRPN
    cfg = _cfg(path=CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL.yaml")
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FocalLossRPN"
    assert cfg.MODEL.FOCAL_LOSS.RPN is False  # default: BCE objectness, as before the switch


def test_rpn_focal_loss_equals_hand_computation():
    focal, plain, cfg = _rpns("MODEL.FOCAL_LOSS.RPN", "True", "MODEL.FOCAL_LOSS.GAMMA", "2.0",
                              "MODEL.FOCAL_LOSS.ALPHA", "0.25")
    assert focal.focal_loss
    inputs = _rpn_inputs()
    with EventStorage():
        losses = focal.losses(*inputs)
        reference = plain.losses(*inputs)

    def fl(z, y, gamma=2.0, alpha=0.25):
        p = 1 / (1 + math.exp(-z))
        p_t, a_t = (p, alpha) if y == 1 else (1 - p, 1 - alpha)
        return -a_t * (1 - p_t) ** gamma * math.log(p_t)

    logits, labels = inputs[1][0], inputs[2]
    total = sum(
        fl(logits[i, a].item(), labels[i][a].item())
        for i in range(2)
        for a in range(6)
        if labels[i][a] >= 0
    )
    expected = total / (cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE * 2)  # detectron2's RPN normaliser
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(reference["loss_rpn_loc"].item())


def test_rpn_focal_with_gamma_0_and_no_alpha_is_detectron2_bce():
    focal, plain, _ = _rpns("MODEL.FOCAL_LOSS.RPN", "True", "MODEL.FOCAL_LOSS.GAMMA", "0.0",
                            "MODEL.FOCAL_LOSS.ALPHA", "-1.0")
    inputs = _rpn_inputs()
    with EventStorage():
        losses = focal.losses(*inputs)
        reference = plain.losses(*inputs)
    assert losses.keys() == reference.keys()
    for key in reference:
        assert losses[key].item() == pytest.approx(reference[key].item(), rel=1e-6), key


def test_rpn_switch_off_is_detectron2_rpn():
    focal, plain, _ = _rpns("MODEL.FOCAL_LOSS.RPN", "False")
    assert not focal.focal_loss
    inputs = _rpn_inputs()
    with EventStorage():
        losses = focal.losses(*inputs)
        reference = plain.losses(*inputs)
    for key in reference:
        assert torch.equal(losses[key], reference[key]), key
    # same parameters: checkpoints of the plain RPN load unchanged
    assert focal.state_dict().keys() == plain.state_dict().keys()


def test_one_training_step_with_focal_rpn_gives_finite_losses():
    cfg = _cfg("MODEL.FOCAL_LOSS.RPN", "True")
    check_loss_switches(cfg)
    model = build_model(cfg).train()
    assert isinstance(model.proposal_generator, FocalLossRPN) and model.proposal_generator.focal_loss
    with EventStorage():
        losses = model(training_batch())
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= losses.keys()
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = model.proposal_generator.rpn_head.objectness_logits
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_ignored_switches_are_refused():
    plain_fpn = CONFIG_DIR / "faster_rcnn_R50_FPN.yaml"
    with pytest.raises(IgnoredLossSwitchError, match="PROPOSAL_GENERATOR.NAME FocalLossRPN"):
        check_loss_switches(_cfg("MODEL.FOCAL_LOSS.RPN", "True", path=plain_fpn))
    with pytest.raises(IgnoredLossSwitchError, match="ROI_HEADS.NAME FocalLossROIHeads"):
        check_loss_switches(_cfg("MODEL.FOCAL_LOSS.ENABLED", "True", path=plain_fpn))
    check_loss_switches(_cfg(path=plain_fpn))  # both off: nothing to ignore
    check_loss_switches(_cfg("MODEL.FOCAL_LOSS.RPN", "True"))


def _predictor(normalizer):
    return FocalLossFastRCNNOutputLayers(
        ShapeSpec(channels=4),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=1,
        focal_loss_gamma=2.0,
        focal_loss_alpha=0.25,
        focal_loss_normalizer=normalizer,
    )


def _proposals(gt_classes):
    """Two images sharing the sampled RoIs: the loss concatenates them as the ROI heads do."""
    out = []
    for classes in gt_classes:
        inst = Instances((32, 32))
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * len(classes))
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_boxes = Boxes(boxes.clone())
        inst.gt_classes = torch.tensor(classes)
        out.append(inst)
    return out


@pytest.mark.parametrize(
    "gt_classes, ratio",
    [
        ([[0, 1, 1], [1, 1, 0, 1, 1]], 8 / 2),  # 8 sampled RoIs, 2 foreground
        ([[1, 1], [1, 1]], 4 / 1),  # no foreground: "foreground" divides by 1
    ],
)
def test_box_normalizers_differ_by_sampled_over_foreground(gt_classes, ratio):
    n = sum(len(c) for c in gt_classes)
    scores = torch.randn(n, 2)
    deltas = torch.zeros(n, 4)
    with EventStorage():
        sampled = _predictor("sampled").losses((scores, deltas), _proposals(gt_classes))["loss_cls"]
        fg = _predictor("foreground").losses((scores, deltas), _proposals(gt_classes))["loss_cls"]
    assert fg.item() == pytest.approx(sampled.item() * ratio, rel=1e-6)


def test_box_normalizer_default_and_config():
    assert _cfg().MODEL.FOCAL_LOSS.BOX_NORMALIZER == "sampled"  # today's behaviour
    model = build_model(_cfg("MODEL.FOCAL_LOSS.BOX_NORMALIZER", "foreground"))
    assert model.roi_heads.box_predictor.focal_loss_normalizer == "foreground"
    with pytest.raises(ValueError, match="normalizer"):
        _predictor("positives")
