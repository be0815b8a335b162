"""Mass detector training in several processes on the CPU (gloo), as `--num-gpus N` starts them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

REPO = Path(__file__).resolve().parents[2]
INSTANT = REPO / "mass_det" / "configs" / "quick_schedules" / "mass_det_instant_test.yaml"


def _argv(root: Path, out: Path) -> list[str]:
    return ["--config-file", str(INSTANT), "MODEL.DEVICE", "cpu",
            "DATASETS.CANONICAL.ROOTS", f"['mdtest={root}']",
            "DATASETS.TRAIN", "('mdtest_mass_train',)", "DATASETS.TEST", "('mdtest_mass_val',)",
            "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]


def test_two_cpu_processes_train_and_evaluate(synthetic_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mass_det.train_net", "--num-gpus", "2", "--dist-url", "auto",
           *_argv(synthetic_root, out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert (out / "log.txt.rank1").is_file()  # the second process ran
    assert (out / "inference" / "mdtest_mass_val" / "froc_report.json").is_file()


def test_num_gpus_under_torchrun_must_match_its_processes(synthetic_root, tmp_path, monkeypatch):
    from mass_det.train_net import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        cli(["--num-gpus", "3", *_argv(synthetic_root, tmp_path / "run")])
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg and "torchrun" in msg
