"""Mass detector on tiny synthetic studies: mapper, evaluator, training, predict -> evaluate (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
pytest.importorskip("common.preprocess")

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import mass_det  # noqa: E402,F401
from common.errors import InputError  # noqa: E402
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.data.mapper import MassCrop, MassDatasetMapper  # noqa: E402
from mass_det.data.register import register_mass_datasets  # noqa: E402
from mass_det.evaluation.froc_evaluator import FROCEvaluator  # noqa: E402

INSTANT = Path(mass_det.__file__).parent / "configs" / "quick_schedules" / "mass_det_instant_test.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def synthetic(synthetic_root):
    """The session's small synthetic dataset (5 studies of 512 x 416 pixels)."""
    return synthetic_root


def _cfg(root, *opts):
    cfg = get_mass_det_cfg(str(INSTANT), [
        "MODEL.DEVICE", "cpu",
        "DATASETS.CANONICAL.ROOTS", f"['mdtest={root}']",
        "DATASETS.TRAIN", "('mdtest_mass_train',)",
        "DATASETS.TEST", "('mdtest_mass_val',)",
        *opts,
    ])
    register_mass_datasets(cfg)
    return cfg


def _all_dicts(cfg):
    return [d for s in ("train", "val", "test") for d in DatasetCatalog.get(f"mdtest_mass_{s}")]


def _with_masses(cfg, k=2):
    dicts = [d for d in _all_dicts(cfg) if d["annotations"]]
    assert len(dicts) >= k, "the synthetic set should contain masses"
    return dicts[:k]


def test_train_mapper_scales_and_flips_boxes(synthetic):
    cfg = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "0.0", "INPUT.MAMMO.HFLIP_PROB", "0.0")
    d = _with_masses(cfg, 1)[0]
    out = MassDatasetMapper(cfg, is_train=True)(d)
    c, h, w = out["image"].shape
    assert c == 3 and out["image"].dtype == torch.uint8 and min(h, w) == 256
    assert torch.equal(out["image"][0], out["image"][1])  # grey replicated
    scale = min(h, w) / min(d["height"], d["width"])
    gt = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                   for a in d["annotations"]])
    assert len(gt) >= 1
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), gt * scale,
                               rtol=0, atol=1.0)
    assert out["instances"].gt_classes.tolist() == [0] * len(gt)

    flip = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "0.0", "INPUT.MAMMO.HFLIP_PROB", "1.0")
    flipped = MassDatasetMapper(flip, is_train=True)(d)
    expect = gt * scale
    expect[:, [0, 2]] = w - expect[:, [2, 0]]
    np.testing.assert_allclose(flipped["instances"].gt_boxes.tensor.numpy(), expect,
                               rtol=0, atol=1.0)
    assert torch.equal(flipped["image"], out["image"].flip(-1))


def test_mass_crop_holds_a_whole_box_or_lands_on_tissue():
    rng_state = np.random.get_state()
    np.random.seed(0)
    image = np.zeros((300, 200, 3), np.uint8)
    image[:, :120] = 90  # "breast" on the left, background on the right
    boxes = np.array([[150.0, 20.0, 180.0, 60.0], [10.0, 200.0, 40.0, 250.0]])
    always = MassCrop(64, positive_prob=1.0)
    held = set()
    for _ in range(50):
        t = always.get_transform(image, boxes)
        assert (t.w, t.h) == (64, 64) and 0 <= t.x0 <= 136 and 0 <= t.y0 <= 236
        inside = [(t.x0 <= b[0] and b[2] <= t.x0 + 64 and t.y0 <= b[1] and b[3] <= t.y0 + 64)
                  for b in boxes]
        assert any(inside)
        held.update(i for i, ok in enumerate(inside) if ok)
    assert held == {0, 1}  # either mass may be chosen
    big = MassCrop(64, positive_prob=1.0).get_transform(image, np.array([[0.0, 0.0, 100.0, 100.0]]))
    assert (big.x0, big.y0) == (18, 18)  # a box larger than the crop: centred on it
    never = MassCrop(64, positive_prob=0.0)
    centres = [never.get_transform(image, boxes) for _ in range(50)]
    assert sum(image[t.y0 + 32, t.x0 + 32, 0] > 0 for t in centres) >= 45  # on tissue
    whole = MassCrop(512).get_transform(image, np.zeros((0, 4)))
    assert (whole.x0, whole.y0, whole.w, whole.h) == (0, 0, 200, 300)  # smaller image: kept whole
    with pytest.raises(ValueError, match="crop size"):
        MassCrop(0)
    np.random.set_state(rng_state)


def test_train_mapper_crops_around_masses(synthetic):
    cfg = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "0.0", "INPUT.MAMMO.HFLIP_PROB", "0.5",
               "INPUT.MAMMO.CROP_SIZE", "96", "INPUT.MAMMO.CROP_POSITIVE_PROB", "1.0")
    d = _with_masses(cfg, 1)[0]
    mapper = MassDatasetMapper(cfg, is_train=True)
    gt = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                   for a in d["annotations"]])
    for _ in range(6):
        out = mapper(d)
        assert tuple(out["image"].shape) == (3, 96, 96)
        boxes = out["instances"].gt_boxes.tensor.numpy()
        assert len(boxes) >= 1 and (boxes >= 0).all() and (boxes <= 96).all()
        # the chosen mass is whole: its crop box has the resized size of an original box
        sizes = (gt[:, 2:] - gt[:, :2]) * 256 / min(d["height"], d["width"])
        assert boxes.shape[1:] == (4,) and sizes.shape[1:] == (2,)
        assert any(np.allclose(b[2:] - b[:2], s, atol=1.0) for b in boxes for s in sizes)
    assert "instances" not in MassDatasetMapper(cfg, is_train=False)(d)


def test_laterality_normalised_image_gets_mirrored_boxes(synthetic):
    """When pre-processing mirrors the image, original-frame boxes are mirrored with it."""
    cfg = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "0.0", "INPUT.MAMMO.HFLIP_PROB", "0.0")
    d = _with_masses(cfg, 1)[0]
    plain = MassDatasetMapper(cfg, is_train=True)(d)
    mapper = MassDatasetMapper(cfg, is_train=True)
    inner = mapper.read.reader
    mapper.read.reader = lambda path: (inner(path)[0][:, ::-1], True)
    out = mapper(d)
    assert out["flipped"] is True
    w = out["image"].shape[2]
    expect = plain["instances"].gt_boxes.tensor.clone()
    assert expect.shape[0] >= 1
    expect[:, [0, 2]] = w - expect[:, [2, 0]]
    # the same number of boxes first: allclose broadcasts, so (0, 4) against (1, 4) would pass
    assert out["instances"].gt_boxes.tensor.shape == expect.shape
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, expect, rtol=0, atol=1e-3)


def test_translation_and_scaling_keep_boxes_inside(synthetic):
    cfg = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "1.0")
    mapper = MassDatasetMapper(cfg, is_train=True)
    d = _with_masses(cfg, 1)[0]
    np.random.seed(0)
    for _ in range(5):
        out = mapper(d)
        h, w = out["image"].shape[1:]
        boxes = out["instances"].gt_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_eval_mapper_drops_ground_truth_and_caches(synthetic):
    cfg = _cfg(synthetic)
    calls = []

    def reader(path):
        calls.append(path)
        from common.preprocess import preprocess

        p = preprocess(path)
        return p.image, False

    mapper = MassDatasetMapper(cfg, is_train=False)
    mapper.read.reader = reader
    d = _with_masses(cfg, 1)[0]
    out = mapper(d)
    assert "annotations" not in out and "instances" not in out
    assert out["image_id"] == d["image_id"] and out["height"] == d["height"]
    mapper(d)
    assert len(calls) == 1  # second read from the cache


def test_unreadable_image_is_skipped_in_training_and_raises_in_eval(synthetic, tmp_path):
    cfg = _cfg(synthetic)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM but not really")
    d = {"file_name": str(bad), "image_id": 999, "height": 512, "width": 416, "annotations": []}
    assert MassDatasetMapper(cfg, is_train=True)(d) is None
    with pytest.raises(InputError):
        MassDatasetMapper(cfg, is_train=False)(d)


def test_evaluator_scores_ground_truth_as_perfect(synthetic, tmp_path):
    cfg = _cfg(synthetic)
    name = "mdtest_mass_train"
    dicts = DatasetCatalog.get(name)
    evaluator = FROCEvaluator.from_cfg(cfg, name, output_dir=str(tmp_path))
    evaluator.reset()
    for d in dicts:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        flipped = d["image_id"] % 2 == 0  # exercise the mirror-back path
        inst = Instances((d["height"], d["width"]))
        t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if flipped:
            t[:, [0, 2]] = d["width"] - t[:, [2, 0]]
        inst.pred_boxes = Boxes(t)
        inst.scores = torch.full((len(boxes),), 0.9)
        inputs = {"image_id": d["image_id"], "height": d["height"], "width": d["width"],
                  "flipped": flipped}
        evaluator.process([inputs], [{"instances": inst}])
    results = evaluator.evaluate()["mass"]
    assert results["recall"] == pytest.approx(1.0)
    assert results["AP50_VOC"] == pytest.approx(1.0)
    assert results["sens_at_1fp"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in results.values())
    assert (tmp_path / "froc_report.json").is_file() and (tmp_path / "froc.png").is_file()


@pytest.fixture(scope="module")
def tiny_model(synthetic, tmp_path_factory):
    """The instant-test model after 15 Adam steps on two mammograms with masses."""
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = _cfg(synthetic, "INPUT.MAMMO.EXTENT_PROB", "0.0", "SOLVER.BASE_LR", "0.0003")
    model = build_model(cfg).train()
    mapper = MassDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in _with_masses(cfg, 2)]
    from mass_det.engine.trainer import build_mass_optimizer

    optimizer = build_mass_optimizer(cfg, model)
    losses = []
    with EventStorage():
        for _ in range(15):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    path = tmp_path_factory.mktemp("tiny_model") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return cfg, path, losses


def test_a_few_iterations_lower_the_loss(tiny_model):
    _, _, losses = tiny_model
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_predict_then_evaluate_round_trip(synthetic, tiny_model, tmp_path, capsys):
    from common.metrics import evaluate_boxes
    from scripts.predict_mass import main as predict_main

    cfg, weights, _ = tiny_model
    coco = json.loads((synthetic / "masses.json").read_text())
    files = [str(synthetic / im["file_name"]) for im in coco["images"][:3]]
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\x00" * 200)
    out = tmp_path / "pred"
    rc = predict_main(["--config-file", str(INSTANT), "--weights", str(weights), "--input",
                       files[0], str(corrupt), *files[1:], "--output", str(out), "--no-progress",
                       "MODEL.DEVICE", "cpu"])
    assert rc == 1  # the corrupt file failed ...
    err = capsys.readouterr().err
    assert "corrupt.dcm" in err
    images = json.loads((out / "images.json").read_text())
    assert [im["id"] for im in images] == [1, 3, 4]  # ... and was skipped, ids follow input order
    preds = json.loads((out / "masses_results.json").read_text())
    assert preds, "the tiny model keeps low-score boxes"
    by_id = {im["id"]: im for im in images}
    for p in preds:
        x, y, w, h = p["bbox"]
        im = by_id[p["image_id"]]
        assert -1 <= x and x + w <= im["width"] + 1 and y + h <= im["height"] + 1  # original frame
    for im in images:
        assert (out / "overlays" / f"{im['stem']}.png").is_file()

    # Map our ids to the canonical ones and score with the project's metrics.
    canon = {str(synthetic / c["file_name"]): c["id"] for c in coco["images"]}
    id_map = {im["id"]: canon[im["file_name"]] for im in images}
    for p in preds:
        p["image_id"] = id_map[p["image_id"]]
    gt = {**coco, "images": [c for c in coco["images"] if c["id"] in id_map.values()]}
    gt["annotations"] = [a for a in coco["annotations"] if a["image_id"] in id_map.values()]
    report = evaluate_boxes(gt, preds)
    assert {"ap50_coco", "ap50_voc", "recall", "sensitivity_at_fp", "froc"} <= set(report)


def test_predict_with_missing_weights_is_one_error_line(synthetic, tmp_path, capsys):
    from scripts.predict_mass import main as predict_main

    rc = predict_main(["--config-file", str(INSTANT), "--weights", str(tmp_path / "none.pth"),
                       "--input", str(synthetic), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights file not found" in err[0]


def test_predict_with_damaged_weights_is_one_error_line(synthetic, tmp_path, capsys):
    from scripts.predict_mass import main as predict_main

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    rc = predict_main(["--config-file", str(INSTANT), "--weights", str(junk),
                       "--input", str(synthetic), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(junk) in err[0] and "not a readable checkpoint" in err[0]


def test_train_net_instant_schedule_writes_checkpoint_and_report(synthetic, tmp_path):
    from detectron2.engine import default_argument_parser

    from mass_det.train_net import main

    out = tmp_path / "run"
    argv = ["--config-file", str(INSTANT), "MODEL.DEVICE", "cpu",
            "DATASETS.CANONICAL.ROOTS", f"['mdtest={synthetic}']",
            "DATASETS.TRAIN", "('mdtest_mass_train',)", "DATASETS.TEST", "('mdtest_mass_train',)",
            "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)]
    main(default_argument_parser().parse_args(argv))
    assert (out / "model_final.pth").is_file() and (out / "last_checkpoint").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    report = out / "inference" / "mdtest_mass_train" / "froc_report.json"
    assert report.is_file()
    # --resume with a finished schedule loads the checkpoint and trains no further
    main(default_argument_parser().parse_args(["--resume", *argv]))
    results = main(default_argument_parser().parse_args(
        ["--eval-only", *argv, "MODEL.WEIGHTS", str(out / "model_final.pth")]))
    assert "mass" in results
