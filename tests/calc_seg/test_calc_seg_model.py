"""calc_seg model and configs: GroupNorm retrofit, norm variants, every YAML parses."""

from pathlib import Path

import pytest
import torch
from torch import nn

from calc_seg.config import get_calc_seg_cfg
from calc_seg.model import (
    build_model,
    build_unet,
    count_batchnorm,
    largest_divisor_at_most,
    load_weights,
    retrofit_groupnorm,
)
from common.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "calc_seg" / "configs"
SMALL = {"encoder": "vgg11_bn", "decoder_channels": (64, 32, 16)}


@pytest.mark.parametrize("norm", ["gn", "bn", "ln"])
def test_norm_variants_shape_and_layers(norm):
    model = build_unet(norm, **SMALL).eval()
    out = model(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 2, 32, 48)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    if norm == "bn":
        assert count_batchnorm(model) > 0 and not gns
    else:
        assert count_batchnorm(model) == 0
        assert "BatchNorm" not in repr(model)
        assert gns and all(m.num_channels % m.num_groups == 0 for m in gns)
        if norm == "ln":
            assert {m.num_groups for m in gns} == {1}
        else:  # the 16-channel decoder block gets 16 groups, the rest 32
            assert {m.num_groups for m in gns} == {16, 32}


def test_default_model_is_papers_unet():
    model = build_unet()
    assert count_batchnorm(model) == 0
    assert model.encoder.out_channels == [64, 128, 256, 512]  # 3 downsampling stages + bottleneck
    assert len(model.decoder.blocks) == 3
    assert model.encoder.features[0].in_channels == 1
    # a skip at every resolution: 512 + 256, 256 + 128, 128 + 64 input channels; no extra centre block
    assert [b.conv1[0].in_channels for b in model.decoder.blocks] == [768, 384, 192]
    assert isinstance(model.decoder.center, nn.Identity)


def test_full_resolution_skip_carries_the_first_conv_block():
    """A forward hook: the last decoder block concatenates the encoder's full-resolution conv block."""
    model = build_unet("gn", **SMALL).eval()
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, out: seen.__setitem__("enc", out))
    model.decoder.blocks[-1].register_forward_hook(
        lambda m, args, kwargs, out: seen.__setitem__("last", (args, kwargs)), with_kwargs=True
    )
    x = torch.rand(1, 1, 32, 48)
    model(x)
    first = seen["enc"][0]
    assert first.shape == (1, 64, 32, 48)  # conv block at full resolution, not the input image
    args, kwargs = seen["last"]
    skip = kwargs.get("skip_connection", args[3] if len(args) > 3 else None)
    assert skip is not None and skip.data_ptr() == first.data_ptr()
    assert model.decoder.blocks[-1].conv1[0].in_channels == 32 + 64


def test_retrofit_copies_affine_and_returns_new_module():
    bn = nn.BatchNorm2d(24)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    gn = retrofit_groupnorm(bn, groups=32)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 24  # largest divisor of 24 <= 32
    assert torch.equal(gn.weight, bn.weight) and torch.equal(gn.bias, bn.bias)
    seq = nn.Sequential(nn.Conv2d(1, 20, 3), nn.BatchNorm2d(20), nn.Sequential(nn.BatchNorm2d(48)))
    out = retrofit_groupnorm(seq, 16)
    assert out is seq and count_batchnorm(seq) == 0
    assert seq[1].num_groups == 10 and seq[2][0].num_groups == 16


def test_largest_divisor():
    assert largest_divisor_at_most(16, 32) == 16
    assert largest_divisor_at_most(96, 32) == 32
    assert largest_divisor_at_most(7, 4) == 1
    assert largest_divisor_at_most(12, 1) == 1


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_parses(path):
    cfg = get_calc_seg_cfg(path)
    assert cfg.MODEL.NORM in ("gn", "bn", "ln")
    assert len(cfg.MODEL.DECODER_CHANNELS) == cfg.MODEL.ENCODER_DEPTH


def test_yaml_norms_and_unknown_keys(tmp_path):
    assert get_calc_seg_cfg(CONFIG_DIR / "unet_bn.yaml").MODEL.NORM == "bn"
    assert get_calc_seg_cfg(CONFIG_DIR / "unet_ln.yaml").MODEL.NORM == "ln"
    quick = get_calc_seg_cfg(CONFIG_DIR / "quick_schedules" / "unet_gn_instant_test.yaml")
    assert quick.MODEL.NORM == "gn" and quick.PATCH.SIZE == 64  # two-level _BASE_ chain
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NROM: gn\n")
    with pytest.raises(KeyError):
        get_calc_seg_cfg(bad)
    with pytest.raises(ValueError):
        get_calc_seg_cfg(None, ["MODEL.NORM", "in"])


def test_weights_missing_and_round_trip(tmp_path):
    cfg = get_calc_seg_cfg()
    cfg.merge_from_list(["MODEL.ENCODER", "vgg11_bn", "MODEL.DECODER_CHANNELS", [64, 32, 16]])
    model = build_model(cfg)
    with pytest.raises(InputError, match="weights file not found"):
        load_weights(model, tmp_path / "nope.pth")
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    other = build_model(cfg)
    load_weights(other, tmp_path / "m.pth")
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.eval()(x), other.eval()(x))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_weights(other, tmp_path / "junk.pth")


def test_every_parameter_gets_a_gradient():
    """No unused layers (DistributedDataParallel requires it): smp's deeper VGG stages are trimmed."""
    model = build_unet("gn", **SMALL)
    model(torch.rand(1, 1, 32, 32)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_no_detectron2_or_mass_det_import():
    import subprocess
    import sys

    code = (
        "import sys, calc_seg.train_net, calc_seg.ablate, calc_seg.engine.trainer, calc_seg.inference;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('detectron2', 'mass_det')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
