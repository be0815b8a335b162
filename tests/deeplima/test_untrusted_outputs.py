"""No silent data loss with hostile inputs and output folders: unique output names over a whole run
(#6, #7), --resume keyed on the input's content and prediction folders never read back as inputs
(#12), non-finite arguments and unwritable output folders as one ``error:`` line (#16)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import common.io
from common.inputs import unique_output_stems
from common.preprocess import main as preprocess_main
from common.preprocess import preprocess


def mammogram(path: Path, seed: int, h: int = 160, w: int = 128) -> Path:
    """A small 8-bit PNG 'breast' (half ellipse, chest wall left) whose texture depends on ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.7 * w)) ** 2 < 1
    img = np.where(inside, rng.integers(60, 200, (h, w)), 0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def fail_writes(monkeypatch, exc: OSError, when=lambda path: True):
    """Make every atomic write of common.io whose target matches ``when`` raise ``exc`` (tests run as
    root, where a chmod'ed folder is still writable)."""
    real = common.io.atomic_write_bytes

    def write(path, data):
        if when(Path(path)):
            raise exc
        return real(path, data)

    monkeypatch.setattr(common.io, "atomic_write_bytes", write)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ common.preprocess
def test_6_preprocess_stems_are_unique_over_all_inputs(tmp_path, capsys):
    files = [mammogram(tmp_path / "a" / "x.png", 1), mammogram(tmp_path / "b" / "x.png", 2),
             mammogram(tmp_path / "c" / "x-2.png", 3)]
    out = tmp_path / "out"
    assert preprocess_main([*map(str, files), "--out", str(out), "--quiet"]) == 0
    stems = json.loads((out / "stems.json").read_text())["inputs"]
    assert [(e["file"], e["stem"], e["status"]) for e in stems] == [
        (str(files[0]), "x", "done"), (str(files[1]), "x-3", "done"), (str(files[2]), "x-2", "done")]
    for path, entry in zip(files, stems):  # every input's outputs are its own
        got = cv2.imread(str(out / f"{entry['stem']}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, preprocess(path).image)
        assert json.loads((out / f"{entry['stem']}.json").read_text())["source"] == str(path)
    assert "stems.json" in capsys.readouterr().err  # the renaming is not silent


def test_7_preprocess_stem_never_takes_another_stems_output_name(tmp_path):
    files = [mammogram(tmp_path / "foo.png", 1), mammogram(tmp_path / "foo_breast.png", 2)]
    out = tmp_path / "out"
    assert preprocess_main([*map(str, files), "--out", str(out), "--quiet"]) == 0
    stems = [e["stem"] for e in json.loads((out / "stems.json").read_text())["inputs"]]
    assert stems[0] == "foo" and stems[1] != "foo_breast"
    mask = cv2.imread(str(out / "foo_breast.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, preprocess(files[0]).breast_mask.astype(np.uint8) * 255)
    other = cv2.imread(str(out / f"{stems[1]}.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(other, preprocess(files[1]).image)
    names = [n for s in stems for n in (f"{s}.png", f"{s}_breast.png", f"{s}.json")]
    assert len(set(names)) == len(names) == 6
    # whatever the order, and case-insensitively (macOS / Windows file systems)
    assert unique_output_stems([Path("FOO_breast.dcm"), Path("foo.dcm")],
                               lambda s: (f"{s}.png", f"{s}_breast.png")) == ["FOO_breast", "foo-2"]


def test_7_preprocess_never_overwrites_an_input_in_the_output_folder(tmp_path):
    src = mammogram(tmp_path / "x.png", 1)
    before = src.read_bytes()
    assert preprocess_main([str(src), "--out", str(tmp_path), "--quiet"]) == 0
    assert src.read_bytes() == before
    assert json.loads((tmp_path / "stems.json").read_text())["inputs"][0]["stem"] == "x-2"


def test_16_preprocess_full_disk_fails_that_file_and_keeps_what_was_there(tmp_path, monkeypatch,
                                                                          capsys):
    files = [mammogram(tmp_path / "a.png", 1), mammogram(tmp_path / "b.png", 2)]
    out = tmp_path / "out"
    assert preprocess_main([str(files[0]), "--out", str(out), "--quiet"]) == 0
    earlier = {p.name: p.read_bytes() for p in out.glob("a*")}
    mammogram(files[0], 9)  # a.png changes; writing its new outputs will hit a full disk
    fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"),
                lambda p: p.name.startswith(".a_breast.png"))
    capsys.readouterr()
    rc = preprocess_main([*map(str, files), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"{files[0]}: cannot write its outputs" in err and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.glob("a*")} == earlier  # the earlier set, whole
    assert (out / "b.png").is_file() and not list(out.glob(".*"))  # the run went on; no leftovers
    status = {e["stem"]: e["status"] for e in json.loads((out / "stems.json").read_text())["inputs"]}
    assert status == {"a": "failed", "b": "done"}


def test_16_preprocess_read_only_output_is_one_error_line(tmp_path, monkeypatch, capsys):
    src = mammogram(tmp_path / "a.png", 1)
    fail_writes(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    rc = preprocess_main([str(src), "--out", str(tmp_path / "out"), "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("error: ") and "Permission denied" in line
    assert not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------ deeplima predict
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("detectron2")
    from deeplima.bundle import random_bundle

    torch.set_num_threads(1)
    return random_bundle(tmp_path_factory.mktemp("bundle"), mass_opts=TINY_MASS_OPTS).root


def predict(bundle, *args) -> int:
    from deeplima.cli import main

    return main(["predict", *map(str, args), "--model", str(bundle), "--threshold", "0.5",
                 "--no-progress", "--threads", "1"])


def test_6_predict_stems_are_unique_and_mapped(bundle, tmp_path):
    files = [mammogram(tmp_path / "in" / "a" / "x.png", 1), mammogram(tmp_path / "in" / "b" / "x.png", 2),
             mammogram(tmp_path / "in" / "c" / "x-2.png", 3)]
    out = tmp_path / "pred"
    assert predict(bundle, tmp_path / "in", "--output", out) == 0
    images = json.loads((out / "images.json").read_text())
    assert [(im["file_name"], im["stem"]) for im in images] == [
        (str(files[0]), "x"), (str(files[1]), "x-3"), (str(files[2]), "x-2")]
    for im in images:
        rec = json.loads((out / im["json"]).read_text())
        assert rec["source"] == str(Path(im["file_name"]).resolve())
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True
    assert [(e["file"], e["stem"], e["status"]) for e in run["inputs"]] == [
        (im["file_name"], im["stem"], "done") for im in images]


def test_12_resume_redoes_a_replaced_file_and_skips_prediction_folders(bundle, tmp_path):
    inp = tmp_path / "in"
    a, b = mammogram(inp / "a.png", 1), mammogram(inp / "b.png", 2)
    out = inp / "pred"  # an output folder inside the input folder
    assert predict(bundle, inp, "--output", out) == 0
    mammogram(a, 7)  # a new file at the same path
    assert predict(bundle, inp, "--output", out, "--resume") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["n_inputs"] == 2 and run["n_ignored_outputs"] > 0  # overlays/... are not mammograms
    assert run["n_done"] == 1 and run["n_skipped"] == 1
    assert {e["file"]: e["status"] for e in run["inputs"]} == {str(a): "done", str(b): "skipped"}
    rec = json.loads((out / "per_image" / "a.json").read_text())
    assert rec["source_sha256"] == common.io.sha256_file(a)
    assert [im["stem"] for im in json.loads((out / "images.json").read_text())] == ["a", "b"]


def test_16_non_finite_or_out_of_range_arguments_are_one_error_line(tmp_path, capsys):
    from deeplima.cli import main

    pred = ["predict", str(tmp_path), "--output", str(tmp_path / "o"), "--model", str(tmp_path)]
    cases = [
        [*pred, "--threshold", "nan"], [*pred, "--threshold", "inf"], [*pred, "--threshold", "1.5"],
        [*pred, "--target-fp", "nan"], [*pred, "--target-fp", "-1"], [*pred, "--threads", "-2"],
        ["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--output", str(tmp_path),
         "--mass-threshold", "nan"],
        ["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--output", str(tmp_path),
         "--fps", "1,nan"],
        ["calibrate", "--model", str(tmp_path), "--gt", str(tmp_path), "--default-fp", "inf"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        line = one_error_line(err)
        assert e.value.code == 2 and argv[-1] in line, (argv, line)
        assert err == line + "\n" and line.startswith("error: "), err  # no usage block
    assert not (tmp_path / "o").exists()


def test_16_predict_write_failure_is_that_images_failure(bundle, tmp_path, monkeypatch, capsys):
    a, b = mammogram(tmp_path / "in" / "a.png", 1), mammogram(tmp_path / "in" / "b.png", 2)
    out = tmp_path / "pred"
    assert predict(bundle, a, "--output", out) == 0
    earlier = {p: p.read_bytes() for p in out.rglob("a.*")}
    fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"),
                lambda p: p.name.startswith(".a.png"))  # a's overlay, say
    rc = predict(bundle, a, b, "--output", out)
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("a.*")} == earlier  # a's earlier outputs, whole
    failures = (out / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith(f"{a}: cannot write its outputs")
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True and run["n_done"] == 1 and run["failures"] == failures
    assert [im["stem"] for im in json.loads((out / "images.json").read_text())] == ["b"]
    assert not [p for p in out.rglob(".*")]  # no temporary file left


def test_16_predict_read_only_or_full_output_is_one_error_line(bundle, tmp_path, monkeypatch,
                                                              capsys):
    a = mammogram(tmp_path / "a.png", 1)
    out = tmp_path / "pred"
    with monkeypatch.context() as m:
        fail_writes(m, PermissionError(errno.EACCES, "Permission denied"))
        rc = predict(bundle, a, "--output", out)
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"error: {out}: ") and "Permission denied" in line
    # the disk fills up at the end: the per-image outputs stay, run.json says the run did not finish
    fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"),
                lambda p: p.name == "images.json")
    rc = predict(bundle, a, "--output", out)
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "No space left on device" in line and "--resume" in line
    assert json.loads((out / "per_image" / "a.json").read_text())["complete"] is True
    assert json.loads((out / "run.json").read_text())["complete"] is False
    monkeypatch.undo()
    assert predict(bundle, a, "--output", out, "--resume") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True and run["n_skipped"] == 1
