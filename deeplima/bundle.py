"""Model bundle: one folder holding everything :class:`deeplima.pipeline.Pipeline` needs.

Layout::

    BUNDLE/
      bundle.json              manifest: format version, file names below, free-text description and
                               the model card (below)
      mass_config.yaml         full detectron2 config of the mass detector (``cfg.dump()``)
      mass_model.pth           its weights (``{"model": state_dict}``, DetectionCheckpointer format;
                               a checkpoint file given as the source is copied as is, optimizer
                               included)
      calc_config.yaml         full calc_seg config (``cfg.dump()``)
      calc_model.pth           U-Net weights (``{"model": state_dict}``)
      operating_points.json    thresholds chosen on a validation set (optional, see
                               :mod:`deeplima.operating_point`)

The configs are complete dumps, not references to YAML files of the source tree, so a bundle keeps
working when the repository's configs change. Every file is written atomically.

A bundle is data, never code (:func:`load_bundle`): the file names of ``bundle.json`` must lie
inside the bundle folder (symlinks resolved), the JSON files must be strict JSON of the expected
types (no NaN / Infinity), the configs are read with YAML's safe loader and may not name a
``_BASE_`` file, weights are read with ``torch.load(weights_only=True)`` and must set every
parameter of their model. Mass weights in detectron2's pickle format (``*.pkl``) can run code when
unpickled: they are refused unless the bundle is trusted explicitly (``load_bundle(...,
trust_pickle=True)``, ``deeplima predict --trust-pickle``).

Model card: the ``model_card`` entry of ``bundle.json`` says what the bundle holds and where it
comes from (readers ignore keys they do not know, so bundles with and without a card load alike)::

    "model_card": {
      "created": "2025-01-31T12:00:00+00:00",
      "mass": {"config": "mass_config.yaml", "config_sha256": "...",
               "weights": "mass_model.pth", "weights_sha256": "...",  # = the source checkpoint's
               # key config values:
               "settings": {"MODEL.RESNETS.DEPTH": 50, "DATASETS.TRAIN": [...], ...},
               "source": {"output_dir", "checkpoint" ("best" | "final"), "config", "weights",
                          "iteration"} or null},
      "calc": {... the same, "source" with "epochs_done", "best_val_recall_at_1fp"},
      "calibration": null or {"file": "operating_points.json", "source", "default_fp",
                      "thresholds": {"mass": {"1": t, ...}, "calc": {...}},
                      "data_root", "split", "n_images", "fps",
                      "mass": {"n_lesions", "recall", "sensitivity_at_fp", "ap50_coco"},
                      "calc": {"n_lesions", "recall", "sensitivity_at_fp", "gt_labels", "per_type"}}
    }

:func:`build_bundle` (``deeplima bundle``) assembles a bundle from the two trainings' output folders
(:func:`mass_source`, :func:`calc_source`); :func:`deeplima.calibration.calibrate_bundle` chooses
its operating points (``deeplima bundle --calibrate-on``, ``deeplima calibrate``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from detectron2.modeling import build_model as build_mass_model

import calc_seg
import mass_det  # also registers the mass detector's components that configs name
from calc_seg.config import get_calc_seg_cfg
from calc_seg.model import build_model as build_calc_model
from calc_seg.model import load_checkpoint
from common.errors import InputError
from common.io import atomic_write_bytes, atomic_write_json, sha256_file
from mass_det.config import get_mass_det_cfg

from .operating_point import check_operating_points

__all__ = [
    "BUNDLE_VERSION",
    "CHECKPOINT_CHOICES",
    "Bundle",
    "ModelSource",
    "build_bundle",
    "calc_source",
    "check_weights_fit",
    "load_bundle",
    "load_model_cfg",
    "mass_source",
    "random_bundle",
    "save_bundle",
    "save_operating_points",
]

BUNDLE_VERSION = 1
FILES = {
    "mass_config": "mass_config.yaml",
    "mass_weights": "mass_model.pth",
    "calc_config": "calc_config.yaml",
    "calc_weights": "calc_model.pth",
    "operating_points": "operating_points.json",
}
NAMES = {"mass": "mass detector", "calc": "calcification U-Net"}
# config values copied into the model card: architecture, input size, training data and length
CARD_SETTINGS = {
    "mass": ("MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.RESNETS.DEPTH",
             "MODEL.RESNETS.NORM", "MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_HEADS.NAME",
             "MODEL.NONLOCAL.ENABLED", "MODEL.FOCAL_LOSS.ENABLED", "MODEL.FOCAL_LOSS.RPN",
             "MODEL.FOCAL_LOSS.BOX_NORMALIZER", "MODEL.PROPOSAL_GENERATOR.NAME", "SEED",
             "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.MAMMO.NORMALIZE_LATERALITY",
             "INPUT.MAMMO.REMOVE_ARTIFACTS", "DATASETS.CANONICAL.ROOTS", "DATASETS.TRAIN",
             "SOLVER.MAX_ITER"),
    "calc": ("MODEL.ENCODER", "MODEL.ENCODER_DEPTH", "MODEL.DECODER_CHANNELS", "MODEL.NORM",
             "PATCH.SIZE", "TEST.WINDOW", "TEST.STRIDE", "TEST.PLACEMENT", "TEST.THRESHOLD",
             "LABELS.MIN_AREA_MM2",
             "DATA.ROOT", "DATA.TRAIN_SPLIT", "SOLVER.EPOCHS"),
}


@dataclass
class Bundle:
    """Paths of a bundle's files (all checked to exist by :func:`load_bundle`).

    ``operating_points`` is the content of ``operating_points.json`` ({} when the bundle has none).
    ``trust_pickle``: the caller trusts this bundle's pickled (``.pkl``) mass weights.
    """

    root: Path
    mass_config: Path
    mass_weights: Path
    calc_config: Path
    calc_weights: Path
    operating_points: dict
    manifest: dict
    trust_pickle: bool = False

    @property
    def model_card(self) -> dict:
        """The ``model_card`` of ``bundle.json`` ({} for bundles written before it existed)."""
        return self.manifest.get("model_card") or {}

    def mass_cfg(self, opts=()):
        """The mass detector's detectron2 config with ``MODEL.WEIGHTS`` set to the bundle's weights
        (read as data, and required to set every parameter, by the predictor that loads them:
        :func:`mass_det.inference.build_default_predictor`).

        Raises:
            InputError: unusable config (one line).
        """
        cfg = load_model_cfg("mass", self.mass_config, opts, in_bundle=True)
        cfg.MODEL.WEIGHTS = str(self.mass_weights)
        return cfg

    def calc_cfg(self, opts=()):
        """The calc_seg config (frozen) with ``MODEL.WEIGHTS`` cleared (weights loaded separately,
        by :func:`calc_seg.model.load_weights`, which reads them as data and requires every
        parameter)."""
        return load_model_cfg("calc", self.calc_config, ["MODEL.WEIGHTS", "", *opts],
                              in_bundle=True)


def _state_dict_bytes(model_or_state) -> bytes:
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    buf = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in state.items()}}, buf)
    return buf.getvalue()


def _weights_bytes(src) -> bytes:
    """A model, a state dict, or a path to a checkpoint (copied as is)."""
    if isinstance(src, str | Path):
        p = Path(src)
        if not p.is_file():
            raise InputError(p, "weights file not found")
        return p.read_bytes()
    return _state_dict_bytes(src)


def save_bundle(
    out_dir: str | Path,
    mass_cfg,
    mass_weights,
    calc_cfg,
    calc_weights,
    operating_points: dict | None = None,
    description: str = "",
    extra: dict | None = None,
    sources: dict | None = None,
) -> Bundle:
    """Write a bundle folder, with its model card, and return it loaded.

    Args:
        mass_cfg: detectron2 ``CfgNode`` of the mass detector
            (``mass_det.config.get_mass_det_cfg``).
        mass_weights: ``nn.Module``, state dict, or path of a checkpoint (``model_final.pth``).
        calc_cfg: calc_seg ``CfgNode``.
        calc_weights: ``nn.Module``, state dict, or checkpoint path (``model_best.pth``).
        operating_points: content of ``operating_points.json`` (None: no file is written).
        description: free text kept in ``bundle.json`` (how the models were trained).
        extra: more json-able keys for ``bundle.json``.
        sources: ``{"mass": {...}, "calc": {...}}``, where each model comes from (json-able; the
            ``source`` entries of the model card).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mass_cfg = mass_cfg.clone()
    mass_cfg.defrost()
    mass_cfg.MODEL.WEIGHTS = ""  # the bundle's own file is used, never a training machine's path
    calc_cfg = calc_cfg.clone()
    calc_cfg.defrost()
    calc_cfg.MODEL.WEIGHTS = ""
    atomic_write_bytes(out / FILES["mass_config"], mass_cfg.dump().encode())
    atomic_write_bytes(out / FILES["calc_config"], calc_cfg.dump().encode())
    atomic_write_bytes(out / FILES["mass_weights"], _weights_bytes(mass_weights))
    atomic_write_bytes(out / FILES["calc_weights"], _weights_bytes(calc_weights))
    if operating_points is not None:
        atomic_write_json(out / FILES["operating_points"], operating_points)
    card: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for kind, cfg in (("mass", mass_cfg), ("calc", calc_cfg)):
        card[kind] = {
            "config": FILES[f"{kind}_config"],
            "config_sha256": sha256_file(out / FILES[f"{kind}_config"]),
            "weights": FILES[f"{kind}_weights"],
            "weights_sha256": sha256_file(out / FILES[f"{kind}_weights"]),
            "settings": _cfg_values(cfg, CARD_SETTINGS[kind]),
            "source": (sources or {}).get(kind),
        }
    card["calibration"] = _calibration_card(operating_points)
    manifest = {"format": "deeplima-bundle", "version": BUNDLE_VERSION, "files": FILES,
                "description": description, "model_card": card, **(extra or {})}
    atomic_write_json(out / "bundle.json", manifest)
    return load_bundle(out)


def _cfg_values(cfg, keys: Iterable[str]) -> dict:
    """``{"A.B.C": value}`` of the keys the config has (tuples as lists)."""
    out = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, part):
                break
            node = getattr(node, part)
        else:
            out[key] = list(node) if isinstance(node, tuple | list) else node
    return out


def _calibration_card(operating_points: dict | None) -> dict | None:
    """The model card's ``calibration`` entry: thresholds and validation figures (None when
    uncalibrated)."""
    if not operating_points:
        return None
    card = {
        "file": FILES["operating_points"],
        "source": operating_points.get("source", ""),
        "default_fp": operating_points.get("default_fp"),
        "thresholds": {kind: {k: v["threshold"] for k, v in operating_points[kind].items()}
                       for kind in ("mass", "calc") if kind in operating_points},
    }
    # figures of the calibration split, when calibrate() measured them
    card.update(operating_points.get("validation") or {})
    return card


def save_operating_points(bundle: Bundle | str | Path, operating_points: dict) -> Path:
    """(Re)write ``operating_points.json`` of an existing bundle and the ``calibration`` entry of
    the model card in its ``bundle.json`` (added to bundles written without a card)."""
    root = bundle.root if isinstance(bundle, Bundle) else Path(bundle)
    path = atomic_write_json(root / FILES["operating_points"], operating_points)
    manifest_path = root / "bundle.json"
    manifest = read_json_strict(manifest_path) if manifest_path.is_file() else None
    if isinstance(manifest, dict):
        if not isinstance(manifest.get("model_card"), dict):
            manifest["model_card"] = {}
        manifest["model_card"]["calibration"] = _calibration_card(operating_points)
        atomic_write_json(manifest_path, manifest)
    if isinstance(bundle, Bundle):
        bundle.operating_points = operating_points
        if isinstance(manifest, dict):
            bundle.manifest = manifest
    return path


MAX_JSON_BYTES = 16 << 20  # bundle.json and operating_points.json are a few kB


def read_json_strict(path: str | Path):
    """A JSON file as data: UTF-8, strict JSON (no NaN / Infinity, no number too large for a float).

    Raises:
        InputError: unreadable, too large, not UTF-8, not JSON, or holding a non-finite number (one
            line naming the file).
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise InputError(path, f"JSON file larger than {MAX_JSON_BYTES >> 20} MiB")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file (JSON expected)") from None
    except OSError as e:
        raise InputError(path, f"cannot read the file ({e.strerror or type(e).__name__})") from None

    def no_constant(name):
        raise ValueError(f"non-finite number {name} (strict JSON has none)")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e.msg} at line {e.lineno})") from None
    except ValueError as e:
        raise InputError(path, f"invalid JSON ({e})") from None
    except RecursionError:
        raise InputError(path, "invalid JSON (nested too deeply)") from None
    where = _non_finite_path(data)
    if where:  # 1e999 parses as inf
        raise InputError(path, f"invalid JSON (number out of range at {where})")
    return data


def _non_finite_path(obj, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    items = (obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list)
             else ())
    for k, v in items:
        found = _non_finite_path(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def _check_manifest(manifest, path: Path) -> dict:
    """Types of the ``bundle.json`` entries this module reads (one-line InputError naming the
    file)."""
    if not isinstance(manifest, dict):
        raise InputError(path, f"not a bundle manifest (a JSON object expected, got "
                               f"{type(manifest).__name__})")
    fmt = manifest.get("format")
    if fmt is not None and fmt != "deeplima-bundle":
        raise InputError(path, f"not a deeplima bundle manifest (format {fmt!r})")
    version = manifest.get("version")
    if version is not None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputError(path, f"version must be an integer, got {version!r}")
        if version > BUNDLE_VERSION:
            raise InputError(path, f"bundle format version {version} is newer than this deeplima "
                                   f"reads ({BUNDLE_VERSION})")
    for key, kind in (("files", dict), ("model_card", dict), ("description", str)):
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            what = "object" if kind is dict else "string"
            raise InputError(path, f"{key} must be a JSON {what}, got {type(value).__name__}")
    return manifest


def _bundle_file(root: Path, manifest_path: Path, key: str, name) -> Path:
    """``root / name`` for a ``files`` entry of ``bundle.json``, refused unless it is a plain
    relative name that stays inside the bundle folder once symlinks are resolved."""
    where = f"files.{key}"
    if not isinstance(name, str) or not name.strip():
        raise InputError(manifest_path, f"{where} must be a file name, got {name!r}")
    if "\0" in name or "?" in name or "#" in name:
        # ("?": detectron2 reads the rest of a weights path as URL options)
        raise InputError(manifest_path,
                         f"{where} {name!r}: file names with NUL, '?' or '#' are refused")
    path = root / name
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # symlink loop, unreadable
        inside = False
    if not inside or Path(name).is_absolute():
        raise InputError(manifest_path, f"{where} {name!r} points outside the bundle folder "
                                        "(bundle files must lie inside it)")
    return path


def load_bundle(root: str | Path, trust_pickle: bool = False) -> Bundle:
    """Check a bundle folder and return its paths.

    The bundle is treated as data from anywhere: ``bundle.json`` and ``operating_points.json`` must
    be strict JSON of the expected types, every file name in ``bundle.json`` must resolve (symlinks
    included) inside the folder, and pickled mass weights (``*.pkl``, which run code when unpickled)
    are refused unless ``trust_pickle`` (``deeplima predict --trust-pickle``). The weights
    themselves are checked when used (:meth:`Bundle.mass_cfg`, :func:`calc_seg.model.load_weights`).

    Raises:
        InputError: the folder, ``bundle.json`` or one of the config / weight files is missing (one
            line naming the missing path), a file name points outside the folder (naming
            ``bundle.json``, the key and the name), a JSON file is malformed, or the mass weights
            are a refused pickle.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "model bundle folder not found")
    manifest_path = root / "bundle.json"
    if not manifest_path.is_file():
        raise InputError(root, "not a model bundle (no bundle.json)")
    manifest: dict[str, Any] = _check_manifest(read_json_strict(manifest_path), manifest_path)
    given = manifest.get("files") or {}
    files = {**FILES, **given}
    paths = {key: _bundle_file(root, manifest_path, key, name) for key, name in files.items()}
    for key in ("mass_config", "mass_weights", "calc_config", "calc_weights"):
        if not paths[key].is_file():
            raise InputError(paths[key],
                             f"model bundle is missing its {key.replace('_', ' ')} file")
    if paths["mass_weights"].name.endswith(".pkl") and not trust_pickle:
        raise InputError(paths["mass_weights"],
                         "a .pkl file is a Python pickle (detectron2/Caffe2 weights), and "
                         "unpickling can run any code: refused unless you trust this bundle and "
                         "say so (deeplima predict --trust-pickle; load_bundle(..., "
                         "trust_pickle=True))")
    ops_path = paths["operating_points"]
    ops = check_operating_points(read_json_strict(ops_path), ops_path) if ops_path.is_file() else {}
    return Bundle(root=root, operating_points=ops, manifest=manifest, trust_pickle=trust_pickle,
                  **{key: paths[key] for key in ("mass_config", "mass_weights", "calc_config",
                                                 "calc_weights")})


def random_bundle(
    out_dir: str | Path,
    mass_config: str | Path | None = None,
    calc_config: str | Path | None = None,
    mass_opts=(),
    calc_opts=(),
    seed: int = 0,
    operating_points: dict | None = None,
) -> Bundle:
    """A bundle of randomly initialised models (tests, timing benchmarks; not for predictions).

    Defaults: the instant-test configs of both pipelines (``quick_schedules/*_instant_test.yaml``).
    """
    mass_config = mass_config or (Path(mass_det.__file__).parent / "configs" / "quick_schedules"
                                  / "mass_det_instant_test.yaml")
    calc_config = calc_config or (Path(calc_seg.__file__).parent / "configs" / "quick_schedules"
                                  / "unet_gn_instant_test.yaml")
    mass_cfg = get_mass_det_cfg(str(mass_config), ["MODEL.DEVICE", "cpu", *mass_opts])
    calc_cfg = get_calc_seg_cfg(str(calc_config), list(calc_opts))
    torch.manual_seed(seed)
    return save_bundle(out_dir, mass_cfg, build_mass_model(mass_cfg), calc_cfg,
                       build_calc_model(calc_cfg),
                       operating_points=operating_points,
                       description="randomly initialised models (tests and benchmarks only)",
                       sources={k: {"initialisation": f"random (torch seed {seed})"}
                                for k in ("mass", "calc")})


# ------------------------------------------------------------------------ from training outputs
CHECKPOINT_CHOICES = ("best", "final")


@dataclass(frozen=True)
class ModelSource:
    """The config and weights files of one model, and the training folder they were found in.

    ``output_dir`` and ``checkpoint`` ("best" | "final") are None when the files were named
    directly.
    """

    config: Path
    weights: Path
    output_dir: Path | None = None
    checkpoint: str | None = None

    def card(self) -> dict:
        """The model card's ``source`` entry (absolute paths of the training machine)."""
        return {
            "output_dir": None if self.output_dir is None else str(self.output_dir.resolve()),
            "checkpoint": self.checkpoint,
            "config": str(self.config.resolve()),
            "weights": str(self.weights.resolve()),
        }


def _named_by_last_checkpoint(out: Path) -> Path | None:
    """The file that detectron2's ``OUTPUT_DIR/last_checkpoint`` names (None without that file)."""
    tag = out / "last_checkpoint"
    if not tag.is_file():
        return None
    name = tag.read_text(encoding="utf-8").strip()
    if not name:
        return None
    path = out / name
    if not path.is_file():
        raise InputError(path, f"checkpoint named in {tag} not found")
    return path


def _find_mass_checkpoint(out: Path, checkpoint: str) -> Path:
    final = out / "model_final.pth"
    if checkpoint == "best":  # the end of the schedule; mass_det keeps no model-selection copy
        if final.is_file():
            return final
        last = _named_by_last_checkpoint(out)
    else:  # the latest checkpoint written (model_final.pth once training has finished)
        last = _named_by_last_checkpoint(out) or (final if final.is_file() else None)
    if last is None:
        raise InputError(final, "mass detector checkpoint not found (and no last_checkpoint file "
                                "naming another one)")
    return last


def _find_calc_checkpoint(out: Path, checkpoint: str) -> Path:
    path = out / ("model_best.pth" if checkpoint == "best" else "model_last.pth")
    if not path.is_file():
        why = ("the trainer writes it at the first validation" if checkpoint == "best"
               else "the trainer writes it after each epoch")
        raise InputError(path, f"calcification U-Net checkpoint not found ({why})")
    return path


def _source(kind: str, output_dir, config, weights, checkpoint: str, find) -> ModelSource:
    name = NAMES[kind]
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {checkpoint!r}")
    if output_dir is not None:
        if config is not None or weights is not None:
            raise InputError(None, f"{name}: give either its training output folder or its config "
                                   "and weights files, not both")
        out = Path(output_dir)
        if not out.is_dir():
            raise InputError(out, f"{name} training output folder not found")
        cfg = out / "config.yaml"
        if not cfg.is_file():
            raise InputError(cfg, f"{name} training config not found (the trainer writes it into "
                                  "OUTPUT_DIR)")
        return ModelSource(cfg, find(out, checkpoint), out, checkpoint)
    if config is None or weights is None:
        raise InputError(None, f"{name}: give its training output folder, or both a config and a "
                               "weights file")
    for path, what in ((config, "config"), (weights, "weights")):
        if not Path(path).is_file():
            raise InputError(path, f"{name} {what} file not found")
    return ModelSource(Path(config), Path(weights))


def mass_source(output_dir=None, config=None, weights=None,
                checkpoint: str = "best") -> ModelSource:
    """Config and weights of the mass detector: from a ``mass_det.train_net`` OUTPUT_DIR, or named.

    In OUTPUT_DIR, detectron2 writes ``config.yaml`` (``default_setup``), the periodic
    ``model_XXXXXXX.pth``, ``model_final.pth`` at the end of the schedule, and ``last_checkpoint``
    naming the latest of them. ``checkpoint="best"`` takes ``model_final.pth``, else the file named
    in ``last_checkpoint`` (a run stopped early); ``"final"`` takes the file named in
    ``last_checkpoint``, else ``model_final.pth``.

    Raises:
        InputError: a file is missing (one line naming it) or the arguments are incomplete.
    """
    return _source("mass", output_dir, config, weights, checkpoint, _find_mass_checkpoint)


def calc_source(output_dir=None, config=None, weights=None,
                checkpoint: str = "best") -> ModelSource:
    """Config and weights of the calcification U-Net: from a ``calc_seg.train_net`` OUTPUT_DIR or
    named files.

    In OUTPUT_DIR, ``calc_seg.train_net`` writes ``config.yaml`` and the trainer ``model_best.pth``
    (best validation recall at 1 FP/image) and ``model_last.pth`` (after each epoch).
    ``checkpoint="best"`` takes ``model_best.pth``, ``"final"`` ``model_last.pth``.

    Raises:
        InputError: a file is missing (one line naming it) or the arguments are incomplete.
    """
    return _source("calc", output_dir, config, weights, checkpoint, _find_calc_checkpoint)


def load_model_cfg(kind: str, config: str | Path, opts=(), in_bundle: bool = False):
    """The config of one model (``kind`` "mass" | "calc") from its YAML file (safe YAML only), with
    ``opts`` (``KEY VALUE`` overrides) merged; the calc_seg config is returned frozen.

    ``in_bundle``: a bundle's config is a complete dump and may not name another file (``_BASE_``),
    which could lie anywhere (or be a URL).

    Raises:
        InputError: an unusable file (YAML, unknown keys, inconsistent values), one line naming it.
    """
    if in_bundle:
        _refuse_base(config)
    try:
        if kind == "mass":
            return get_mass_det_cfg(str(config), list(opts))
        cfg = get_calc_seg_cfg(str(config), list(opts))
        cfg.freeze()
        return cfg
    except InputError:
        raise
    except Exception as e:  # YAML, unknown keys, inconsistent values: all mean "not this model's"
        reason = " ".join(str(e).split())[:300]
        raise InputError(config, f"not a usable {NAMES[kind]} config ({type(e).__name__}: {reason})"
                         ) from None


def _refuse_base(config: Path) -> None:
    try:
        data = yaml.safe_load(Path(config).read_bytes())
    except (OSError, yaml.YAMLError):
        return  # the config loader reports it, naming the file
    if isinstance(data, dict) and "_BASE_" in data:
        raise InputError(config, "a bundle's config is a complete dump: _BASE_ (a reference to "
                                 "another config file) is refused")


def check_weights_fit(kind: str, cfg, weights: str | Path) -> dict:
    """Build the model of ``cfg`` on the CPU and check that ``weights`` holds exactly its
    parameters.

    detectron2 loads mass weights non-strictly (mismatches are only logged), so a config and weights
    of different runs would otherwise make a bundle that silently predicts with random layers.

    Returns:
        What the checkpoint says about itself: ``{"iteration"}`` (detectron2) or ``{"epochs_done",
        "best_val_recall_at_1fp"}`` (calc_seg), when present.

    Raises:
        InputError: unreadable checkpoint, or missing / unexpected / differently shaped parameters
            (one line with counts and an example key).
    """
    weights = Path(weights)
    if weights.name.endswith(".pkl"):
        raise InputError(weights, "a .pkl file is a Python pickle, which can run code when loaded: "
                                  "bundles hold .pth checkpoints, read as data only")
    # a checkpoint is data: tensors and plain containers only (torch.load(weights_only=True))
    ckpt = load_checkpoint(weights)
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        state = ckpt if isinstance(ckpt, dict) and ckpt else None
    if state is None or not all(hasattr(v, "shape") for v in state.values()):
        raise InputError(weights, "checkpoint holds no state dict")
    # DistributedDataParallel prefix, which both loaders strip too
    state = {k.removeprefix("module."): v for k, v in state.items()}

    if kind == "mass":
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        model = build_mass_model(cfg)
    else:
        model = build_calc_model(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected
                if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {what} (e.g. {keys[0]})"
                    for keys, what in ((missing, "missing"), (unexpected, "unexpected"),
                                       (reshaped, "of another shape")) if keys]
        raise InputError(weights, f"weights do not fit the {NAMES[kind]} config: parameters "
                                  f"{', '.join(problems)}")
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict):
        if isinstance(ckpt.get("iteration"), int):
            meta["iteration"] = ckpt["iteration"]
        if isinstance(ckpt.get("epoch"), int):
            meta["epochs_done"] = ckpt["epoch"] + 1  # calc_seg stores the index of the last epoch
        if isinstance(ckpt.get("best_score"), float) and ckpt["best_score"] >= 0:
            meta["best_val_recall_at_1fp"] = ckpt["best_score"]
    return meta


def build_bundle(
    out_dir: str | Path,
    mass: ModelSource,
    calc: ModelSource,
    description: str = "",
) -> Bundle:
    """A bundle from the files of two trainings (``deeplima bundle``), not yet calibrated.

    Loads both configs, checks that each weights file fits its config (:func:`check_weights_fit`)
    and writes the bundle with :func:`save_bundle` (weights copied byte for byte, model card with
    their SHA-256 and ``mass.card()`` / ``calc.card()`` as sources). An ``operating_points.json``
    left in ``out_dir`` by an earlier bundle is removed: its thresholds belong to other weights.
    Operating points are chosen afterwards by :func:`deeplima.calibration.calibrate_bundle`
    (``deeplima bundle --calibrate-on``), which needs both models running.

    Args:
        mass, calc: from :func:`mass_source` / :func:`calc_source`.

    Raises:
        InputError: an unusable config or weights file (one line naming it).
    """
    mass_cfg = load_model_cfg("mass", mass.config)
    calc_cfg = load_model_cfg("calc", calc.config)
    sources = {"mass": {**mass.card(), **check_weights_fit("mass", mass_cfg, mass.weights)},
               "calc": {**calc.card(), **check_weights_fit("calc", calc_cfg, calc.weights)}}
    out = Path(out_dir)
    (out / FILES["operating_points"]).unlink(missing_ok=True)
    return save_bundle(out, mass_cfg, mass.weights, calc_cfg, calc.weights,
                       description=description, sources=sources)
