"""Table 1 ablation runner: per-row configs and the table format (the long run is marked slow)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("detectron2")

import mass_det  # noqa: E402,F401
from datasets.synthetic import generate  # noqa: E402
from mass_det.ablate import (  # noqa: E402
    CONFIG_DIR,
    ROWS,
    build_parser,
    build_run_cfg,
    format_table,
    main,
)
from mass_det.evaluation.froc_evaluator import summarize_report  # noqa: E402


def test_rows_are_the_papers_three_models():
    assert [config for _, config in ROWS] == [
        "faster_rcnn_R50_C4_vanilla.yaml",
        "faster_rcnn_R50_FPN.yaml",
        "faster_rcnn_R50_FPN_FL_NL.yaml",
    ]


def test_run_cfg_points_every_row_at_the_same_data(tmp_path):
    cfgs = [build_run_cfg(CONFIG_DIR / c, str(tmp_path), tmp_path / c, 40, "test",
                          ["SOLVER.BASE_LR", "0.0005"]) for _, c in ROWS]
    assert len({c.DATASETS.CANONICAL.ROOTS[0] for c in cfgs}) == 1
    assert len({c.DATASETS.TRAIN for c in cfgs}) == 1
    for cfg in cfgs:
        assert cfg.DATASETS.TEST[0].endswith("_mass_test")
        assert cfg.SOLVER.MAX_ITER == 40 and max(cfg.SOLVER.STEPS) < 40
        assert cfg.SOLVER.BASE_LR == 0.0005  # the KEY VALUE overrides apply last


def test_overrides_are_trailing_key_value_pairs_as_in_train_net():
    args = build_parser().parse_args(["--data", "d", "--out", "o", "--iters", "2", "--split", "val",
                                      "SOLVER.BASE_LR", "0.0005", "INPUT.MIN_SIZE_TRAIN", "(256,)"])
    assert (args.iters, args.split) == (2, "val")
    assert args.opts == ["SOLVER.BASE_LR", "0.0005", "INPUT.MIN_SIZE_TRAIN", "(256,)"]
    assert build_parser().parse_args(["--data", "d", "--out", "o"]).opts == []
    with pytest.raises(SystemExit):  # the old flag is gone
        build_parser().parse_args(["--data", "d", "--out", "o", "--opts", "SOLVER.BASE_LR", "1"])


def test_summary_names_every_level_and_refuses_a_missing_one():
    report = {"ap50_coco": 0.5, "ap50_voc": None, "recall": 0.75,
              "sensitivity_at_fp": {"0.5": 0.25, "1": 0.5, "2": 0.75}}
    out = summarize_report(report, (0.5, 1.0, 2))
    assert list(out) == ["AP50_COCO", "AP50_VOC", "recall", "sens_at_0p5fp", "sens_at_1fp",
                         "sens_at_2fp"]
    assert out["sens_at_1fp"] == 0.5 and math.isnan(out["AP50_VOC"])
    with pytest.raises(KeyError, match="level 5.*0.5, 1, 2"):
        summarize_report(report, (1, 5))


def test_table_has_one_row_per_model_and_marks_undefined_values():
    metrics = {"AP50_COCO": 0.5, "AP50_VOC": 0.52, "recall": 0.9, "sens_at_1fp": float("nan"),
               "sens_at_2fp": 0.7, "sens_at_5fp": 0.8, "sens_at_10fp": 0.9}
    table = format_table({name: {"metrics": metrics} for name, _ in ROWS})
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert "Faster R-CNN+FPN+FL+NL" in lines[-1] and "0.520" in lines[-1] and "n/a" in lines[-1]


@pytest.mark.slow
def test_ablation_end_to_end_on_tiny_synthetic_data(tmp_path):
    data = generate(tmp_path / "data", n=5, seed=1, height=384, width=320, progress=False)
    out = tmp_path / "out"
    # from scratch (the rows' ImageNet URL is not downloaded in tests): GN, nothing frozen
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "GN",
            "MODEL.BACKBONE.FREEZE_AT", "0",
            "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MIN_SIZE_TEST", "256",
            "DATALOADER.NUM_WORKERS", "0"]
    assert main(["--data", str(data), "--out", str(out), "--iters", "2", "--split", "train",
                 *opts]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert len(table["rows"]) == 3
    for row in table["rows"].values():
        assert row["recall"] is None or 0 <= row["recall"] <= 1
        assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())
    assert (out / "table1.md").is_file() and (out / "froc.png").is_file()
