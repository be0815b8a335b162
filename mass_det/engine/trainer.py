"""``MassDetTrainer``: detectron2's DefaultTrainer with our data, optimizer, evaluator and checkpoints.

What DefaultTrainer already gives and we keep: periodic evaluation (``TEST.EVAL_PERIOD``), periodic
checkpoints (``SOLVER.CHECKPOINT_PERIOD``) and ``--resume`` from ``OUTPUT_DIR/last_checkpoint``,
TensorBoard/JSON/console writers, DistributedDataParallel under ``detectron2.engine.launch``.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..data.mapper import MassDatasetMapper
from ..evaluation.froc_evaluator import FROCEvaluator
from ..modeling.backbone import convert_torchvision_resnet_names

__all__ = ["MassDetCheckpointer", "MassDetTrainer", "build_mass_optimizer", "check_weights_file"]

logger = logging.getLogger(__name__)


def check_weights_file(path: str) -> None:
    """Raise ``FileNotFoundError`` with one clear line when ``path`` is set but is not a local file.

    Nothing is downloaded: URLs and model-zoo names are refused, since the tool must run offline.
    """
    if not path:
        return
    if "://" in path:
        raise FileNotFoundError(
            f"{path}: only local weight files are supported (nothing is downloaded)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weights file not found")


class MassDetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that also reads torchvision ResNet ``.pth`` files.

    detectron2 model-zoo ``.pkl`` files (e.g. ImageNet ``R-50.pkl``) and our own ``.pth`` checkpoints
    load as usual; a torchvision state dict (keys ``layer1.0.conv1.weight`` ...) is renamed by
    :func:`convert_torchvision_resnet_names` and matched by suffix into ``backbone.bottom_up``.
    """

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # torch/pickle raise many types for a damaged or foreign file
            from common.errors import InputError

            raise InputError(filename, f"not a readable checkpoint ({type(e).__name__}: {e})") from None
        model = loaded.get("model", {})
        if isinstance(model, dict) and "layer1.0.conv1.weight" in model:
            self.logger.info("Reading torchvision ResNet weights from %s", filename)
            return {
                "model": convert_torchvision_resnet_names(model),
                "__author__": "torchvision",
                "matching_heuristics": True,
            }
        return loaded


def build_mass_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (paper §4.1.1) or SGD per ``SOLVER.OPTIMIZER.NAME``, with detectron2's parameter groups
    (norm/bias weight decay and LR factors) and optional gradient clipping."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.NAME.upper()
    if name == "ADAM":
        optimizer_class = torch.optim.Adam
        kwargs = {"betas": tuple(cfg.SOLVER.OPTIMIZER.BETAS), "eps": cfg.SOLVER.OPTIMIZER.EPS}
    elif name == "SGD":
        optimizer_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER.NAME must be ADAM or SGD, got {cfg.SOLVER.OPTIMIZER.NAME!r}")
    optimizer = optimizer_class(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs
    )
    return maybe_add_gradient_clipping(cfg, optimizer)


class MassDetTrainer(DefaultTrainer):
    """DefaultTrainer reading mammograms through :class:`MassDatasetMapper` (train and test alike)
    and evaluating with :class:`FROCEvaluator`."""

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ right after it creates its checkpointer; ours replaces it
        # before the checkpoint hooks capture it.
        self.checkpointer = MassDetCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True):
        if not (resume and self.checkpointer.has_checkpoint()):
            check_weights_file(self.cfg.MODEL.WEIGHTS)
        return super().resume_or_load(resume=resume)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_mass_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=MassDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=MassDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return FROCEvaluator.from_cfg(cfg, dataset_name, output_dir=output_folder)
