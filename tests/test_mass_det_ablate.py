"""Table 1 ablation runner: per-row configs and the table format (the long run is marked slow)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("detectron2")

import mass_det  # noqa: E402,F401
from mass_det.ablate import CONFIG_DIR, ROWS, build_run_cfg, format_table, main  # noqa: E402


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
        assert cfg.SOLVER.BASE_LR == 0.0005  # --opts apply last


def test_table_has_one_row_per_model_and_marks_undefined_values():
    metrics = {"AP50_COCO": 0.5, "AP50_VOC": 0.52, "recall": 0.9, "sens_at_1fp": float("nan"),
               "sens_at_2fp": 0.7, "sens_at_5fp": 0.8, "sens_at_10fp": 0.9}
    table = format_table({name: {"metrics": metrics} for name, _ in ROWS})
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert "Faster R-CNN+FPN+FL+NL" in lines[-1] and "0.520" in lines[-1] and "n/a" in lines[-1]


@pytest.mark.slow
def test_ablation_end_to_end_on_tiny_synthetic_data(tmp_path):
    pytest.importorskip("common.preprocess")
    from datasets.synthetic import generate

    data = generate(tmp_path / "data", n=5, seed=1, height=384, width=320, progress=False)
    out = tmp_path / "out"
    # from scratch (the rows' ImageNet URL is not downloaded in tests): GN, nothing frozen
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "GN",
            "MODEL.BACKBONE.FREEZE_AT", "0",
            "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MIN_SIZE_TEST", "256",
            "DATALOADER.NUM_WORKERS", "0"]
    assert main(["--data", str(data), "--out", str(out), "--iters", "2", "--split", "train",
                 "--opts", *opts]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert len(table["rows"]) == 3
    for row in table["rows"].values():
        assert row["recall"] is None or 0 <= row["recall"] <= 1
        assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())
    assert (out / "table1.md").is_file() and (out / "froc.png").is_file()
