"""``deeplima predict`` at scale (CPU): pre-processing workers and batched models, torchrun over
two gloo processes, and ``--resume`` after a process died all write the folder that one process
predicting image after image writes (JSON equal up to timings, PNGs byte for byte)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from common.errors import InputError  # noqa: E402
from deeplima.bundle import random_bundle  # noqa: E402
from deeplima.cli import main  # noqa: E402
from deeplima.distributed import Ranks  # noqa: E402
from deeplima.loader import ImageSource, prepared_batches  # noqa: E402
from deeplima.pipeline import Preprocessor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
#: what may differ between two runs that predicted the same images: how long they took
TIMINGS = {"timings_s", "seconds"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_dataset):
    """Four 384x320 synthetic DICOMs (two CC/MLO studies) and a corrupt file, a bundle of tiny
    random models, and the reference folder: one process, image after image."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("scaleout")
    root = synthetic_dataset(n=2, seed=11, height=384, width=320)
    inputs = base / "inputs"
    shutil.copytree(root / "images", inputs)
    (inputs / "corrupt.dcm").write_bytes(b"DICM? no")
    # One U-Net tile per forward pass. The tiles of a batch of images share forward passes, and
    # the CPU's kernels for a pass of one tile differ from those of larger passes in the last bits
    # (~5e-6, enough to change a few 16-bit calc_prob pixels); passes of a fixed size give the same
    # maps whatever the neighbours, so this is exact for any --batch-size and sharding.
    bundle = random_bundle(base / "bundle", mass_opts=TINY_MASS_OPTS,
                           calc_opts=["TEST.BATCH_SIZE", "1"]).root
    args = [str(inputs), "--model", str(bundle), "--threshold", "0.5", "--no-progress"]
    ref = base / "ref"
    rc = main(["predict", *args, "--output", str(ref), "--threads", "1"])
    return {"inputs": inputs, "bundle": bundle, "args": args, "ref": ref, "rc": rc}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _strip(obj, drop=TIMINGS):
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def assert_same_folder(ref: Path, got: Path, run_json_drop=TIMINGS) -> None:
    """Same files; PNGs and text byte for byte; JSON equal but for timings (``run.json``: but for
    ``run_json_drop``)."""
    assert _files(got) == _files(ref)
    assert not [p for p in got.rglob(".*")]  # no temporary file left
    for name in sorted(_files(ref)):
        a, b = ref / name, got / name
        if name.endswith(".json"):
            drop = run_json_drop if name == "run.json" else TIMINGS
            assert _strip(json.loads(b.read_text()), drop) == _strip(
                json.loads(a.read_text()), drop), name
        else:
            assert b.read_bytes() == a.read_bytes(), name


def torchrun(nproc: int, *argv: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc -m deeplima ARGV`` (or ``script ARGV``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    target = [str(script)] if script is not None else ["-m", "deeplima"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), "--monitor_interval", "0.1", *target, *argv],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_the_reference_run(setup):
    ref = setup["ref"]
    assert setup["rc"] == 1  # the corrupt file failed, the four images are done
    run = json.loads((ref / "run.json").read_text())
    assert run["complete"] is True and run["n_done"] == 4 and run["n_failed"] == 1
    images = json.loads((ref / "images.json").read_text())
    assert [im["id"] for im in images] == [1, 2, 3, 4]  # ids in input order: corrupt.dcm is last
    results = json.loads((ref / "masses_results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 2, 3, 4}


def test_workers_and_batches_write_the_same_folder(setup, tmp_path):
    out = tmp_path / "fast"
    rc = main(["predict", *setup["args"], "--output", str(out), "--threads", "1",
               "--workers", "2", "--batch-size", "3", "--device", "cpu"])
    assert rc == 1
    assert_same_folder(setup["ref"], out)


def test_two_torchrun_processes_write_the_single_process_folder(setup, tmp_path):
    out = tmp_path / "dist"
    r = torchrun(2, "predict", *setup["args"], "--output", str(out), "--device", "cpu",
                 "--workers", "1", "--batch-size", "2")
    assert r.returncode != 0  # both ranks report the corrupt file (exit status 1)
    assert r.stdout.count("4 image(s) predicted") == 1, r.stdout + r.stderr  # rank 0 reports
    assert "corrupt.dcm" in r.stderr
    assert_same_folder(setup["ref"], out)
    # ids from the global input list, whichever rank wrote the image (rank 0: 1, 3; rank 1: 2, 4)
    assert [json.loads((out / "per_image" / f"{im['stem']}.json").read_text())["image_id"]
            for im in json.loads((out / "images.json").read_text())] == [1, 2, 3, 4]


CRASHING_RANK = """
    import os
    import sys

    import deeplima.writer as writer

    real = writer.write_rendered


    def write_then_die(*args, **kwargs):
        rec = real(*args, **kwargs)
        if os.environ["RANK"] == "1":  # rank 1 dies after its first image
            os._exit(3)
        return rec


    writer.write_rendered = write_then_die
    from deeplima.cli import main

    sys.exit(main(sys.argv[1:]))
"""


def test_resume_completes_a_run_that_lost_a_rank(setup, tmp_path):
    out = tmp_path / "dist"
    script = tmp_path / "crashing_rank.py"
    script.write_text(textwrap.dedent(CRASHING_RANK))
    r = torchrun(2, "predict", *setup["args"], "--output", str(out), "--device", "cpu",
                 "--workers", "1", script=script)
    assert r.returncode != 0
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is False and not (out / "images.json").exists()
    finished = {p.stem: p.stat().st_mtime_ns for p in (out / "per_image").glob("*.json")}
    assert 1 <= len(finished) < 4, r.stderr  # rank 1's first image at least; its second never

    # any number of processes resumes it: here one, with workers and batches
    rc = main(["predict", *setup["args"], "--output", str(out), "--threads", "1", "--resume",
               "--workers", "2", "--batch-size", "3"])
    assert rc == 1
    run = json.loads((out / "run.json").read_text())
    assert run["n_skipped"] == len(finished) and run["n_done"] == 4 - len(finished)
    assert {p.stem: p.stat().st_mtime_ns for p in (out / "per_image").glob("*.json")
            if p.stem in finished} == finished  # finished images are not redone
    assert_same_folder(setup["ref"], out, run_json_drop=TIMINGS | {"n_done", "n_skipped",
                                                                   "status"})


def test_a_bad_file_in_a_worker_is_handed_back(setup, tmp_path):
    good = sorted(setup["inputs"].glob("*.dcm"))[0]
    items = [(0, good, "a"), (1, setup["inputs"] / "corrupt.dcm", "b"),
             (2, tmp_path / "missing.dcm", "c"), (3, good, "d")]
    source = ImageSource(items, Preprocessor())
    batches = list(prepared_batches(source, batch_size=2, workers=2))
    got = [it for b in batches for it in b]
    assert [it.index for it in got] == [0, 1, 2, 3]  # in order, nothing lost
    assert [len([it for it in b if it.preprocessed is not None]) for b in batches] == [2]
    assert got[1].error.startswith(f"{items[1][1]}: ") and got[1].preprocessed is None
    assert got[2].error == f"{items[2][1]}: file not found" and got[2].sha256 is None
    assert got[0].sha256 == got[3].sha256 and got[0].seconds > 0


def test_ranks_share_the_inputs_round_robin():
    shards = [Ranks(rank=r, world_size=3).shard(8) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert Ranks().gather("x") == ["x"] and Ranks().broadcast(5) == 5


def test_device_and_loader_arguments_are_checked(setup, tmp_path, capsys):
    for flag, value in (("--device", "gpu"), ("--device", "cuda:x"), ("--batch-size", "0"),
                        ("--workers", "-1")):
        with pytest.raises(SystemExit) as e:
            main(["predict", *setup["args"], "--output", str(tmp_path / "o"), flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and value in err


def _die_on_b(path: str):
    if path.endswith("b.dcm"):
        os._exit(9)  # a native decoder crash, say
    return Preprocessor()(path)


def test_a_worker_that_dies_stops_the_run_with_one_line(setup, tmp_path):
    good = sorted(setup["inputs"].glob("*.dcm"))[0]
    items = [(0, good, "a"), (1, tmp_path / "b.dcm", "b"), (2, good, "c")]
    with pytest.raises(InputError, match="pre-processing worker process died") as e:
        list(prepared_batches(ImageSource(items, _die_on_b), workers=1))
    assert "\n" not in str(e.value) and "--resume" in str(e.value)


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    from deeplima.distributed import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert str(choose_device("cuda")) == str(choose_device("auto")) == "cuda:1"
    assert str(choose_device(None, "cuda")) == "cuda:1"
    assert str(choose_device("cuda:0")) == "cuda:0"  # as given
    assert str(choose_device("cpu")) == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert str(choose_device("cuda")) == "cuda"  # one process: as before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert str(choose_device("cuda")) == str(choose_device(None, "auto")) == "cpu"
