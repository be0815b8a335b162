"""Training: loss goes down on tiny data; trainer epochs, checkpoints, resume; predict script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from calc_seg.config import get_calc_seg_cfg
from calc_seg.data import patches
from calc_seg.losses import WeightedCrossEntropy
from calc_seg.model import build_unet
from common.io import atomic_write_json, atomic_write_png

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "calc_seg" / "configs" / "quick_schedules" / "unet_gn_instant_test.yaml"


def _scene(seed, h=96, w=128):
    """A flat 'breast' on the left with a few bright dots (the calcifications) and their mask."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    img[:, : w - 24] = 70
    img[:, : w - 24] += rng.integers(0, 20, (h, w - 24)).astype(np.uint8)
    gt = np.zeros((h, w), bool)
    for _ in range(4):
        y, x = rng.integers(4, h - 4), rng.integers(4, w - 30)
        img[y - 1 : y + 2, x - 1 : x + 2] = 240
        gt[y - 1 : y + 2, x - 1 : x + 2] = True
    return img, gt


def _canonical(root: Path, n=5):
    """A canonical folder whose 'images' are .npy arrays (read by a stand-in pre-processing)."""
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, gt = _scene(i)
        np.save(root / f"im{i}.npy", img)
        atomic_write_png(root / "calc_masks" / f"im{i}.png", gt.astype(np.uint8) * 255)
        images.append({"id": i + 1, "file_name": f"im{i}.npy", "stem": f"im{i}", "height": img.shape[0],
                       "width": img.shape[1], "patient_id": f"p{i}", "split": ["train", "train", "train", "val", "test"][i % 5],
                       "mask_file": f"calc_masks/im{i}.png"})
    atomic_write_json(root / "calcifications.json", {"images": images, "annotations": anns,
                                                     "categories": [{"id": 1, "name": "calcification"}]})
    return root


@pytest.fixture
def npy_preprocess(monkeypatch):
    def load_image(path, remove_artifacts=True):
        img = np.load(path)
        return img, img > 0, {"source": str(path)}

    monkeypatch.setattr(patches, "load_image", load_image)


def test_weighted_ce_weights_positive_pixels():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]]])
    assert torch.isclose(WeightedCrossEntropy(10.0)(logits, target), torch.log(torch.tensor(2.0)))
    logits[0, 1] = 2.0  # predicts calcification everywhere: errors on 3 background pixels
    high = WeightedCrossEntropy(10.0)(logits, target)
    low = WeightedCrossEntropy(1.0)(logits, target)
    assert high < low  # the correct positive pixel counts ten times
    one = WeightedCrossEntropy(5.0)(torch.zeros(1, 1, 2, 2), target)
    assert torch.isfinite(one)


def test_few_iterations_lower_the_loss(one_thread):
    torch.manual_seed(0)
    imgs, masks = zip(*[_scene(i, 32, 32 + 24) for i in range(4)])
    x = torch.from_numpy(np.stack(imgs)[:, None, :, :32].astype(np.float32) / 255)
    y = torch.from_numpy(np.stack(masks)[:, :, :32].astype(np.int64))
    model = build_unet("gn", encoder="vgg11_bn", decoder_channels=(32, 16, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = WeightedCrossEntropy(10.0)
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def _quick_cfg(root, out, epochs=1, extra=()):
    from calc_seg.config import get_calc_seg_cfg

    return get_calc_seg_cfg(QUICK, ["DATA.ROOT", str(root), "OUTPUT_DIR", str(out),
                                     "PATCH.SIZE", 32, "PATCH.STRIDE", 32, "TEST.WINDOW", 32,
                                     "TEST.STRIDE", 32, "SOLVER.EPOCHS", epochs, "SOLVER.ITERS_PER_EPOCH", 2,
                                     "MODEL.DECODER_CHANNELS", [32, 16, 8], "LABELS.MIN_AREA", 9,
                                     *extra])


def test_trainer_checkpoints_and_resume(tmp_path, npy_preprocess, one_thread):
    from calc_seg.engine.trainer import CalcSegTrainer

    root = _canonical(tmp_path / "data")
    out = tmp_path / "out"
    t = CalcSegTrainer(_quick_cfg(root, out, epochs=1))
    last = t.train(progress=False)
    assert last["epoch"] == 1 and np.isfinite(last["loss"]) and 0 <= last["val_recall_at_1fp"] <= 1
    assert (out / "model_last.pth").exists() and (out / "model_best.pth").exists()
    ckpt = torch.load(out / "model_last.pth", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "cfg"} <= set(ckpt)
    t2 = CalcSegTrainer(_quick_cfg(root, out, epochs=2), resume=True)
    assert t2.start_epoch == 1 and t2.scheduler.last_epoch == 2
    assert t2.train(progress=False)["epoch"] == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def test_predict_script_round_trip_and_failures(tmp_path):
    pre = pytest.importorskip("common.preprocess")
    del pre
    from common.io import read_png

    cfg = get_calc_seg_cfg()
    cfg.merge_from_file(str(QUICK))
    model = build_unet("gn", encoder=cfg.MODEL.ENCODER, decoder_channels=cfg.MODEL.DECODER_CHANNELS)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    img, _ = _scene(0, 96, 128)
    atomic_write_png(tmp_path / "in" / "good.png", img)
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "scripts.predict_calc", "--config-file", str(QUICK),
           "--weights", str(tmp_path / "w.pth"), "--input", str(tmp_path / "in"),
           "--output", str(tmp_path / "out"), "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "bad.png" in r.stderr and "good.png" not in r.stderr
    out = tmp_path / "out"
    prob = read_png(out / "calc_prob" / "good.png")
    assert prob.dtype == np.uint16 and prob.shape == img.shape
    assert read_png(out / "calc_mask" / "good.png").shape == img.shape
    assert read_png(out / "overlays" / "good.png").shape == (*img.shape, 3)
    meta = json.loads((out / "per_image" / "good.json").read_text())
    assert {"calcifications", "thresholds", "source"} <= set(meta) and "masses" not in meta
    for c in meta["calcifications"]:
        assert {"bbox", "area", "score", "type"} <= set(c)
    assert not (out / "calc_prob" / "bad.png").exists()
    assert [f["file"] for f in json.loads((out / "failures.json").read_text())] == [
        str(tmp_path / "in" / "bad.png")]

    weights_at = cmd.index("--weights") + 1
    r = subprocess.run(cmd[:weights_at] + [str(tmp_path / "missing.pth")] + cmd[weights_at + 1:],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "weights file not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ablation_writes_tables(tmp_path, npy_preprocess, one_thread):
    from calc_seg import ablate

    root = _canonical(tmp_path / "data")
    out = tmp_path / "abl"
    opts = ["PATCH.SIZE", 32, "PATCH.STRIDE", 32, "TEST.WINDOW", 32, "TEST.STRIDE", 32,
            "SOLVER.ITERS_PER_EPOCH", 1, "MODEL.DECODER_CHANNELS", [32, 16, 8], "LABELS.MIN_AREA", 9]
    assert ablate.main(["--data", str(root), "--out", str(out), "--epochs", "1",
                        "--config-file", str(QUICK), "--no-progress", *map(str, opts)]) == 0
    t3 = json.loads((out / "table3.json").read_text())
    rec = t3["recall"]
    assert list(rec) == ["U-Net BN", "U-Net LN", "U-Net GN"] and list(rec["U-Net GN"]) == ["1", "2", "5", "10"]
    assert list(t3["recall_raw_labels"]) == list(rec) and t3["n_lesions"]["U-Net GN"] > 0
    t4 = json.loads((out / "table4.json").read_text())
    assert list(t4["recall"]) == ["Dot", "Vessel", "Large Region"]
    assert "| U-Net GN |" in (out / "table3.md").read_text()
    assert (out / "froc.png").stat().st_size > 0
    for norm in ("bn", "ln", "gn"):
        assert (out / f"unet_{norm}" / "test_report.json").exists()


class _FakeStudy:
    """What evaluate_studies reads from a Study: stem, arrays, typed points and the minimum area."""

    def __init__(self, stem, arrays, types, min_area=1):
        self.stem, self._arrays, self.types, self.min_area = stem, arrays, types, min_area

    def array(self, name):
        return self._arrays[name]


def test_validation_ignores_vessel_and_large_labels(monkeypatch):
    from calc_seg.engine import trainer as trainer_mod

    h, w = 64, 64
    gt = np.zeros((h, w), bool)
    gt[10:12, 10:12] = True  # a dot
    gt[40:42, 5:60] = True  # a vessel
    excluded = np.zeros((h, w), bool)
    excluded[37:45, 2:63] = True  # the vessel's dilated extent
    prob = np.zeros((h, w), np.float32)
    prob[10:12, 10:12] = 0.9  # finds the dot
    prob[40:42, 5:60] = 0.8  # finds the vessel
    prob[50:52, 30:32] = 0.7  # a false positive away from both
    study = _FakeStudy(
        "s", {"image": np.zeros((h, w), np.uint8), "breast": np.ones((h, w), bool), "gt": gt,
              "excluded": excluded},
        [{"type": "dot", "point": [10, 10]}, {"type": "vessel", "point": [30, 40]}],
    )
    monkeypatch.setattr(trainer_mod, "predict_from_cfg", lambda *a, **k: prob)
    cfg = get_calc_seg_cfg()

    full, maps = trainer_mod.evaluate_studies(None, [study], cfg)
    assert full["n_lesions"] == 2 and full["n_predictions"] == 3
    assert full["per_type"]["vessel"]["recall"] == 1.0

    val, maps_val = trainer_mod.evaluate_studies(None, [study], cfg, ignore_excluded=True)
    # Only the dot remains a lesion; the vessel prediction is neither a hit nor a false positive.
    assert val["n_lesions"] == 1 and val["n_predictions"] == 2
    assert val["sensitivity_at_fp"]["1"] == 1.0
    assert np.array_equal(maps_val["s"], prob)  # returned maps stay unmasked


def test_perfect_prediction_of_processed_labels_scores_every_lesion(tmp_path, npy_preprocess):
    """The trainer's scoring path: predicting the training target exactly finds every lesion; the
    same prediction scored against the raw masks misses the small dots (IoP of a grown blob over a
    3x3 dot is far below 0.25)."""
    from calc_seg.engine.trainer import load_split, score_studies

    root = _canonical(tmp_path / "data")
    cfg = _quick_cfg(root, tmp_path / "out")
    studies = load_split(cfg, "train")
    assert studies and all(s.min_area == 9 for s in studies)  # no pixel spacing: LABELS.MIN_AREA px
    # a larger minimum area so that the grown blob is much bigger than the 3x3 dot
    cfg = _quick_cfg(root, tmp_path / "out2", extra=["LABELS.MIN_AREA", 100])
    studies = load_split(cfg, "train")
    probs = {s.stem: np.asarray(s.array("train_mask"), np.float32) for s in studies}
    processed = score_studies(studies, probs, cfg)
    assert processed["gt_labels"] == "processed" and processed["n_lesions"] >= 10
    assert processed["recall"] == 1.0 and processed["sensitivity_at_fp"]["1"] == 1.0
    # validation's variant (vessel / large labels left out) scores the same hits
    assert score_studies(studies, probs, cfg, ignore_excluded=True)["recall"] == 1.0
    raw = score_studies(studies, probs, cfg, gt_labels="raw")
    assert raw["n_lesions"] == processed["n_lesions"] and raw["recall"] < 0.5
    # the raw masks predicted exactly are found in both definitions (a dot inside its grown label)
    exact = {s.stem: np.asarray(s.array("gt"), np.float32) for s in studies}
    assert score_studies(studies, exact, cfg, gt_labels="raw")["recall"] == 1.0
    assert score_studies(studies, exact, cfg)["recall"] == 1.0


def test_warmup_then_decay():
    from calc_seg.config import get_calc_seg_cfg
    from calc_seg.engine.trainer import build_lr_lambda

    cfg = get_calc_seg_cfg(None, ["SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 0.1])
    f = build_lr_lambda(cfg, 100)
    assert f(0) == pytest.approx(0.1)
    cosine = lambda t: 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * t))  # noqa: E731
    assert f(5) == pytest.approx(cosine(0.05) * (0.1 + 0.9 * 0.5))
    assert f(0) < f(5) < f(10) and f(10) > f(50) > f(99)
    assert f(10) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.1)))


def test_positive_fraction_sets_the_class_weight():
    from calc_seg.config import get_calc_seg_cfg
    from calc_seg.engine.trainer import pos_weight_of, positive_pixel_fraction

    entries = np.zeros(4, dtype=patches.PATCH_DTYPE)
    entries["positive"] = [True, True, False, False]
    entries["pos_pixels"] = [100, 300, 0, 0]
    f = positive_pixel_fraction(entries, 20)  # mean 200 of 400 px in positive patches, half a batch
    assert f == pytest.approx(0.25)
    cfg = get_calc_seg_cfg(None, [])
    assert pos_weight_of(cfg, f) == pytest.approx(3.0)
    assert pos_weight_of(cfg, 1e-6) == cfg.SOLVER.POS_WEIGHT_MAX
    assert pos_weight_of(get_calc_seg_cfg(None, ["SOLVER.POS_WEIGHT", 7.0]), f) == 7.0


def test_trainer_writes_tensorboard_events(tmp_path, npy_preprocess, one_thread):
    from calc_seg.engine.trainer import CalcSegTrainer

    root = _canonical(tmp_path / "data")
    out = tmp_path / "out"
    t = CalcSegTrainer(_quick_cfg(root, out, epochs=1))
    t.train(progress=False)
    events = list(out.glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/recall_at_1fp",
            "data/positive_pixel_fraction"} <= tags
    assert len(acc.Scalars("train/loss")) == 2  # one per iteration
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < line["positive_pixel_fraction"] < 0.5 and line["pos_weight"] > 1
