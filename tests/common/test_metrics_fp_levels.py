"""One key per FP-per-image level (``common.metrics.froc.fp_key``) and one lookup (``at_fp``),
used by every reader of ``sensitivity_at_fp``: the U-Net's validation (``recall_at``), the ablation
tables, the Detectron2 evaluator's summary and the HTML report."""

from __future__ import annotations

import numpy as np
import pytest

from calc_seg.ablate import _cell
from calc_seg.engine.trainer import recall_at
from common.metrics import at_fp, evaluate_masks, fp_key


def _report(**kw) -> dict:
    """Two images: lesions found at 0.9 and 0.7 on "a"; false positives at 0.8 and 0.75 on the
    lesion-free "b". FROC: (0.9: 0 FP/image, 0.5), (0.8: 0.5, 0.5), (0.75: 1, 0.5), (0.7: 1, 1)."""
    gt_a = np.zeros((40, 40), bool)
    gt_a[5:8, 5:8] = gt_a[25:28, 25:28] = True
    prob_a = np.zeros((40, 40), np.float32)
    prob_a[5:8, 5:8], prob_a[25:28, 25:28] = 0.9, 0.7
    prob_b = np.zeros((40, 40), np.float32)
    prob_b[5:8, 5:8], prob_b[25:28, 25:28] = 0.8, 0.75
    return evaluate_masks({"a": gt_a, "b": np.zeros((40, 40), bool)}, {"a": prob_a, "b": prob_b},
                          fps=(0.5, 1, 2), **kw)


def test_fp_key_spells_each_level_once():
    assert fp_key(1) == fp_key(1.0) == fp_key("1") == fp_key("1.0") == fp_key(np.int64(1)) == "1"
    assert fp_key(0.5) == fp_key("0.5") == fp_key(np.float32(0.5)) == "0.5"
    assert fp_key(10) == "10"


def test_recall_at_reads_1_and_1_0_alike():
    report = _report()
    assert report["sensitivity_at_fp"] == {"0.5": 0.5, "1": 1.0, "2": 1.0}
    # recall_at(report, 1.0) used to look up "1.0" and return 0.0 without a word
    assert recall_at(report, 1) == recall_at(report, 1.0) == recall_at(report, "1") == 1.0
    assert recall_at(report, 0.5) == 0.5
    assert at_fp(report["sensitivity_at_fp"], 2.0) == 1.0
    assert _cell(report, 1.0) == _cell(report, 1) == 1.0


def test_missing_level_raises_naming_it_and_the_levels_present():
    report = _report()
    with pytest.raises(KeyError, match=r"level 5 .*levels present: 0\.5, 1, 2"):
        recall_at(report, 5)
    with pytest.raises(KeyError, match="level 0.25"):
        at_fp(report["sensitivity_at_fp"], 0.25)
    with pytest.raises(KeyError, match="levels present: none"):
        at_fp({}, 1)
    with pytest.raises(KeyError, match="level 10"):
        _cell(report, 10)
    assert _cell({}, 1) is None  # no report at all (e.g. raw labels not scored): n/a in the table


def test_undefined_sensitivity_is_none_and_recall_at_reads_it_as_zero():
    empty = np.zeros((20, 20), bool)
    report = evaluate_masks({"a": empty}, {"a": np.zeros((20, 20), np.float32)}, fps=(1,))
    assert at_fp(report["sensitivity_at_fp"], 1.0) is None  # no lesion: undefined, written as None
    assert recall_at(report, 1.0) == 0.0
    assert _cell(report, 1) is None


def test_bootstrap_intervals_use_the_same_keys():
    report = _report(bootstrap=20, seed=1)
    lo, hi = at_fp(report["bootstrap"]["sensitivity_at_fp"], 1.0)
    assert 0 <= lo <= hi <= 1
    assert list(report["bootstrap"]["sensitivity_at_fp"]) == list(report["sensitivity_at_fp"])
