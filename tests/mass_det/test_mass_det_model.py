"""Mass detector model: configs, registries, non-local block, weight loading, focal loss (CPU, no data)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from mass_det_testing import training_batch  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.engine.trainer import (  # noqa: E402
    MassDetCheckpointer,
    check_loss_switches,
    check_trainable_init,
    resolve_weights_file,
)
from mass_det.modeling import (  # noqa: E402
    FocalLossFastRCNNOutputLayers,
    NonLocalBlock2D,
    build_nonlocal_resnet_backbone,
)

CONFIG_DIR = Path(mass_det.__file__).parent / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("Base-"))
FULL = CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL.yaml"


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    torch.manual_seed(0)


def _cfg(path=FULL, *opts):
    return get_mass_det_cfg(str(path), ["MODEL.DEVICE", "cpu", *opts])


def test_config_dir_has_the_three_table1_rows_and_instant_test():
    names = {p.name for p in CONFIGS}
    assert {
        "faster_rcnn_R50_C4_vanilla.yaml",
        "faster_rcnn_R50_FPN.yaml",
        "faster_rcnn_R50_FPN_FL_NL.yaml",
        "faster_rcnn_R50_FPN_FL_NL_scratch.yaml",
        "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml",
        "faster_rcnn_R50_FPN_FL_NL_paper_data.yaml",
        "mass_det_instant_test.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_builds_and_runs_on_cpu(path):
    cfg = _cfg(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST < 0.05  # FROC needs low-score boxes
    # ImageNet R-50 (paper §4.1.1) or nothing at all; building the model loads no weights
    assert cfg.MODEL.WEIGHTS in ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    check_trainable_init(cfg)  # no config trains frozen random layers
    check_loss_switches(cfg)  # no config sets a focal-loss switch its modules ignore
    assert cfg.SEED >= 0  # default_setup seeds every run the same way
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 128, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 256, "width": 192}])
    inst = out[0]["instances"]
    assert inst.image_size == (256, 192)  # rescaled to the requested (original) size


def test_base_defaults_follow_the_paper():
    cfg = _cfg(CONFIG_DIR / "faster_rcnn_R50_FPN.yaml")
    assert cfg.INPUT.MIN_SIZE_TEST == 1200
    assert 1200 in cfg.INPUT.MIN_SIZE_TRAIN
    assert cfg.SOLVER.OPTIMIZER.NAME == "ADAM"
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST <= 100
    assert cfg.MODEL.RESNETS.DEPTH == 50


def test_unknown_key_is_rejected():
    with pytest.raises((KeyError, AssertionError), match="NUM_BLOKS"):
        get_mass_det_cfg(str(FULL), ["MODEL.NONLOCAL.NUM_BLOKS", "2"])


def test_registries_resolve_our_names():
    assert BACKBONE_REGISTRY.get("build_nonlocal_resnet_backbone") is build_nonlocal_resnet_backbone
    assert BACKBONE_REGISTRY.get("build_nonlocal_resnet_fpn_backbone") is not None
    assert ROI_HEADS_REGISTRY.get("FocalLossROIHeads").__name__ == "FocalLossROIHeads"


def test_printout_names_the_modules():
    model = build_model(_cfg())
    text = str(model)
    assert "NonLocalBlock2D" in text
    assert "FPN" in text
    assert "FocalLossFastRCNNOutputLayers" in text
    assert type(model.backbone.bottom_up).__name__ == "NonLocalResNet"
    assert type(model.roi_heads).__name__ == "FocalLossROIHeads"


def test_focal_disabled_falls_back_to_softmax_predictor():
    model = build_model(_cfg(FULL, "MODEL.FOCAL_LOSS.ENABLED", "False"))
    assert type(model.roi_heads.box_predictor).__name__ == "FastRCNNOutputLayers"


@pytest.mark.parametrize("subsample", [True, False])
def test_nonlocal_block_is_identity_at_init_and_learns(subsample):
    block = NonLocalBlock2D(64, subsample=subsample, norm="GN")
    x = torch.randn(2, 64, 9, 7)
    assert torch.equal(block(x), x)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    loss = (block(x) - 2 * x).pow(2).mean()
    loss.backward()
    assert block.out_norm.weight.grad is not None and block.out_norm.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(block(x), x)


def test_nonlocal_block_refuses_frozen_norm():
    with pytest.raises(ValueError, match="trainable"):
        NonLocalBlock2D(64, norm="FrozenBN")


def test_nonlocal_affinity_is_normalised_by_positions():
    """f = theta^T phi / N: a block on a constant map adds W g(u) scaled by <theta, phi>."""
    block = NonLocalBlock2D(32, 16, subsample=False, norm="GN")
    x = torch.randn(1, 32, 4, 5)
    with torch.no_grad():
        theta = block.theta(x).flatten(2)[0]
        phi = block.phi(x).flatten(2)[0]
        g = block.g(x).flatten(2)[0]
        v = (theta.T @ phi / phi.shape[1]) @ g.T  # (N, C')
        expected = block.out(v.T.reshape(1, 16, 4, 5))
        block.out_norm = torch.nn.Identity()
        assert torch.allclose(block(x) - x, expected, atol=1e-5)


def test_nonlocal_subsampled_affinity_is_normalised_by_the_pooled_positions():
    """SUBSAMPLE: True: phi and g are 2x2 max-pooled; f is divided by M, the pooled positions."""
    block = NonLocalBlock2D(32, 16, subsample=True, norm="GN")
    x = torch.randn(1, 32, 5, 6)  # N = 30 positions, M = 3 * 3 = 9 after the pooling (ceil mode)
    with torch.no_grad():
        for conv in (block.theta, block.phi, block.g, block.out):  # outputs of order 1
            conv.weight.normal_(std=0.3)
        theta = block.theta(x).flatten(2)[0]
        phi = torch.nn.functional.max_pool2d(block.phi(x), 2, ceil_mode=True).flatten(2)[0]
        g = torch.nn.functional.max_pool2d(block.g(x), 2, ceil_mode=True).flatten(2)[0]
        assert theta.shape == (16, 30) and phi.shape == g.shape == (16, 9)
        v = (theta.T @ phi / 9) @ g.T  # (N, C'): sum over the M pooled j, divided by M
        expected = block.out(v.T.reshape(1, 16, 5, 6))
        block.out_norm = torch.nn.Identity()
        got = block(x) - x
        assert got.shape == expected.shape
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        # dividing by N instead would scale the output by M / N = 0.3, far outside the tolerance
        assert not torch.allclose(got, expected * 9 / 30, rtol=1e-4, atol=1e-5)


def test_nonlocal_blocks_sit_after_the_last_blocks_without_renaming():
    cfg = _cfg(FULL, "MODEL.NONLOCAL.STAGES", "['res4', 'res5']", "MODEL.NONLOCAL.NUM_BLOCKS", "2")
    backbone = build_nonlocal_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert list(dict(backbone.res5.named_children())) == ["0", "1", "nonlocal1", "2", "nonlocal2"]
    assert [k for k in dict(backbone.res4.named_children()) if k.startswith("nonlocal")] == [
        "nonlocal4",
        "nonlocal5",
    ]


def test_plain_r50_weights_load_into_every_original_block():
    cfg = _cfg(FULL, "MODEL.NONLOCAL.STAGES", "['res4', 'res5']", "MODEL.NONLOCAL.NUM_BLOCKS", "2")
    plain = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    nl = build_nonlocal_resnet_backbone(cfg, ShapeSpec(channels=3))
    result = nl.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".nonlocal" in k for k in result.missing_keys)
    for key, value in plain.state_dict().items():
        assert torch.equal(nl.state_dict()[key], value), key


def test_torchvision_resnet50_file_loads_through_the_checkpointer(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # make values recognisable: default BN init is all ones/zeros
        for p in tv.parameters():
            p.normal_()
        for name, buf in tv.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(tv.state_dict(), path)

    model = build_model(_cfg(FULL, "MODEL.RESNETS.STRIDE_IN_1X1", "False"))
    MassDetCheckpointer(model).load(str(path))
    sd = model.state_dict()
    tv_sd = tv.state_dict()
    pairs = {
        "backbone.bottom_up.stem.conv1.weight": "conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "bn1.running_var",
        "backbone.bottom_up.res2.0.shortcut.weight": "layer1.0.downsample.0.weight",
        "backbone.bottom_up.res4.5.conv2.norm.weight": "layer3.5.bn2.weight",
        "backbone.bottom_up.res5.2.conv3.weight": "layer4.2.conv3.weight",
        "backbone.bottom_up.res5.2.conv3.norm.running_mean": "layer4.2.bn3.running_mean",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], tv_sd[theirs]), ours
    n_original = sum(1 for k in tv_sd if not k.startswith("fc.") and "num_batches" not in k)
    loaded = sum(
        1
        for k in sd
        if k.startswith("backbone.bottom_up.") and ".nonlocal" not in k
    )
    assert loaded == n_original


def test_missing_weights_file_is_one_clear_error(tmp_path):
    # URLs are no longer refused: they download into iopath's cache (tests/test_mass_det_weights.py
    # covers them offline); a local path must exist.
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        resolve_weights_file(str(tmp_path / "nope.pth"))
    assert resolve_weights_file("") == ""  # empty = random init, allowed


def _toy_proposals(gt_classes):
    inst = Instances((32, 32))
    n = len(gt_classes)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * n)
    inst.proposal_boxes = Boxes(boxes)
    inst.gt_boxes = Boxes(boxes.clone())
    inst.gt_classes = torch.tensor(gt_classes)
    return [inst]


def test_focal_predictor_loss_equals_hand_computation():
    predictor = FocalLossFastRCNNOutputLayers(
        ShapeSpec(channels=4),
        box2box_transform=__import__(
            "detectron2.modeling.box_regression", fromlist=["Box2BoxTransform"]
        ).Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=1,
        focal_loss_gamma=2.0,
        focal_loss_alpha=0.25,
    )
    assert predictor.use_sigmoid_ce
    # logits (R=3, K+1=2): first column = mass, second = background (ignored by the loss)
    scores = torch.tensor([[2.0, 5.0], [-1.0, -3.0], [0.5, 0.0]])
    deltas = torch.zeros(3, 4)
    with EventStorage():  # losses() logs classification statistics
        losses = predictor.losses((scores, deltas), _toy_proposals([0, 1, 1]))

    import math

    def sig(z):
        return 1 / (1 + math.exp(-z))

    p0, p1, p2 = sig(2.0), sig(-1.0), sig(0.5)
    fl_pos = -0.25 * (1 - p0) ** 2 * math.log(p0)  # mass: p_t = p
    fl_neg1 = -0.75 * p1**2 * math.log(1 - p1)  # background: p_t = 1 - p
    fl_neg2 = -0.75 * p2**2 * math.log(1 - p2)
    expected = (fl_pos + fl_neg1 + fl_neg2) / 3  # normalised by sampled proposals
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)

    probs = predictor.predict_probs((scores, deltas), _toy_proposals([0, 1, 1]))[0]
    assert torch.allclose(probs[:, 0], torch.sigmoid(scores[:, 0]))


def test_focal_gamma_zero_is_sigmoid_cross_entropy():
    from detectron2.modeling.box_regression import Box2BoxTransform

    kw = dict(box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)), num_classes=1)
    focal = FocalLossFastRCNNOutputLayers(ShapeSpec(channels=4), focal_loss_gamma=0.0,
                                          focal_loss_alpha=-1, **kw)
    scores = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    with EventStorage():
        loss = focal.losses((scores, torch.zeros(2, 4)), _toy_proposals([0, 1]))["loss_cls"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        scores[:, 0], torch.tensor([1.0, 0.0]), reduction="sum"
    ) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_training_step_of_the_full_model_gives_finite_losses():
    cfg = _cfg(CONFIG_DIR / "quick_schedules" / "mass_det_instant_test.yaml")
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(training_batch())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    nl = model.backbone.bottom_up.res5.nonlocal2
    assert nl.out_norm.weight.grad is not None
