"""deeplima.Pipeline on tiny synthetic mammograms with randomly initialised instant-test models
(CPU); the two predictors and single-model predictors built from parts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
pydicom = pytest.importorskip("pydicom")

from calc_seg.inference import CalcPredictor  # noqa: E402
from common.errors import InputError  # noqa: E402
from common.inputs import collect_inputs, unique_stems  # noqa: E402
from deeplima.bundle import load_bundle, random_bundle  # noqa: E402
from deeplima.pipeline import FindingsPredictor, Pipeline  # noqa: E402
from mass_det.inference import MassPredictor  # noqa: E402

# small and fast: ResNet-18 GN instead of the instant test's ResNet-50
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


@pytest.fixture(scope="module")
def study(synthetic_dataset):
    return synthetic_dataset(n=1, seed=5, height=384, width=320)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.set_num_threads(1)
    bundle = random_bundle(tmp_path_factory.mktemp("bundle"), mass_opts=TINY_MASS_OPTS)
    return Pipeline(bundle, threshold=0.5, normalize_laterality=True)


def _mirrored_dicom(src, dst):
    ds = pydicom.dcmread(src)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    ds.save_as(dst)
    return dst


def test_results_are_in_the_original_frame_for_mirrored_images(pipeline, study, tmp_path,
                                                               monkeypatch):
    """An image A and its mirror copy B: laterality normalisation flips exactly one of them into the
    same normalised frame, so both models see identical pixels, and the results mapped back must be
    exact mirrors of each other."""
    from common.preprocess import Preprocessed, preprocess

    src = sorted((study / "images").glob("*.dcm"))[0]
    # the real mirrored file: normalised the other way, same pixels up to window rounding
    b_real = pipeline.preprocess(_mirrored_dicom(src, tmp_path / "mirror.dcm"))
    p = pipeline.preprocess(src)
    assert b_real.record["flipped"] != p.record["flipped"]
    assert np.abs(b_real.image.astype(int) - p.image.astype(int)).max() <= 1

    a = pipeline(src)
    # B's pre-processing, exactly: A's normalised pixels, reached by the other flip
    mirrored = Preprocessed(p.image, p.breast_mask,
                            {**p.record, "flipped": not p.record["flipped"]})
    monkeypatch.setattr(pipeline, "preprocess", lambda source: mirrored)
    b = pipeline(src)

    h, w = a.shape
    assert b.shape == (h, w)
    np.testing.assert_array_equal(b.image, a.image[:, ::-1])
    np.testing.assert_array_equal(b.breast_mask, a.breast_mask[:, ::-1])
    np.testing.assert_array_equal(b.calc_prob, a.calc_prob[:, ::-1])
    assert a.calc_prob.max() > 0  # a non-trivial map, or the check above proves nothing
    np.testing.assert_array_equal(b.calc_mask(False), a.calc_mask(False)[:, ::-1])
    assert sorted(c["point"][1] for c in b.calcifications) == sorted(
        c["point"][1] for c in a.calcifications)
    # boxes: x' = W - x - w
    assert len(a.masses) == len(b.masses) > 0
    ba = np.array([m["bbox"] for m in a.masses])
    bb = np.array([m["bbox"] for m in b.masses])
    ba[:, 0] = w - ba[:, 0] - ba[:, 2]
    np.testing.assert_allclose(bb, ba, atol=1e-6)
    # A's results are in A's stored frame: the same pixels as pre-processing without normalisation
    ref = preprocess(src, normalize_laterality=False)
    np.testing.assert_array_equal(a.image, ref.image)
    np.testing.assert_array_equal(a.breast_mask, ref.breast_mask)


def test_components_carry_masks_types_and_points(pipeline, study):
    src = sorted((study / "images").glob("*.dcm"))[0]
    res = pipeline(src)
    assert res.calc_prob.dtype == np.float32 and res.calc_prob.shape == res.shape
    assert res.breast_mask.dtype == bool and res.record["source"]
    for c in res.calcifications[:20]:
        m = res.component_mask(c["label"])
        assert m.sum() == c["area"]
        x, y, bw, bh = c["bbox"]
        assert m[y:y + bh, x:x + bw].sum() == c["area"]
        assert m[c["point"][1], c["point"][0]]
        assert c["type"] in ("dot", "vessel", "large")
        assert c["finding"] == (c["score"] >= 0.5)
    assert set(res.timings) == {"preprocess", "mass", "calc", "postprocess"}


def test_one_preprocessing_per_image(pipeline, study, monkeypatch):
    import deeplima.pipeline as pipe_module

    calls = []
    real = pipe_module.preprocess

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(pipe_module, "preprocess", counting)
    pipeline(sorted((study / "images").glob("*.dcm"))[0])
    assert len(calls) == 1


def test_bad_file_raises_one_line_input_error(pipeline, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a mammogram")
    with pytest.raises(InputError) as e:
        pipeline(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(InputError, match="not found"):
        pipeline(tmp_path / "absent.dcm")


def test_missing_bundle_files_are_named(tmp_path):
    with pytest.raises(InputError, match="bundle folder not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="no bundle.json"):
        load_bundle(tmp_path / "b")


def test_collect_inputs_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.dcm", "a/2.png", "a/notes.txt", "3.dcm"):
        (tmp_path / name).write_bytes(b"x")
    files = collect_inputs([tmp_path / "a", str(tmp_path / "*.dcm"), tmp_path / "a" / "1.dcm",
                            tmp_path / "missing.dcm"])
    assert [f.name for f in files] == ["1.dcm", "2.png", "3.dcm", "missing.dcm"]
    assert unique_stems([tmp_path / "x/1.dcm", tmp_path / "y/1.dcm"]) == ["1", "1-2"]


# ------------------------------------------------------------------ predictors built from parts
class _Instances:
    """What MassPredictor reads of detectron2's Instances."""

    def __init__(self, boxes, scores):
        self.pred_boxes = type("Boxes", (), {"tensor": torch.tensor(boxes, dtype=torch.float32)})()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def to(self, device):
        return self


class _FakeDetector:
    """A DefaultPredictor stand-in: fixed boxes in the frame of the (H, W, 3) array it is given."""

    def __init__(self):
        self.seen = []

    def __call__(self, rgb):
        self.seen.append(rgb)
        boxes = [[2.0, 3.0, 12.0, 23.0], [20.0, 5.0, 30.0, 9.0]]
        return {"instances": _Instances(boxes, [0.9, 0.3])}


class _Bright(torch.nn.Module):
    """Two-class 'U-Net': calcification logit 40 * (intensity - 0.5): bright pixels score ~1."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(40.0))

    def forward(self, x):
        fg = self.scale * (x - 0.5)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def test_mass_predictor_from_parts_takes_the_grey_image_as_three_channels():
    fake = _FakeDetector()
    image = np.arange(40 * 32, dtype=np.uint8).reshape(40, 32)
    boxes, scores = MassPredictor(fake)(image)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)
    assert scores.dtype == np.float32 and scores.shape == (2,)
    np.testing.assert_array_equal(boxes[0], [2, 3, 12, 23])  # XYXY in the image's own frame
    (rgb,) = fake.seen
    assert rgb.shape == (40, 32, 3) and rgb.dtype == np.uint8
    assert all((rgb[..., c] == image).all() for c in range(3))


def test_calc_predictor_from_parts_returns_map_labels_and_components():
    calc = CalcPredictor(_Bright(), window=32, stride=16, threshold=0.5, device="cpu")
    image = np.zeros((48, 40), np.uint8)
    image[10:13, 10:13] = 255  # one 3x3 bright dot
    image[30:32, 20:30] = 255  # one 2x10 bright line
    breast = np.ones(image.shape, bool)
    prob, labels, comps = calc(image, breast)
    assert prob.dtype == np.float32 and prob.shape == image.shape
    assert labels.dtype == np.int32 and labels.max() == len(comps) == 2
    assert sorted(c["area"] for c in comps) == [9, 20]
    for c in comps:
        x, y, w, h = c["bbox"]
        assert (labels[y:y + h, x:x + w] == c["label"]).sum() == c["area"]
        assert c["score"] > 0.99


def test_a_single_model_leaves_the_other_models_entries_out(monkeypatch):
    """Mass-only and calcification-only predictors: one pre-processing, the other model's entries
    None, results mirrored back like the pipeline's."""
    from common.preprocess import Preprocessed

    image = np.zeros((48, 40), np.uint8)
    image[10:13, 30:33] = 255
    pre = Preprocessed(image[:, ::-1].copy(), np.ones(image.shape, bool), {"flipped": True})
    mass_only = FindingsPredictor(MassPredictor(_FakeDetector()), thresholds={"mass": 0.5})
    monkeypatch.setattr(mass_only, "preprocess", lambda source: pre)
    res = mass_only("x.png")
    assert res.calcifications is None and res.calc_prob is None and res.calc_labels is None
    assert set(res.timings) == {"preprocess", "mass", "postprocess"}
    assert res.thresholds == {"mass": 0.5}
    # the box [2, 3, 12, 23] of the mirrored image, back in the original frame: x' = W - x1
    assert res.masses[0]["bbox"] == [40 - 12, 3, 10, 20] and res.masses[0]["finding"]
    assert not res.masses[1]["finding"] and res.findings() == ([res.masses[0]], [])
    np.testing.assert_array_equal(res.image, image)
    assert not res.calc_mask().any()

    calc_only = FindingsPredictor(calc=CalcPredictor(_Bright(), window=32, stride=16, device="cpu"),
                                  thresholds={"calc": 0.5})
    monkeypatch.setattr(calc_only, "preprocess", lambda source: pre)
    res = calc_only("x.png")
    assert res.masses is None and set(res.timings) == {"preprocess", "calc", "postprocess"}
    (comp,) = res.calcifications
    assert comp["bbox"] == [30, 10, 3, 3] and comp["finding"]  # original frame
    assert res.calc_mask()[11, 31] and res.calc_mask().sum() == 9
    with pytest.raises(ValueError, match="no threshold for calc"):
        FindingsPredictor(calc=calc_only.calc, thresholds={"mass": 0.5})
    with pytest.raises(ValueError):
        FindingsPredictor(thresholds={})
