"""Mixed-precision training of the mass detector on a CPU: SOLVER.AMP.ENABLED steps under bf16
autocast (detectron2's own AMPTrainer is CUDA-only), where the CPU computes bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from mass_det_testing import training_batch  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from common.amp import native_bf16  # noqa: E402
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.engine.trainer import CPUAutocastTrainer, MassDetTrainer  # noqa: E402

CPU_CONFIG = Path(mass_det.__file__).parent / "configs" / "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml"
DATASET = "mass_amp_test_train"


def _trainer(tmp_path: Path, amp: bool) -> MassDetTrainer:
    if DATASET not in DatasetCatalog.list():  # built into a loader, never read
        DatasetCatalog.register(DATASET, lambda: [{"file_name": "unused.png", "image_id": 1,
                                                   "height": 64, "width": 64, "annotations": []}])
        MetadataCatalog.get(DATASET).set(thing_classes=["mass"])
    cfg = get_mass_det_cfg(str(CPU_CONFIG), [
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()", "DATASETS.CANONICAL.ROOTS", "[]",
        "SOLVER.AMP.ENABLED", str(amp), "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(tmp_path)])
    return MassDetTrainer(cfg)


def test_cpu_config_trains_in_bf16_where_native(tmp_path):
    trainer = _trainer(tmp_path, amp=True)
    expected = CPUAutocastTrainer if native_bf16("cpu") else SimpleTrainer
    assert type(trainer._trainer) is expected
    assert get_mass_det_cfg(str(CPU_CONFIG)).SOLVER.AMP.ENABLED


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bfloat16")
def test_one_bf16_step_runs_convolutions_in_bf16_and_updates_float32_weights(tmp_path, one_thread):
    trainer = _trainer(tmp_path, amp=True)
    model = trainer.model
    seen = []
    hook = model.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    trainer._trainer._data_loader_iter_obj = iter([training_batch()])
    trainer.iter = 0
    with EventStorage(0) as storage:
        trainer.run_step()
    hook.remove()
    assert seen == [torch.bfloat16]
    weight = model.roi_heads.box_predictor.cls_score.weight
    assert weight.dtype == torch.float32 and torch.isfinite(weight).all()
    assert not torch.equal(weight.detach(), before)
    assert storage.latest()["total_loss"][0] > 0


def test_float32_when_amp_is_off(tmp_path):
    trainer = _trainer(tmp_path, amp=False)
    assert type(trainer._trainer) is SimpleTrainer
