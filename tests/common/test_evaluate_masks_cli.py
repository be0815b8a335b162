"""``python -m common.evaluate masks`` on a canonical dataset: ``--gt-dir CANONICAL/calc_masks`` and
``--split``."""

from __future__ import annotations

import json
import shutil

import pytest

from common.evaluate import main


@pytest.fixture(scope="module")
def canonical(synthetic_root):
    """(dataset folder, stems of its test split, stems of every image)."""
    coco = json.loads((synthetic_root / "calcifications.json").read_text())
    stems = {im["stem"]: im["split"] for im in coco["images"]}
    test = sorted(s for s, split in stems.items() if split == "test")
    assert test and len(test) < len(stems)
    return synthetic_root, test, sorted(stems)


def _pred_dir(tmp_path, root, stems):
    """The GT masks of ``stems`` as predictions (0/255 PNGs read as probability 0 or 1)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for s in stems:
        shutil.copy(root / "calc_masks" / f"{s}.png", pred / f"{s}.png")
    return pred


def _run(capsys, *argv):
    rc = main(["masks", *map(str, argv)])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_gt_dir_of_a_canonical_dataset_with_split_equals_gt_json(canonical, tmp_path, capsys):
    root, test, _ = canonical
    pred = _pred_dir(tmp_path, root, test)
    rc, err = _run(capsys, "--gt-dir", root / "calc_masks", "--split", "test", "--pred-dir", pred,
                   "--out", tmp_path / "dir.json")
    assert rc == 0, err
    rc, err = _run(capsys, "--gt-json", root / "calcifications.json", "--split", "test",
                   "--pred-dir", pred, "--out", tmp_path / "json.json")
    assert rc == 0, err
    by_dir = json.loads((tmp_path / "dir.json").read_text())
    assert by_dir == json.loads((tmp_path / "json.json").read_text())
    assert by_dir["n_images"] == len(test) and by_dir["recall"] == 1.0
    assert "per_type" in by_dir  # the types of calcifications.json, as with --gt-json


def test_gt_dir_of_a_canonical_dataset_scores_every_image(canonical, tmp_path, capsys):
    root, _, stems = canonical
    rc, err = _run(capsys, "--gt-dir", f"{root / 'calc_masks'}/", "--pred-dir",
                   _pred_dir(tmp_path, root, stems), "--out", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == len(stems)


def test_predictions_of_one_split_without_split_is_one_line(canonical, tmp_path, capsys):
    root, test, _ = canonical
    rc, err = _run(capsys, "--gt-dir", root / "calc_masks", "--pred-dir",
                   _pred_dir(tmp_path, root, test), "--out", tmp_path / "r.json")
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "--split" in err[0]


def test_split_with_a_plain_gt_dir_is_refused_in_one_line(canonical, tmp_path, capsys):
    root, test, _ = canonical
    gt = tmp_path / "gt"
    gt.mkdir()
    for s in test:
        shutil.copy(root / "calc_masks" / f"{s}.png", gt / f"{s}.png")
    rc, err = _run(capsys, "--gt-dir", gt, "--split", "test", "--pred-dir",
                   _pred_dir(tmp_path, root, test), "--out", tmp_path / "r.json")
    assert rc == 2 and len(err) == 1
    assert "--gt-json" in err[0] and "calcifications.json --split test" in err[0]
    assert not (tmp_path / "r.json").exists()
