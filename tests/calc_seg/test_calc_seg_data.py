"""Patch index, balanced sampler and patch dataset on hand-made images."""

import numpy as np
import pytest
import torch

from calc_seg.config import get_calc_seg_cfg
from calc_seg.data import patches
from calc_seg.data.dataset import CalcPatchDataset, build_augmentation
from calc_seg.data.labels import LabelParams
from calc_seg.data.patches import build_patch_index, load_study, patch_starts, select_patches
from calc_seg.data.sampler import BalancedBatchSampler
from common.io import atomic_write_png

PARAMS = LabelParams(min_area=25, large_min_area=400, vessel_min_length=15)


@pytest.fixture
def fake_preprocess(monkeypatch):
    """Images stored as .npy stand in for DICOMs; the breast is the non-zero region."""
    calls = []

    def load_image(path, remove_artifacts=True):
        calls.append(path)
        img = np.load(path)
        return img, img > 0, {"source": str(path)}

    monkeypatch.setattr(patches, "load_image", load_image)
    return calls


def _record(tmp_path, stem, image, gt=None):
    np.save(tmp_path / f"{stem}.npy", image)
    mask_file = None
    if gt is not None:
        mask_file = tmp_path / f"{stem}_mask.png"
        atomic_write_png(mask_file, gt.astype(np.uint8) * 255)
    return {"file_name": str(tmp_path / f"{stem}.npy"), "mask_file": mask_file and str(mask_file),
            "stem": stem, "annotations": []}


def _image_and_gt():
    """128 x 160 image: breast in the left 100 columns; a dot, a vessel and a large region."""
    img = np.zeros((128, 160), np.uint8)
    img[:, :100] = 80
    gt = np.zeros(img.shape, bool)
    gt[10, 10] = True  # dot in patch (0, 0)
    gt[100:102, 40:90] = True  # vessel (50 x 2) in the bottom row of patches
    return img, gt


def test_patch_starts():
    assert patch_starts(512, 512, 256) == [0]
    assert patch_starts(300, 512, 256) == [0]
    assert patch_starts(1024, 512, 256) == [0, 256, 512]
    assert patch_starts(1100, 512, 256) == [0, 256, 512, 588]  # last one flush with the edge


def test_patch_index_counts_background_and_exclusion(tmp_path, fake_preprocess):
    img, gt = _image_and_gt()
    rec = _record(tmp_path, "a", img, gt)
    study = load_study(rec, tmp_path / "cache", PARAMS)
    assert [c["type"] for c in study.components] == ["dot", "vessel"]
    entries = build_patch_index([study], size=32, stride=32, cache_dir=tmp_path / "cache")
    # 4 rows x 5 columns of 32 px; columns starting at 128 lie outside the breast (all zero)
    assert len(entries) == 4 * 4
    assert set(entries["x"]) == {0, 32, 64, 96}
    pos = {(int(e["y"]), int(e["x"])) for e in entries if e["positive"]}
    assert (0, 0) in pos  # the dot, dilated to 25 px, stays inside the first patch
    excl = {(int(e["y"]), int(e["x"])) for e in entries if e["excluded"]}
    assert excl == {(96, 32), (96, 64)}
    kept = select_patches(entries)
    assert len(kept) == len(entries) - 2 and not kept["excluded"].any()
    # cached: a second build reads the index file, a second load_study no image
    n_calls = len(fake_preprocess)
    again = load_study(rec, tmp_path / "cache", PARAMS)
    assert len(fake_preprocess) == n_calls
    assert np.array_equal(build_patch_index([again], 32, 32, tmp_path / "cache"), entries)
    assert len(list((tmp_path / "cache").glob("patch_index-*.npy"))) == 1


def test_study_cache_invalidated_by_params(tmp_path, fake_preprocess):
    img, gt = _image_and_gt()
    rec = _record(tmp_path, "a", img, gt)
    load_study(rec, tmp_path / "c", PARAMS)
    s2 = load_study(rec, tmp_path / "c", LabelParams(min_area=4, vessel_min_length=1000))
    assert len(fake_preprocess) == 2
    assert [c["type"] for c in s2.components] == ["dot", "dot"]


@pytest.mark.parametrize("world_size", [1, 2])
def test_sampler_batches_are_one_to_one(world_size):
    positive = np.zeros(50, bool)
    positive[[3, 7, 11]] = True  # few positives: they repeat within an epoch
    seen = []
    for rank in range(world_size):
        s = BalancedBatchSampler(positive, 6, num_batches=5, seed=1, rank=rank, world_size=world_size)
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s) == 5
        for b in batches:
            assert len(b) == 6 and positive[b].sum() == 3
        seen.append(batches)
    if world_size == 2:  # ranks get different batches of the same global draw
        assert seen[0] != seen[1]
    s = BalancedBatchSampler(positive, 6, num_batches=5, seed=1)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert first != list(s)
    s.set_epoch(0)
    assert first == list(s)  # deterministic given (seed, epoch)


def test_sampler_default_length_and_errors():
    positive = np.array([True] * 10 + [False] * 30)
    assert len(BalancedBatchSampler(positive, 4)) == 5  # every positive once per epoch
    assert len(BalancedBatchSampler(positive, 4, world_size=2)) == 3
    with pytest.raises(ValueError):
        BalancedBatchSampler(positive, 5)
    with pytest.raises(ValueError):
        BalancedBatchSampler(np.zeros(4, bool), 4)


def test_dataset_items_and_augmentation(tmp_path, fake_preprocess):
    img, gt = _image_and_gt()
    study = load_study(_record(tmp_path, "a", img, gt), tmp_path / "cache", PARAMS)
    entries = select_patches(build_patch_index([study], 48, 40, tmp_path / "cache"))
    cfg = get_calc_seg_cfg()
    cfg.merge_from_list(["AUG.AFFINE_PROB", 1.0, "AUG.INTENSITY_PROB", 1.0])
    ds = CalcPatchDataset([study], entries, 48, build_augmentation(cfg))
    plain = CalcPatchDataset([study], entries, 48)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 48, 48) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
        assert y.shape == (48, 48) and set(np.unique(y.numpy())) <= {0, 1}
    i0 = int(np.flatnonzero(entries["positive"])[0])
    x, y = plain[i0]
    assert y.sum() >= 25 and np.allclose(x[0].numpy()[y.numpy() == 0].max(), 80 / 255)
