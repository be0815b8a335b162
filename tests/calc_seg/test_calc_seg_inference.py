"""Sliding-window inference: exact reconstruction with an identity model, breast-only tiling; the
predictor built from a config."""

import numpy as np
import pytest
import torch
from torch import nn

from calc_seg.config import get_calc_seg_cfg
from calc_seg.inference import (
    CalcPredictor,
    _span_steps,
    compute_steps,
    mask_components,
    predict_from_cfg,
    predict_image,
    predict_images,
    window_positions,
)
from calc_seg.model import build_model
from common.amp import autocast_dtype
from common.errors import InputError


class Identity(nn.Module):
    """Returns its input; counts the tiles it sees."""

    def __init__(self):
        super().__init__()
        self.tiles = 0

    def forward(self, x):
        self.tiles += x.shape[0]
        return x


def first_channel(out):
    return out[:, 0]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (h, w)).astype(np.uint8)


def test_compute_steps_even_placement():
    assert compute_steps(512, 512, 256) == [0]
    assert compute_steps(1024, 512, 256) == [0, 256, 512]
    steps = compute_steps(1100, 512, 256)
    assert steps[0] == 0 and steps[-1] == 1100 - 512 and len(steps) == 4
    assert max(np.diff(steps)) <= 256 and max(np.diff(steps)) - min(np.diff(steps)) <= 1
    with pytest.raises(ValueError):
        compute_steps(100, 512, 256)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_identity_reconstructs_whole_image(blend):
    img = _image(150, 130)
    prob = predict_image(Identity(), img, np.ones(img.shape, bool), window=64, stride=40,
                         blend=blend, to_prob=first_channel)
    assert prob.dtype == np.float32 and prob.shape == img.shape
    if blend == "mean":
        assert np.array_equal(prob, img.astype(np.float32) / 255)
    assert np.array_equal(np.round(prob * 255).astype(np.uint8), img)


def _image_with_rectangular_breast():
    img = _image(200, 160, seed=1)
    breast = np.zeros(img.shape, bool)
    breast[20:120, :70] = True
    return img, breast


def test_breast_only_matches_full_frame_inside_breast_and_skips_tiles():
    img, breast = _image_with_rectangular_breast()
    full_model, breast_model = Identity(), Identity()
    full = predict_image(full_model, img, None, window=48, stride=32, to_prob=first_channel)
    part = predict_image(breast_model, img, breast, window=48, stride=32, to_prob=first_channel)
    assert np.array_equal(part[breast], full[breast])
    assert np.array_equal(part[breast], img[breast].astype(np.float32) / 255)
    n_all = len(window_positions(img.shape, 48, 32))
    assert full_model.tiles == n_all
    assert breast_model.tiles == len(window_positions(img.shape, 48, 32, breast)) < n_all
    # a pixel no evaluated tile covers is 0
    assert part[199, 159] == 0
    # no breast at all: nothing is evaluated
    empty = Identity()
    no_breast = np.zeros(img.shape, bool)
    assert not predict_image(empty, img, no_breast, 48, 32, to_prob=first_channel).any()
    assert empty.tiles == 0


def test_skip_background_false_evaluates_every_tile_despite_the_mask():
    img, breast = _image_with_rectangular_breast()
    full, model = Identity(), Identity()
    expect = predict_image(full, img, None, window=48, stride=32, to_prob=first_channel)
    got = predict_image(model, img, breast, window=48, stride=32, to_prob=first_channel,
                        skip_background=False)
    assert model.tiles == full.tiles == len(window_positions(img.shape, 48, 32))
    assert np.array_equal(got, expect)
    assert got[199, 159] == img[199, 159] / np.float32(255)
    # an empty mask is ignored as well
    empty = Identity()
    out = predict_images(empty, [img], [np.zeros(img.shape, bool)], window=48, stride=32,
                         to_prob=first_channel, skip_background=False)[0]
    assert empty.tiles == full.tiles and np.array_equal(out, expect)


def test_small_image_is_padded_and_cropped_back():
    img = _image(30, 50)
    prob = predict_image(Identity(), img, None, window=64, stride=32, to_prob=first_channel)
    assert prob.shape == (30, 50)
    assert np.array_equal(prob, img.astype(np.float32) / 255)


def test_batching_does_not_change_the_result():
    img = _image(100, 100)
    a = predict_image(Identity(), img, None, 32, 20, batch_size=1, to_prob=first_channel)
    b = predict_image(Identity(), img, None, 32, 20, batch_size=7, to_prob=first_channel)
    assert np.array_equal(a, b)


def test_default_prob_from_two_class_logits():
    class Const(nn.Module):
        def forward(self, x):
            z = torch.zeros_like(x)
            return torch.cat([z, z], 1)  # equal logits -> p = 0.5

    prob = predict_image(Const(), _image(40, 40), None, 32, 16)
    assert np.allclose(prob, 0.5)


def test_mask_components():
    prob = np.zeros((50, 60), np.float32)
    prob[5:8, 5:9] = 0.9
    prob[30, 40] = 0.6
    labels, comps = mask_components(prob, 0.5)
    assert (labels > 0).sum() == 13 and len(comps) == 2
    assert {int(v) for v in np.unique(labels)} == {0, 1, 2}
    for c in comps:  # the point lies inside its own component
        x, y = c["point"]
        assert labels[y, x] == c["label"]
    c = sorted(comps, key=lambda c: c["bbox"][1])
    assert c[0]["bbox"] == [5, 5, 4, 3] and c[0]["area"] == 12
    assert c[0]["score"] == pytest.approx(0.9)
    assert c[1]["type"] == "dot"


def test_predictor_from_config_follows_the_test_settings(tmp_path):
    """from_config: the sliding window, threshold, autocast, layout and weights of the config; the
    same map as predict_from_cfg (the trainer's validation path); weights required and read as
    data."""
    cfg = get_calc_seg_cfg(None, ["MODEL.ENCODER", "vgg11_bn", "MODEL.DECODER_CHANNELS",
                                  "[16, 8, 8]", "TEST.WINDOW", "32", "TEST.STRIDE", "24",
                                  "TEST.THRESHOLD", "0.4"])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    calc = CalcPredictor.from_config(cfg, tmp_path / "w.pth", device="cpu")
    assert (calc.window, calc.stride, calc.threshold) == (32, 24, 0.4)
    assert calc.placement == "breast"  # the shipped default
    assert calc.amp_dtype == autocast_dtype("cpu") and calc.channels_last  # shipped defaults
    image = _image(40, 56)
    breast = np.zeros(image.shape, bool)
    breast[:, :30] = True
    prob, labels, comps = calc(image, breast)
    np.testing.assert_array_equal(prob, predict_from_cfg(model.eval(), image, breast, cfg, "cpu"))
    ref_labels, ref_comps = mask_components(prob, 0.4, calc.label_params)
    np.testing.assert_array_equal(labels, ref_labels)
    assert comps == ref_comps
    with pytest.raises(InputError, match="no weights given"):
        CalcPredictor.from_config(cfg)
    with pytest.raises(InputError, match="weights file not found"):
        CalcPredictor.from_config(cfg, tmp_path / "missing.pth")


def _tiny_unet():
    torch.manual_seed(0)
    cfg = get_calc_seg_cfg(None, ["MODEL.ENCODER", "vgg11_bn", "MODEL.DECODER_CHANNELS",
                                  "[16, 8, 8]"])
    return build_model(cfg).eval()


@pytest.mark.parametrize("anchor", ["even", "start", "end"])
def test_span_steps_cover_the_span_inside_the_frame(anchor):
    """Each band anchoring of the breast cover: tiles inside the frame, no step above the stride,
    the span [lo, hi) covered; as many tiles as the even placement needs."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        window = int(rng.integers(4, 40))
        stride = int(rng.integers(1, window + 1))
        size = int(rng.integers(window, 200))
        lo = int(rng.integers(0, size))
        hi = int(rng.integers(lo + 1, size + 1))
        steps = _span_steps(lo, hi, size, window, stride, anchor)
        assert steps == sorted(steps) and 0 <= steps[0] and steps[-1] <= size - window
        assert all(b - a <= stride for a, b in zip(steps, steps[1:]))
        cover = np.zeros(size, bool)
        for s in steps:
            cover[s : s + window] = True
        assert cover[lo:hi].all()
        assert len(steps) == len(_span_steps(lo, hi, size, window, stride))


def _half_ellipse(h, w, chest_wall="left"):
    """A breast-like mask: the half ellipse on the chest wall (left or top edge) of an (h, w)
    frame, as on a CC view, with a strip of background beyond the nipple."""
    y, x = np.mgrid[:h, :w].astype(float)
    if chest_wall == "left":
        return ((y - h / 2) / (0.45 * h)) ** 2 + (x / (0.8 * w)) ** 2 <= 1
    return (y / (0.8 * h)) ** 2 + ((x - w / 2) / (0.45 * w)) ** 2 <= 1


def _masks():
    rng = np.random.default_rng(3)
    two = np.zeros((150, 170), bool)
    two[10:40, 5:50] = two[100:140, 120:165] = True  # two regions: a band with a gap
    corner = np.zeros((97, 131), bool)
    corner[-1, -1] = True
    blobs = np.zeros((160, 140), bool)
    for cy, cx, r in rng.integers(5, 130, (6, 3)):
        yy, xx = np.ogrid[:160, :140]
        blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (r % 30) ** 2
    return {"cc_left": _half_ellipse(300, 220), "cc_top": _half_ellipse(220, 300, "top"),
            "two_regions": two, "corner_pixel": corner, "blobs": blobs,
            "full": np.ones((100, 90), bool), "small_frame": np.ones((32, 40), bool)}


@pytest.mark.parametrize("name", list(_masks()))
@pytest.mark.parametrize("stride", [32, 24])
def test_breast_placement_covers_every_breast_pixel_with_no_more_tiles(name, stride):
    """TEST.PLACEMENT "breast": every tile inside the frame and holding breast, every breast pixel
    in a tile, never more tiles than the frame grid's tiles that hold breast, and fewer on a
    breast-shaped mask."""
    window = 32
    mask = _masks()[name]
    tiles = window_positions(mask.shape, window, stride, mask, "breast")
    frame = window_positions(mask.shape, window, stride, mask, "frame")
    assert tiles == sorted(set(tiles))
    assert 0 < len(tiles) <= len(frame)
    cover = np.zeros(mask.shape, int)
    for y, x in tiles:
        assert 0 <= y <= mask.shape[0] - window and 0 <= x <= mask.shape[1] - window
        assert mask[y : y + window, x : x + window].any()
        cover[y : y + window, x : x + window] += 1
    assert (cover[mask] > 0).all()
    if name.startswith("cc_"):
        assert len(tiles) < len(frame)
    if name == "corner_pixel":
        assert tiles == frame == [(mask.shape[0] - window, mask.shape[1] - window)]


def test_breast_placement_predicts_every_breast_pixel_with_fewer_tiles():
    """The identity model through a breast cover gives the image back inside the breast (each pixel
    is the mean of identical tile values), with fewer forward tiles than the frame grid; no breast,
    no tiles; an unknown placement is refused."""
    img = _image(300, 220, seed=4)
    breast = _half_ellipse(*img.shape)
    frame, cover = Identity(), Identity()
    by_frame = predict_image(frame, img, breast, 32, 32, to_prob=first_channel)
    by_cover = predict_image(cover, img, breast, 32, 32, to_prob=first_channel,
                             placement="breast")
    assert np.array_equal(by_cover[breast], img[breast].astype(np.float32) / 255)
    assert np.array_equal(by_cover[breast], by_frame[breast])
    assert cover.tiles == len(window_positions(img.shape, 32, 32, breast, "breast"))
    assert cover.tiles < frame.tiles == len(window_positions(img.shape, 32, 32, breast))
    empty = Identity()
    assert not predict_image(empty, img, np.zeros(img.shape, bool), 32, 32, to_prob=first_channel,
                             placement="breast").any()
    assert empty.tiles == 0
    # without a mask there is nothing to follow: the frame grid
    assert window_positions(img.shape, 32, 32, None, "breast") == window_positions(img.shape, 32, 32)
    with pytest.raises(ValueError, match="placement"):
        window_positions(img.shape, 32, 32, breast, "grid")
    with pytest.raises(ValueError, match="placement"):
        CalcPredictor(Identity(), placement="grid")
    with pytest.raises(ValueError, match="TEST.PLACEMENT"):
        get_calc_seg_cfg(None, ["TEST.PLACEMENT", "grid"])


def test_predict_probs_batches_images_together_with_the_per_image_maps(one_thread):
    """Tiles of several images share forward passes (a batch straddles images); the maps are those
    of predict_prob image by image, also for an image without breast and one smaller than a tile."""
    images = [_image(70, 90, seed=1), _image(64, 40, seed=2), _image(20, 30, seed=3),
              _image(50, 50, seed=4)]
    masks = [np.ones((70, 90), bool), None, np.ones((20, 30), bool), np.zeros((50, 50), bool)]
    counter = Identity()
    maps = predict_images(counter, images, masks, window=32, stride=24, batch_size=5,
                          to_prob=first_channel)
    # 3 x 4 + 3 x 2 + 1 (padded to 32 x 32) + 0 (no breast) tiles
    assert counter.tiles == 19
    for im, p in zip(images[:3], maps):
        assert p.shape == im.shape and np.array_equal(p, im.astype(np.float32) / 255)
    assert maps[3].shape == (50, 50) and not maps[3].any()
    calc = CalcPredictor(_tiny_unet(), window=32, stride=24, batch_size=3, device="cpu")
    together = calc.predict_probs(images, masks)
    for im, m, p in zip(images, masks, together):
        np.testing.assert_allclose(p, calc.predict_prob(im, m), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="breast masks"):
        calc.predict_probs(images, masks[:2])


@pytest.mark.parametrize("shape", [(128, 96), (150, 100)])
def test_stride_equal_to_window_tiles_the_image_once(shape):
    """stride = window (the shipped default): the fewest tiles, ceil(H / w) x ceil(W / w), all
    inside the image (GroupNorm sees image content only, as in training). Every pixel is predicted
    exactly once when the window divides the size; otherwise the n * w - size surplus rows (columns)
    are spread over the tile seams (nnU-Net's even placement) and predicted twice, never more."""
    window = 32
    h, w = shape
    counter = Identity()
    img = _image(h, w)
    prob = predict_image(counter, img, None, window, window, to_prob=first_channel)
    assert np.array_equal(prob, img.astype(np.float32) / 255)
    ys, xs = compute_steps(h, window, window), compute_steps(w, window, window)
    assert window_positions(shape, window, window) == [(y, x) for y in ys for x in xs]
    assert counter.tiles == len(ys) * len(xs) == -(-h // window) * -(-w // window)
    for size, starts in ((h, ys), (w, xs)):
        cover = np.zeros(size, int)
        for s in starts:
            assert 0 <= s <= size - window
            cover[s : s + window] += 1
        assert cover.min() == 1 and cover.max() <= 2
        assert (cover == 2).sum() == len(starts) * window - size
        if size % window == 0:
            assert (cover == 1).all()


def test_channels_last_and_bf16_stay_close_to_float32(one_thread):
    """Execution choices (TEST.CHANNELS_LAST, TEST.AMP) on a tiny GN U-Net with random weights:
    channels-last changes only the summation order (<= 1e-4 in probability); bf16 autocast, where
    the CPU computes it natively, stays within 0.05 (its 8-bit mantissa; 0.042 on the trained
    model, bench/results/calc_tiling_cpu.json)."""
    img = _image(70, 90, seed=5)
    ref = predict_image(_tiny_unet(), img, None, 32, 24)
    cl = predict_image(_tiny_unet(), img, None, 32, 24, channels_last=True)
    assert 0 < ref.min() and ref.max() < 1
    assert np.abs(cl - ref).max() <= 1e-4
    dtype = autocast_dtype("cpu")
    if dtype is None:
        pytest.skip("this CPU has no native bf16")
    bf = predict_image(_tiny_unet(), img, None, 32, 24, amp_dtype=dtype, channels_last=True)
    assert 0 < np.abs(bf - ref).max() <= 0.05

