"""``ImageResult.component_mask``: one component's mask, and an error for a label naming none."""

from __future__ import annotations

import numpy as np
import pytest

from calc_seg.inference import mask_components
from deeplima.pipeline import ImageResult


def _result(prob: np.ndarray | None) -> ImageResult:
    labels = comps = None
    if prob is not None:
        labels, comps = mask_components(prob)
    shape = (8, 10)
    return ImageResult(source="<array>", image=np.zeros(shape, np.uint8),
                       breast_mask=np.ones(shape, bool), masses=None, calcifications=comps,
                       calc_prob=prob, calc_labels=labels, record={}, thresholds={"calc": 0.5})


def _two_components() -> np.ndarray:
    prob = np.zeros((8, 10), np.float32)
    prob[1:3, 1:3] = 0.9
    prob[5:7, 6:9] = 0.7
    return prob


def test_each_label_gives_its_component():
    res = _result(_two_components())
    assert len(res.calcifications) == 2
    for c in res.calcifications:
        m = res.component_mask(c["label"])
        assert m.dtype == bool and m.shape == res.shape and m.sum() == c["area"]
    assert res.component_mask(np.int64(1)).sum() + res.component_mask(2).sum() == 4 + 6


@pytest.mark.parametrize("label", [0, -1, 3, 100])
def test_a_label_outside_the_components_is_an_error(label):
    with pytest.raises(ValueError, match=rf"component label {label} out of range.*1 to 2"):
        _result(_two_components()).component_mask(label)


def test_no_component_or_no_calcification_model_is_an_error():
    with pytest.raises(ValueError, match="out of range: this image has no calcification component"):
        _result(np.zeros((8, 10), np.float32)).component_mask(1)
    with pytest.raises(ValueError, match="no calcification model ran"):
        _result(None).component_mask(1)


@pytest.mark.parametrize("label", [1.0, True, "1"])
def test_a_label_that_is_not_an_integer_is_refused(label):
    with pytest.raises(TypeError):
        _result(_two_components()).component_mask(label)
