"""deeplima.Pipeline on tiny synthetic mammograms with randomly initialised instant-test models (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
pydicom = pytest.importorskip("pydicom")

from common.errors import InputError  # noqa: E402
from deeplima.bundle import load_bundle, random_bundle  # noqa: E402
from deeplima.pipeline import Pipeline, collect_inputs, unique_stems  # noqa: E402

# small and fast: ResNet-18 GN instead of the instant test's ResNet-50
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from datasets.synthetic import generate

    root = tmp_path_factory.mktemp("pipe_syn")
    generate(root, n=1, seed=5, height=384, width=320, progress=False)
    return root


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
    mirrored = Preprocessed(p.image, p.breast_mask, {**p.record, "flipped": not p.record["flipped"]})
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
    import common.preprocess as prep

    calls = []
    real = prep.preprocess

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(prep, "preprocess", counting)
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
