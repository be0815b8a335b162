"""Mass detector initialisation: ImageNet weights by URL (offline message, cached copy), local
weight files that land in the model, the refusal to train frozen random layers (CPU, offline)."""

from __future__ import annotations

import pickle
import socket
import urllib.error
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.engine.trainer import (  # noqa: E402
    FrozenRandomInitError,
    MassDetCheckpointer,
    MassDetTrainer,
    WeightsNotFoundError,
    check_trainable_init,
    resolve_weights_file,
)

CONFIG_DIR = Path(mass_det.__file__).parent / "configs"
FULL = CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL.yaml"
SCRATCH = CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL_scratch.yaml"
IMAGENET = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
# Where iopath's HTTPURLHandler keeps IMAGENET under the cache folder (the URL's path).
IMAGENET_CACHED = Path("detectron2/ImageNetPretrained/MSRA/R-50.pkl")
# The paper's model shrunk to a ResNet-18 so that building it (and a trainer) takes a second.
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
       "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
DATASET = "mass_weights_test_train"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, an empty cache: every download fails the way urllib fails without a network.

    Returns the cache folder (``$FVCORE_CACHE``)."""
    torch.set_num_threads(1)
    cache = tmp_path / "iopath_cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr("iopath.common.file_io.download", no_network)
    # HTTPURLHandler remembers URLs it resolved earlier in the process: start every test empty.
    for handler in set(PathManager._path_handlers.values()):
        if hasattr(handler, "cache_map"):
            monkeypatch.setattr(handler, "cache_map", {})
    return cache


def _cfg(path=FULL, *opts):
    return get_mass_det_cfg(str(path), ["MODEL.DEVICE", "cpu", *R18, *opts])


def _random_backbone_state(cfg) -> dict:
    """A FrozenBN ResNet of ``cfg``'s depth with recognisable (non-default) values."""
    torch.manual_seed(1)
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    state = backbone.state_dict()
    for value in state.values():
        value.copy_(torch.rand_like(value) + 0.5)
    return state


def _c2_name(name: str) -> str | None:
    """detectron2 ResNet name -> Caffe2/Detectron blob name (the naming of the catalog's ImageNet
    files), or None for what such files do not hold (FrozenBN statistics are folded into them)."""
    if name.endswith(("running_mean", "running_var")):
        return None
    end = next(e for e in ("norm.weight", "norm.bias", "weight") if name.endswith("." + e))
    base = name[: -len(end) - 1]
    c2_end = {"norm.weight": "_bn_s", "norm.bias": "_bn_b"}.get(end, "_w")
    if base == "stem.conv1":
        return "conv1_w" if c2_end == "_w" else "res_conv1" + c2_end
    stage, block, layer = base.split(".")
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    return f"{stage}_{block}_{branch[layer]}{c2_end}"


def _write_pkl(path: Path, state: dict, fmt: str) -> Path:
    if fmt == "detectron2":  # {"model": ..., "__author__": ...}: detectron2's converted zoo files
        data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test",
                "matching_heuristics": True}
    else:  # plain blob dict in Caffe2/Detectron names
        data = {_c2_name(k): v.numpy() for k, v in state.items() if _c2_name(k)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def _assert_backbone_loaded(model, state: dict, fmt: str):
    sd = model.state_dict()
    n = 0
    for key, value in state.items():
        if fmt == "caffe2" and _c2_name(key) is None:
            continue
        assert torch.equal(sd[f"backbone.bottom_up.{key}"], value), key
        n += 1
    assert n > 50  # every conv and norm of the R-18, not a lucky few


def _register_tiny_dataset():
    """A one-image training set: enough for DefaultTrainer to build its loader (nothing is read)."""
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: [{"file_name": "unused.png", "image_id": 1,
                                                   "height": 64, "width": 64, "annotations": []}])
        MetadataCatalog.get(DATASET).set(thing_classes=["mass"])


def _trainer_opts(out: Path) -> list[str]:
    return ["DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()",
            "DATASETS.CANONICAL.ROOTS", "[]", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]


def test_paper_configs_start_from_imagenet_and_scratch_configs_from_nothing():
    for name in ("faster_rcnn_R50_C4_vanilla.yaml", "faster_rcnn_R50_FPN.yaml",
                 "faster_rcnn_R50_FPN_FL_NL.yaml"):
        assert get_mass_det_cfg(str(CONFIG_DIR / name)).MODEL.WEIGHTS == IMAGENET, name
    for path in (SCRATCH, CONFIG_DIR / "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml",
                 CONFIG_DIR / "quick_schedules" / "mass_det_instant_test.yaml"):
        cfg = get_mass_det_cfg(str(path))
        assert cfg.MODEL.WEIGHTS == "", path.name  # nothing to download
        assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0, path.name


@pytest.mark.parametrize("url, http", [
    (IMAGENET, "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"),
    ("catalog://ImageNetPretrained/FAIR/R-50-GN",
     "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/47261647/R-50-GN.pkl"),
])
def test_offline_download_is_one_line_naming_url_cache_and_ways_on(offline, url, http):
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights_file(url)
    msg = str(err.value)
    assert isinstance(err.value, WeightsNotFoundError)
    assert "\n" not in msg
    assert msg.startswith(f"{url}: cannot download")
    assert "Temporary failure in name resolution" in msg  # urllib's own reason
    assert str(offline / http.split("//", 1)[1].split("/", 1)[1]) in msg  # the cached file's path
    assert http in msg
    assert "MODEL.WEIGHTS /path/" in msg  # way on 1: a local copy
    assert "faster_rcnn_R50_FPN_FL_NL_scratch.yaml" in msg  # way on 2: from scratch


def test_cached_copy_is_used_offline(offline):
    cached = offline / IMAGENET_CACHED
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve_weights_file(IMAGENET) == str(cached)
    # DetectionCheckpointer's URL options are not part of the file name
    assert resolve_weights_file(IMAGENET + "?matching_heuristics=True") == str(cached)


def test_local_files_and_unknown_names(tmp_path):
    missing = tmp_path / "R-50.pkl"
    with pytest.raises(FileNotFoundError, match="weights file not found") as err:
        resolve_weights_file(str(missing))
    assert str(err.value) == f"{missing}: weights file not found"
    missing.write_bytes(b"x")
    assert resolve_weights_file(str(missing)) == str(missing)
    assert resolve_weights_file("") == ""  # empty = random initialisation
    with pytest.raises(WeightsNotFoundError, match="catalog://ImageNetPretrained/NOPE"):
        resolve_weights_file("catalog://ImageNetPretrained/NOPE")


@pytest.mark.parametrize("fmt", ["detectron2", "caffe2"])
def test_local_imagenet_pkl_lands_in_the_backbone(tmp_path, fmt):
    cfg = _cfg()
    state = _random_backbone_state(cfg)
    path = _write_pkl(tmp_path / "R-18.pkl", state, fmt)
    model = build_model(cfg)
    MassDetCheckpointer(model).load(resolve_weights_file(str(path)))
    _assert_backbone_loaded(model, state, fmt)


def test_trainer_loads_the_imagenet_url_from_the_cache(offline, tmp_path):
    """The paper's default MODEL.WEIGHTS, already downloaded: PathManager -> cache -> model."""
    _register_tiny_dataset()
    cfg = _cfg(FULL, *_trainer_opts(tmp_path / "run"))
    assert cfg.MODEL.WEIGHTS == IMAGENET
    state = _random_backbone_state(cfg)
    _write_pkl(offline / IMAGENET_CACHED, state, "caffe2")
    trainer = MassDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    _assert_backbone_loaded(trainer.model, state, "caffe2")


def test_trainer_offline_stops_before_training(tmp_path):
    _register_tiny_dataset()
    trainer = MassDetTrainer(_cfg(FULL, *_trainer_opts(tmp_path / "run")))
    with pytest.raises(WeightsNotFoundError, match=f"^{IMAGENET}: cannot download"):
        trainer.resume_or_load(resume=False)
    assert trainer.iter == 0


def test_train_net_prints_one_error_line(tmp_path):
    from mass_det.train_net import cli

    _register_tiny_dataset()
    argv = ["--config-file", str(FULL), "MODEL.DEVICE", "cpu", *R18, *_trainer_opts(tmp_path / "r")]
    with pytest.raises(SystemExit) as err:
        cli(argv)
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith(f"error: {IMAGENET}: cannot download")
    with pytest.raises(SystemExit) as err:
        cli([*argv, "MODEL.WEIGHTS", ""])
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith("error: MODEL.WEIGHTS is empty")


def test_predict_with_an_unreachable_url_is_one_error_line(tmp_path, capsys):
    from scripts.predict_mass import main as predict_main

    rc = predict_main(["--config-file", str(FULL), "--weights", IMAGENET, "--input", str(tmp_path),
                       "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {IMAGENET}: cannot download")


@pytest.mark.parametrize("opts, keys", [
    ([], ["MODEL.RESNETS.NORM FrozenBN", "MODEL.BACKBONE.FREEZE_AT 2"]),
    (["MODEL.RESNETS.NORM", "GN"], ["MODEL.BACKBONE.FREEZE_AT 2"]),
    (["MODEL.BACKBONE.FREEZE_AT", "0"], ["MODEL.RESNETS.NORM FrozenBN"]),
    (["MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.FPN.NORM", "FrozenBN"],
     ["MODEL.FPN.NORM FrozenBN"]),
])
def test_no_weights_with_frozen_layers_is_refused(opts, keys):
    cfg = _cfg(FULL, "MODEL.WEIGHTS", "", *opts)
    with pytest.raises(FrozenRandomInitError) as err:
        check_trainable_init(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert all(k in msg for k in keys), msg
    assert "MODEL.WEIGHTS" in msg and "faster_rcnn_R50_FPN_FL_NL_scratch.yaml" in msg  # the fixes
    with pytest.raises(FrozenRandomInitError):
        MassDetTrainer(cfg)  # refused before the model or the data are built


def test_frozen_layers_are_fine_over_weights_and_nothing_frozen_is_fine_without():
    check_trainable_init(_cfg(FULL))  # ImageNet weights: FrozenBN and FREEZE_AT 2 as in the paper
    check_trainable_init(_cfg(FULL, "MODEL.WEIGHTS", "/some/R-50.pkl"))
    check_trainable_init(_cfg(SCRATCH))
