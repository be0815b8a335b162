"""Model bundle: one folder holding everything :class:`deeplima.pipeline.Pipeline` needs.

Layout::

    BUNDLE/
      bundle.json              manifest: format version, file names below, free-text description
      mass_config.yaml         full detectron2 config of the mass detector (``cfg.dump()``)
      mass_model.pth           its weights (``{"model": state_dict}``, DetectionCheckpointer format)
      calc_config.yaml         full calc_seg config (``cfg.dump()``)
      calc_model.pth           U-Net weights (``{"model": state_dict}``)
      operating_points.json    thresholds chosen on a validation set (optional, see
                               :mod:`deeplima.operating_point`)

The configs are complete dumps, not references to YAML files of the source tree, so a bundle keeps
working when the repository's configs change. Every file is written atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.io import atomic_write_bytes, atomic_write_json, read_json

__all__ = [
    "BUNDLE_VERSION",
    "Bundle",
    "load_bundle",
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


@dataclass
class Bundle:
    """Paths of a bundle's files (all checked to exist by :func:`load_bundle`).

    ``operating_points`` is the content of ``operating_points.json`` ({} when the bundle has none).
    """

    root: Path
    mass_config: Path
    mass_weights: Path
    calc_config: Path
    calc_weights: Path
    operating_points: dict
    manifest: dict

    def mass_cfg(self, opts=()):
        """The mass detector's detectron2 config with ``MODEL.WEIGHTS`` set to the bundle's weights."""
        import mass_det  # noqa: F401  (registers the backbones and ROI heads the config names)
        from mass_det.config import get_mass_det_cfg

        cfg = get_mass_det_cfg(str(self.mass_config), list(opts))
        cfg.MODEL.WEIGHTS = str(self.mass_weights)
        return cfg

    def calc_cfg(self, opts=()):
        """The calc_seg config (frozen) with ``MODEL.WEIGHTS`` cleared (weights loaded separately)."""
        from calc_seg.config import load_calc_seg_cfg

        return load_calc_seg_cfg(str(self.calc_config), ["MODEL.WEIGHTS", "", *opts])


def _state_dict_bytes(model_or_state) -> bytes:
    import torch

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
) -> Bundle:
    """Write a bundle folder and return it loaded.

    Args:
        mass_cfg: detectron2 ``CfgNode`` of the mass detector (``mass_det.config.get_mass_det_cfg``).
        mass_weights: ``nn.Module``, state dict, or path of a checkpoint (``model_final.pth``).
        calc_cfg: calc_seg ``CfgNode``.
        calc_weights: ``nn.Module``, state dict, or checkpoint path (``model_best.pth``).
        operating_points: content of ``operating_points.json`` (None: no file is written).
        description: free text kept in ``bundle.json`` (how the models were trained).
        extra: more json-able keys for ``bundle.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mass_cfg = mass_cfg.clone()
    mass_cfg.defrost()
    mass_cfg.MODEL.WEIGHTS = ""  # the bundle's own file is used; never a path of the training machine
    calc_cfg = calc_cfg.clone()
    calc_cfg.defrost()
    calc_cfg.MODEL.WEIGHTS = ""
    atomic_write_bytes(out / FILES["mass_config"], mass_cfg.dump().encode())
    atomic_write_bytes(out / FILES["calc_config"], calc_cfg.dump().encode())
    atomic_write_bytes(out / FILES["mass_weights"], _weights_bytes(mass_weights))
    atomic_write_bytes(out / FILES["calc_weights"], _weights_bytes(calc_weights))
    if operating_points is not None:
        atomic_write_json(out / FILES["operating_points"], operating_points)
    manifest = {"format": "deeplima-bundle", "version": BUNDLE_VERSION, "files": FILES,
                "description": description, **(extra or {})}
    atomic_write_json(out / "bundle.json", manifest)
    return load_bundle(out)


def save_operating_points(bundle: Bundle | str | Path, operating_points: dict) -> Path:
    """(Re)write ``operating_points.json`` of an existing bundle."""
    root = bundle.root if isinstance(bundle, Bundle) else Path(bundle)
    path = atomic_write_json(root / FILES["operating_points"], operating_points)
    if isinstance(bundle, Bundle):
        bundle.operating_points = operating_points
    return path


def load_bundle(root: str | Path) -> Bundle:
    """Check a bundle folder and return its paths.

    Raises:
        InputError: the folder, ``bundle.json`` or one of the config / weight files is missing (one line
            naming the missing path), or ``operating_points.json`` is not valid JSON.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "model bundle folder not found")
    manifest_path = root / "bundle.json"
    if not manifest_path.is_file():
        raise InputError(root, "not a model bundle (no bundle.json)")
    manifest: dict[str, Any] = read_json(manifest_path)
    files = {**FILES, **(manifest.get("files") or {})}
    paths = {}
    for key in ("mass_config", "mass_weights", "calc_config", "calc_weights"):
        p = root / files[key]
        if not p.is_file():
            raise InputError(p, f"model bundle is missing its {key.replace('_', ' ')} file")
        paths[key] = p
    ops_path = root / files["operating_points"]
    ops = read_json(ops_path) if ops_path.is_file() else {}
    return Bundle(root=root, operating_points=ops, manifest=manifest, **paths)


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
    import torch
    from detectron2.modeling import build_model

    import calc_seg
    import mass_det
    from calc_seg.config import load_calc_seg_cfg
    from calc_seg.model import build_model as build_unet
    from mass_det.config import get_mass_det_cfg

    mass_config = mass_config or (Path(mass_det.__file__).parent / "configs" / "quick_schedules"
                                  / "mass_det_instant_test.yaml")
    calc_config = calc_config or (Path(calc_seg.__file__).parent / "configs" / "quick_schedules"
                                  / "unet_gn_instant_test.yaml")
    mass_cfg = get_mass_det_cfg(str(mass_config), ["MODEL.DEVICE", "cpu", *mass_opts])
    calc_cfg = load_calc_seg_cfg(str(calc_config), list(calc_opts))
    torch.manual_seed(seed)
    return save_bundle(out_dir, mass_cfg, build_model(mass_cfg), calc_cfg, build_unet(calc_cfg),
                       operating_points=operating_points,
                       description="randomly initialised models (tests and benchmarks only)")
