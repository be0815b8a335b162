"""A model bundle (and any weights or config file given to prediction) is data, never code.

Each hostile file carries a payload that would create a marker file if it were ever executed; every
test checks that the marker does not exist and that the refusal is one line naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from common.errors import InputError  # noqa: E402
from deeplima.bundle import load_bundle, random_bundle  # noqa: E402
from deeplima.cli import main as deeplima_main  # noqa: E402
from mass_det.inference import build_default_predictor  # noqa: E402

# ResNet-18 GN instead of the instant test's ResNet-50: the bundle is built in seconds
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
IMAGENET = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def yaml_payload(marker: Path) -> str:
    return f'MODEL:\n  DEVICE: !!python/object/apply:os.system ["touch {marker}"]\n'


def one_line(err) -> str:
    msg = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    torch.set_num_threads(1)
    return random_bundle(tmp_path_factory.mktemp("good") / "bundle", mass_opts=TINY_MASS_OPTS,
                         operating_points={"default_fp": "1", "mass": {"1": {"threshold": 0.4}}})


@pytest.fixture
def bundle_dir(good_bundle, tmp_path) -> Path:
    """A fresh copy of the good bundle, to be spoilt."""
    out = tmp_path / "bundle"
    shutil.copytree(good_bundle.root, out)
    return out


def set_files(bundle: Path, **names):
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"].update(names)
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def cli_predict(bundle: Path, tmp_path, capsys, *extra) -> tuple[int, str]:
    rc = deeplima_main(["predict", str(tmp_path / "in.png"), "--output", str(tmp_path / "pred"),
                        "--model", str(bundle), "--no-progress", "--threads", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return rc, err


# ------------------------------------------------------------------- 1. a pickle in calc_model.pth
def test_calc_weights_pickle_is_never_unpickled(bundle_dir, tmp_path, capsys):
    from calc_seg.model import build_model, load_weights

    marker = tmp_path / "PWNED"
    torch.save({"model": Payload(marker)}, bundle_dir / "calc_model.pth")
    with pytest.raises(InputError) as err:
        load_weights(build_model(load_bundle(bundle_dir).calc_cfg()), bundle_dir / "calc_model.pth")
    assert one_line(err).startswith(f"{bundle_dir / 'calc_model.pth'}: ")
    assert "posix.system" in str(err.value) or "system" in str(err.value)
    rc, err = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2 and "calc_model.pth" in err
    assert not marker.exists()


def test_calc_trainer_resume_reads_data_only_and_its_checkpoints_are_data(tmp_path):
    from calc_seg.engine.trainer import CalcSegTrainer

    def fake_trainer():
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
        return types.SimpleNamespace(
            out=tmp_path, device=torch.device("cpu"), model=model, optimizer=opt, scheduler=sched,
            best_score=np.float64(0.5), start_epoch=0,
            history=[{"epoch": 1, "loss": np.float32(0.25), "pos_weight": np.float64(3.0),
                      "sens": (np.float64(0.1), None)}],
            cfg=types.SimpleNamespace(dump=lambda: "SEED: 0\n"))

    marker = tmp_path / "PWNED"
    torch.save({"model": Payload(marker), "optimizer": {}, "scheduler": {}, "epoch": 0},
               tmp_path / "model_last.pth")
    with pytest.raises(InputError) as err:
        CalcSegTrainer.resume(fake_trainer())
    assert one_line(err).startswith(f"{tmp_path / 'model_last.pth'}: ")
    assert not marker.exists()

    # what the trainer writes (numpy numbers in its history included) loads as data and resumes
    src = fake_trainer()
    torch.save(CalcSegTrainer.checkpoint(src, 3), tmp_path / "model_last.pth")
    torch.load(tmp_path / "model_last.pth", weights_only=True)
    dst = fake_trainer()
    assert CalcSegTrainer.resume(dst) is True
    assert dst.start_epoch == 4 and dst.best_score == 0.5
    assert dst.history == [{"epoch": 1, "loss": 0.25, "pos_weight": 3.0, "sens": [0.1, None]}]


# --------------------------------------------------------------------- 2. Python tags in a YAML config
def test_mass_and_calc_yaml_tags_are_refused(bundle_dir, tmp_path, capsys):
    from calc_seg.config import get_calc_seg_cfg
    from mass_det.config import get_mass_det_cfg

    marker = tmp_path / "PWNED"
    cfg_file = tmp_path / "evil.yaml"
    cfg_file.write_text(yaml_payload(marker))
    for load in (get_mass_det_cfg, get_calc_seg_cfg):
        with pytest.raises(InputError) as err:
            load(str(cfg_file))
        msg = one_line(err)
        assert msg.startswith(f"{cfg_file}: YAML tag refused") and "python/object/apply" in msg
    # in a _BASE_ file: that file is named
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: evil.yaml\n")
    with pytest.raises(InputError, match=f"^{cfg_file}: YAML tag refused"):
        get_mass_det_cfg(str(child))

    (bundle_dir / "mass_config.yaml").write_text(yaml_payload(marker))
    rc, err = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2 and "mass_config.yaml: YAML tag refused" in err
    shutil.copy(cfg_file, bundle_dir / "calc_config.yaml")
    with pytest.raises(InputError, match="calc_config.yaml: YAML tag refused"):
        load_bundle(bundle_dir).calc_cfg()
    assert not marker.exists()


def test_bundle_configs_may_not_name_a_base_file(bundle_dir):
    (bundle_dir / "calc_config.yaml").write_text("_BASE_: /etc/some.yaml\n")
    with pytest.raises(InputError) as err:
        load_bundle(bundle_dir).calc_cfg()
    assert one_line(err).startswith(f"{bundle_dir / 'calc_config.yaml'}: ") and "_BASE_" in str(err.value)


# ------------------------------------------------------------------ 3. pickled (.pkl) mass weights
def test_pkl_mass_weights_need_the_trust_flag(bundle_dir, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    with open(bundle_dir / "weights.pkl", "wb") as f:
        pickle.dump({"model": Payload(marker), "__author__": "x"}, f)
    set_files(bundle_dir, mass_weights="weights.pkl")
    with pytest.raises(InputError) as err:
        load_bundle(bundle_dir)
    msg = one_line(err)
    assert msg.startswith(f"{bundle_dir / 'weights.pkl'}: ") and "--trust-pickle" in msg
    rc, err = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2 and "weights.pkl" in err and "--trust-pickle" in err
    assert load_bundle(bundle_dir, trust_pickle=True).mass_weights.name == "weights.pkl"
    # detectron2 drops a "?query" from weight paths: a name with one is refused too
    (bundle_dir / "weights.pkl?matching_heuristics=True").write_bytes(b"")
    set_files(bundle_dir, mass_weights="weights.pkl?matching_heuristics=True")
    with pytest.raises(InputError, match="refused"):
        load_bundle(bundle_dir, trust_pickle=True)
    assert not marker.exists()


def test_predict_mass_and_the_checkpointer_refuse_local_pickles(good_bundle, tmp_path, capsys):
    from detectron2.modeling import build_model

    from mass_det.engine.trainer import MassDetCheckpointer
    from scripts.predict_mass import main as predict_main

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": Payload(marker), "__author__": "x"}, f)
    rc = predict_main(["--config-file", str(good_bundle.mass_config), "--weights", str(evil),
                       "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {evil}: ") and "--trust-pickle" in err[0]

    cfg = good_bundle.mass_cfg()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    with pytest.raises(InputError, match="trust_pickle=True"):
        MassDetCheckpointer(model, trust_pickle=False).load(str(evil))
    # a .pth is read as data whatever it holds
    torch.save({"model": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError) as e:
        MassDetCheckpointer(model).load(str(tmp_path / "evil.pth"))
    assert one_line(e).startswith(f"{tmp_path / 'evil.pth'}: not a readable checkpoint")
    assert not marker.exists()


def test_model_zoo_pickles_stay_trusted(tmp_path, monkeypatch):
    """The training configs' ImageNet R-50.pkl URL is the model zoo's own file: no flag needed."""
    from detectron2.utils.file_io import PathManager

    from mass_det.engine.trainer import MassDetCheckpointer, check_pickle_allowed

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("iopath.common.file_io.download",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    for handler in set(PathManager._path_handlers.values()):
        if hasattr(handler, "cache_map"):
            monkeypatch.setattr(handler, "cache_map", {})
    cached = tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    cached.parent.mkdir(parents=True)
    with open(cached, "wb") as f:  # a Caffe2 blob dict, as the real file
        pickle.dump({"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}, f)
    check_pickle_allowed(IMAGENET, trust_pickle=False)
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(3, 64, 7)
    MassDetCheckpointer(model, trust_pickle=False).load(IMAGENET)  # read, no error
    with pytest.raises(InputError, match="--trust-pickle"):
        check_pickle_allowed(str(cached), trust_pickle=False)  # the same file named locally


# ------------------------------------------------------------ 4. file names leaving the bundle folder
@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/hostname",
                                  "../other_bundle/calc_model.pth", "link.pth"])
def test_bundle_file_names_stay_inside_the_folder(bundle_dir, tmp_path, capsys, name):
    other = tmp_path / "other_bundle"
    other.mkdir()
    shutil.copy(bundle_dir / "calc_model.pth", other / "calc_model.pth")
    (bundle_dir / "link.pth").symlink_to(other / "calc_model.pth")
    set_files(bundle_dir, calc_weights=name)
    with pytest.raises(InputError) as err:
        load_bundle(bundle_dir)
    assert one_line(err).startswith(
        f"{bundle_dir / 'bundle.json'}: files.calc_weights {name!r} points outside the bundle folder")
    rc, err = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2 and "files.calc_weights" in err


def test_symlinks_inside_the_folder_are_fine(bundle_dir):
    (bundle_dir / "weights").mkdir()
    (bundle_dir / "calc_model.pth").rename(bundle_dir / "weights" / "calc.pth")
    (bundle_dir / "calc_link.pth").symlink_to(bundle_dir / "weights" / "calc.pth")
    set_files(bundle_dir, calc_weights="calc_link.pth")
    assert load_bundle(bundle_dir).calc_weights == bundle_dir / "calc_link.pth"


# ------------------------------------------------------------ 5. weights leaving parameters unloaded
def test_weights_that_leave_parameters_unloaded_are_refused(bundle_dir, tmp_path, capsys):
    from calc_seg.model import build_model, load_weights

    state = torch.load(bundle_dir / "mass_model.pth", weights_only=True)["model"]
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, bundle_dir / "mass_model.pth")
    with pytest.raises(InputError) as err:
        build_default_predictor(load_bundle(bundle_dir).mass_cfg())
    msg = one_line(err)
    assert msg.startswith(f"{bundle_dir / 'mass_model.pth'}: weights do not fit") and "backbone." in msg
    rc, err = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2 and "mass_model.pth" in err and "randomly initialised" in err
    # one layer left out is named
    gone = "roi_heads.box_predictor.cls_score.weight"
    torch.save({"model": {k: v for k, v in state.items() if k != gone}}, bundle_dir / "mass_model.pth")
    with pytest.raises(InputError, match=f"1 of its .* parameters .*{gone}"):
        build_default_predictor(load_bundle(bundle_dir).mass_cfg())
    # the U-Net's weights likewise
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, bundle_dir / "calc_model.pth")
    with pytest.raises(InputError) as err:
        load_weights(build_model(load_bundle(bundle_dir).calc_cfg()), bundle_dir / "calc_model.pth")
    msg = one_line(err)
    assert "missing" in msg and "encoder." in msg and "1 unexpected (foo.weight)" in msg


# -------------------------------------------------------------------------- malformed JSON files
@pytest.mark.parametrize("text", [
    b"not json", b"\xff\xfe{", b"[]", b'{"files": []}', b'{"files": {"mass_weights": 3}}',
    b'{"version": "1"}', b'{"version": 99}', b'{"model_card": [1]}', b'{"description": NaN}',
    b'{"extra": [1e999]}', b'{"format": "something-else"}',
])
def test_malformed_bundle_json_is_one_line(bundle_dir, text):
    (bundle_dir / "bundle.json").write_bytes(text)
    with pytest.raises(InputError) as err:
        load_bundle(bundle_dir)
    assert one_line(err).startswith(f"{bundle_dir / 'bundle.json'}: ")


@pytest.mark.parametrize("text", [
    "nope", "[]", '{"mass": []}', '{"mass": {"1": {"threshold": NaN}}}',
    '{"mass": {"1": {"threshold": 1e999}}}', '{"mass": {"1": {"threshold": "0.5"}}}',
    '{"mass": {"x": {"threshold": 0.5}}}', '{"mass": {"1": 0.5}}', '{"default_fp": "abc"}',
    '{"calc": {"1": {"threshold": 0.5, "sensitivity": Infinity}}}', '{"source": 3}',
])
def test_malformed_operating_points_are_one_line(bundle_dir, tmp_path, capsys, text):
    (bundle_dir / "operating_points.json").write_text(text)
    with pytest.raises(InputError) as err:
        load_bundle(bundle_dir)
    assert one_line(err).startswith(f"{bundle_dir / 'operating_points.json'}: ")
    rc, _ = cli_predict(bundle_dir, tmp_path, capsys)
    assert rc == 2


def test_the_good_bundle_still_loads(good_bundle):
    bundle = load_bundle(good_bundle.root)
    assert bundle.operating_points["mass"]["1"]["threshold"] == 0.4
    cfg = bundle.mass_cfg()
    assert cfg.MODEL.WEIGHTS == str(good_bundle.root / "mass_model.pth")
    build_default_predictor(cfg)  # the weights are read as data and fit
