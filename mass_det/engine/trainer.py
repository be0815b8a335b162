"""``MassDetTrainer``: detectron2's DefaultTrainer with our data, optimizer, evaluator and checkpoints.

What DefaultTrainer already gives and we keep: periodic evaluation (``TEST.EVAL_PERIOD``), periodic
checkpoints (``SOLVER.CHECKPOINT_PERIOD``) and ``--resume`` from ``OUTPUT_DIR/last_checkpoint``,
TensorBoard/JSON/console writers, DistributedDataParallel when several processes train
(``mass_det.train_net --num-gpus N`` or ``torchrun``), on GPUs (NCCL) or on the CPU (gloo).
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.catalog import ModelCatalog
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.file_io import Detectron2Handler, PathManager
from detectron2.utils.logger import setup_logger
from iopath.common.file_io import get_cache_dir

from common.amp import native_bf16
from common.errors import InputError, checkpoint_error

from ..data.mapper import MassDatasetMapper
from ..evaluation.froc_evaluator import FROCEvaluator
from ..modeling.backbone import convert_torchvision_resnet_names
from ..modeling.roi_heads import FocalLossROIHeads
from ..modeling.rpn import FocalLossRPN

__all__ = [
    "FrozenRandomInitError",
    "IgnoredLossSwitchError",
    "MassDetCheckpointer",
    "MassDetTrainer",
    "WeightsNotFoundError",
    "CPUAutocastTrainer",
    "build_mass_optimizer",
    "check_loss_switches",
    "check_pickle_allowed",
    "check_trainable_init",
    "is_pickle_weights",
    "load_mass_weights",
    "resolve_weights_file",
]

logger = logging.getLogger(__name__)


# Where MODEL.WEIGHTS may point besides a local file: detectron2's model zoo and plain URLs, all
# resolved by detectron2's PathManager (download once, then read from iopath's cache).
ZOO_PREFIXES = ("detectron2://", "catalog://", "http://", "https://")
# The way on when neither the ImageNet weights nor a copy of them can be had.
SCRATCH_CONFIG = "mass_det/configs/faster_rcnn_R50_FPN_FL_NL_scratch.yaml"


class WeightsNotFoundError(FileNotFoundError):
    """``MODEL.WEIGHTS`` cannot be had as a local file; ``str(err)`` is one line that names it."""


class FrozenRandomInitError(ValueError):
    """The config would train with randomly initialised layers frozen; ``str(err)`` is one line."""


class IgnoredLossSwitchError(ValueError):
    """A ``MODEL.FOCAL_LOSS`` switch is on but the named module ignores it; ``str(err)`` is one line."""


def resolve_weights_file(path: str) -> str:
    """Local path of a ``MODEL.WEIGHTS`` value; ``""`` (random initialisation) stays ``""``.

    A local file is returned as is. A model-zoo name or URL (``detectron2://``, ``catalog://``,
    ``http(s)://``) goes through detectron2's PathManager, which downloads it once into iopath's
    cache (``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``) and afterwards reads the cached
    copy, offline too. A ``?query`` (DetectionCheckpointer's ``matching_heuristics`` option) is
    ignored here.

    Raises:
        WeightsNotFoundError: a local file that does not exist, a ``catalog://`` name detectron2
            does not know, or a download that failed (offline): one line naming the URL, the cache
            and the ways on (a local copy in ``MODEL.WEIGHTS``, or the from-scratch config).
    """
    if not path:
        return ""
    if not path.startswith(ZOO_PREFIXES):
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"{path}: weights file not found")
        return path
    url = urlparse(path)._replace(query="").geturl()
    try:
        return PathManager.get_local_path(url)
    except (KeyError, RuntimeError):  # ModelCatalog.get: a catalog:// name it does not know
        raise WeightsNotFoundError(
            f"{path}: not a name in detectron2's model catalog (detectron2.checkpoint.catalog)"
        ) from None
    except OSError as e:  # urllib's URLError / HTTPError (offline, proxy, 404), unwritable cache
        raise WeightsNotFoundError(_download_failed_message(path, url, e)) from None


def _download_failed_message(path: str, url: str, error: OSError) -> str:
    """One line: what failed, where the file is cached once downloaded, and the two ways on."""
    if url.startswith(Detectron2Handler.PREFIX):
        http_url = Detectron2Handler.S3_DETECTRON2_PREFIX + url[len(Detectron2Handler.PREFIX):]
    elif url.startswith("catalog://"):
        http_url = ModelCatalog.get(url[len("catalog://"):])
    else:
        http_url = url
    # HTTPURLHandler keeps the URL's path under the cache folder: a copy put there is found offline.
    cached = os.path.join(get_cache_dir(), urlparse(http_url).path.lstrip("/"))
    reason = " ".join(str(error).split()) or type(error).__name__
    name = os.path.basename(urlparse(http_url).path)
    return (
        f"{path}: cannot download the pretrained weights ({reason}); once downloaded they are "
        f"cached as {cached} (FVCORE_CACHE sets the folder). Offline, either give a local copy "
        f"(MODEL.WEIGHTS /path/{name}, fetched from {http_url} on another machine, or a "
        f"torchvision resnet50 .pth, see Base-MassDet.yaml) or train from scratch with "
        f"--config-file {SCRATCH_CONFIG}"
    )


def check_trainable_init(cfg) -> None:
    """Refuse a training config that keeps randomly initialised layers frozen.

    Without ``MODEL.WEIGHTS`` the backbone starts random. ``FrozenBN`` then normalises with fixed
    made-up statistics (mean 0, variance 1: an un-normalised network that can never adapt), and
    ``MODEL.BACKBONE.FREEZE_AT > 0`` keeps the stem (and the first stages) at their random values.
    Both are right only over pretrained weights (detectron2's defaults assume them).

    Raises:
        FrozenRandomInitError: one line naming the offending keys and the two fixes.
    """
    if cfg.MODEL.WEIGHTS:
        return
    frozen = [
        f"{key} FrozenBN"
        for key, norm in (("MODEL.RESNETS.NORM", cfg.MODEL.RESNETS.NORM),
                          ("MODEL.FPN.NORM", cfg.MODEL.FPN.NORM))
        if norm == "FrozenBN"
    ]
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        frozen.append(f"MODEL.BACKBONE.FREEZE_AT {cfg.MODEL.BACKBONE.FREEZE_AT}")
    if frozen:
        raise FrozenRandomInitError(
            f"MODEL.WEIGHTS is empty, so {' and '.join(frozen)} would train with random layers "
            "frozen: give ImageNet weights (MODEL.WEIGHTS "
            "detectron2://ImageNetPretrained/MSRA/R-50.pkl or a local copy), or train from scratch "
            f"with {SCRATCH_CONFIG} "
            "(MODEL.RESNETS.NORM GN, MODEL.FPN.NORM GN, MODEL.BACKBONE.FREEZE_AT 0)"
        )


def _registered_subclass(registry, name: str, cls: type) -> bool:
    try:
        obj = registry.get(name)
    except KeyError:  # e.g. "PrecomputedProposals", which detectron2 handles without its registry
        return False
    return isinstance(obj, type) and issubclass(obj, cls)


def check_loss_switches(cfg) -> None:
    """Refuse a focal-loss switch that the modules named in the config would silently ignore.

    ``MODEL.FOCAL_LOSS.ENABLED`` is read only by :class:`FocalLossROIHeads` (``ROI_HEADS.NAME``) and
    ``MODEL.FOCAL_LOSS.RPN`` only by :class:`FocalLossRPN` (``PROPOSAL_GENERATOR.NAME``), as
    detectron2 picks modules by name.

    Raises:
        IgnoredLossSwitchError: one line naming the switch and the module to name.
    """
    fl = cfg.MODEL.FOCAL_LOSS
    problems = []
    if fl.ENABLED and not _registered_subclass(
        ROI_HEADS_REGISTRY, cfg.MODEL.ROI_HEADS.NAME, FocalLossROIHeads
    ):
        problems.append(
            f"MODEL.FOCAL_LOSS.ENABLED True needs MODEL.ROI_HEADS.NAME FocalLossROIHeads "
            f"(got {cfg.MODEL.ROI_HEADS.NAME!r})"
        )
    if fl.RPN and not _registered_subclass(
        PROPOSAL_GENERATOR_REGISTRY, cfg.MODEL.PROPOSAL_GENERATOR.NAME, FocalLossRPN
    ):
        problems.append(
            f"MODEL.FOCAL_LOSS.RPN True needs MODEL.PROPOSAL_GENERATOR.NAME FocalLossRPN "
            f"(got {cfg.MODEL.PROPOSAL_GENERATOR.NAME!r})"
        )
    if problems:
        raise IgnoredLossSwitchError(
            "; ".join(problems) + ": otherwise the switch would be ignored and the model would "
            "train with cross-entropy"
        )


# Pickled weights (detectron2 / Caffe2 ``.pkl``) that are detectron2's own model-zoo files: read
# without --trust-pickle. Any other pickle can run code when unpickled.
MODEL_ZOO_PREFIXES = ("detectron2://", "catalog://", Detectron2Handler.S3_DETECTRON2_PREFIX)
TRUST_PICKLE_HINT = (
    "a .pkl file is a Python pickle (detectron2/Caffe2 weights), and unpickling can run any code: "
    "refused unless you trust its source and say so (--trust-pickle; trust_pickle=True in Python)"
)


def is_pickle_weights(path) -> bool:
    """Whether detectron2's checkpointer would read ``path`` with ``pickle``: it unpickles names ending
    in ``.pkl`` once a URL ``?query`` is dropped (``weights.pkl?matching_heuristics=True`` too)."""
    return urlparse(str(path))._replace(query="").geturl().endswith(".pkl")


def check_pickle_allowed(path, trust_pickle: bool = False) -> None:
    """Refuse pickled weights unless trusted.

    detectron2 reads ``*.pkl`` weights with ``pickle.load``, which can run code. Allowed: the model
    zoo's own files (``detectron2://``, ``catalog://``, detectron2's download URL; e.g. the ImageNet
    ``R-50.pkl`` of the training configs), and any pickle when ``trust_pickle`` is True. ``.pth``
    files are always read with ``torch.load(weights_only=True)``: data only, no flag needed.

    Raises:
        common.errors.InputError: one line naming the file and the flag.
    """
    if path and not trust_pickle and is_pickle_weights(path) and not str(path).startswith(
            MODEL_ZOO_PREFIXES):
        raise InputError(path, TRUST_PICKLE_HINT)


class MassDetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads ``.pth`` files as data only and also reads torchvision ResNet
    ``.pth`` files.

    ``.pth`` checkpoints load with ``torch.load(weights_only=True)``: tensors and plain containers,
    never an arbitrary unpickled object. detectron2 model-zoo ``.pkl`` files (e.g. ImageNet
    ``R-50.pkl``) are pickles: read only from the model zoo (``detectron2://`` ...) or with
    ``trust_pickle=True`` (:func:`check_pickle_allowed`). A torchvision state dict (keys
    ``layer1.0.conv1.weight`` ...) is renamed by :func:`convert_torchvision_resnet_names` and matched by
    suffix into ``backbone.bottom_up``.

    Args:
        trust_pickle: read local / other ``.pkl`` files. True by default for training, whose
            ``MODEL.WEIGHTS`` (a local copy of ``R-50.pkl``, say) is the operator's own choice;
            prediction passes False (:func:`load_mass_weights`).
        strict: a checkpoint must set every parameter and buffer of the model (detectron2 would only
            log the missing ones and leave them at their random initialisation): an
            :class:`~common.errors.InputError` naming some of them otherwise. For prediction;
            training from ImageNet weights leaves the heads to initialise, so False there.
    """

    def __init__(self, model, save_dir="", *, trust_pickle: bool = True, strict: bool = False,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.trust_pickle = trust_pickle
        self.strict = strict
        self._loading = None

    def load(self, path, *args, **kwargs):
        check_pickle_allowed(path, self.trust_pickle)  # before anything is read
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _torch_load(self, f):
        # data only: tensors, numbers, strings and plain containers (DetectionCheckpointer's .pth path)
        with warnings.catch_warnings():  # a foreign pickle's protocol: the refusal says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_file(self, filename):
        try:
            if filename.endswith(".pyth"):  # pycls; detectron2 would torch.load it with the defaults
                data = self._torch_load(filename)
                if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
                    raise ValueError("pycls checkpoints must contain 'model_state'")
                loaded = {"model": {k: v for k, v in data["model_state"].items()
                                    if not k.endswith("num_batches_tracked")},
                          "__author__": "pycls", "matching_heuristics": True}
            else:
                loaded = super()._load_file(filename)
        except InputError:
            raise
        except Exception as e:  # torch/pickle raise many types for a damaged or foreign file
            raise InputError(filename, f"not a readable checkpoint ({checkpoint_error(e)})") from None
        model = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model, dict) or (not filename.endswith(".pkl") and not all(
                isinstance(k, str) and hasattr(v, "shape") for k, v in model.items())):
            raise InputError(filename, "checkpoint holds no state dict of tensors")
        if "layer1.0.conv1.weight" in model:
            self.logger.info("Reading torchvision ResNet weights from %s", filename)
            return {
                "model": convert_torchvision_resnet_names(model),
                "__author__": "torchvision",
                "matching_heuristics": True,
            }
        return loaded

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            missing = list(incompatible.missing_keys) + [k for k, *_ in incompatible.incorrect_shapes]
            if missing:
                total = len(self.model.state_dict())
                more = ", ..." if len(missing) > 3 else ""
                raise InputError(
                    self._loading, f"weights do not fit the model config: {len(missing)} of its "
                                   f"{total} parameters and buffers would stay randomly initialised "
                                   f"({', '.join(missing[:3])}{more})")
        return incompatible


def load_mass_weights(model, weights: str, *, trust_pickle: bool = False) -> None:
    """Prediction's loading of ``MODEL.WEIGHTS`` into a built mass detector.

    Data only and complete: ``.pth`` read with ``torch.load(weights_only=True)``, a ``.pkl`` refused
    unless from the model zoo or ``trust_pickle`` (:func:`check_pickle_allowed`), and every model
    parameter must be set by the file (``MassDetCheckpointer(strict=True)``).

    Raises:
        common.errors.InputError: one line naming the file (refused pickle, unreadable file, weights
            leaving parameters unloaded, with some of their names).
    """
    MassDetCheckpointer(model, trust_pickle=trust_pickle, strict=True).load(weights)


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


class CPUAutocastTrainer(SimpleTrainer):
    """detectron2's :class:`SimpleTrainer` with each step under ``torch.autocast("cpu", bfloat16)``.

    detectron2's :class:`AMPTrainer` is CUDA-only (float16 with a gradient scaler). bfloat16 keeps
    float32's exponent range, so it needs no scaler; the optimizer step inside the context is
    unaffected (autocast only recasts convolutions, matrix products and their kin). Box decoding stays
    in float32: detectron2's ``Box2BoxTransform.apply_deltas`` casts the deltas up first.
    """

    def run_step(self):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            super().run_step()


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when several processes train, else ``model`` itself.

    A CUDA model is tied to this process's GPU (``device_ids=[local rank]``, as detectron2 does);
    a CPU model gets no ``device_ids``, which is how DDP takes CPU modules (gloo backend).
    """
    on_cuda = next(model.parameters()).device.type == "cuda"
    return create_ddp_model(
        model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
    )


def _step_trainer(cfg) -> type[SimpleTrainer]:
    """The class that runs one iteration: detectron2's AMPTrainer (CUDA float16) under
    ``SOLVER.AMP.ENABLED`` on a GPU, :class:`CPUAutocastTrainer` on a CPU with native bfloat16 (float32
    SimpleTrainer with a warning on one without), SimpleTrainer otherwise."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer
    if torch.device(cfg.MODEL.DEVICE).type != "cpu":
        return AMPTrainer
    if native_bf16("cpu"):
        return CPUAutocastTrainer
    logger.warning("SOLVER.AMP.ENABLED: this CPU has no native bfloat16; training in float32")
    return SimpleTrainer


class MassDetTrainer(DefaultTrainer):
    """DefaultTrainer reading mammograms through :class:`MassDatasetMapper` (train and test alike)
    and evaluating with :class:`FROCEvaluator`.

    Refuses a config that would train frozen random layers (:func:`check_trainable_init`) or ignore a
    focal-loss switch (:func:`check_loss_switches`) before building anything, and resolves ``MODEL.WEIGHTS`` (downloading a model-zoo URL once) in
    :meth:`resume_or_load`, so a missing file or a failed download stops it before the first iteration.
    """

    def __init__(self, cfg):
        check_trainable_init(cfg)
        check_loss_switches(cfg)
        # DefaultTrainer.__init__ with three differences: DDP wraps a CPU model without device_ids
        # (detectron2 passes [local rank] whatever the device, which DDP refuses), the step trainer
        # suits the device (detectron2's AMPTrainer is CUDA-only), and the checkpointer is ours, made
        # before build_hooks hands it to the checkpoint hooks.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model)
        self._trainer = _step_trainer(cfg)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = MassDetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True):
        if not (resume and self.checkpointer.has_checkpoint()):
            # The checkpointer resolves the URL again and finds the cached copy.
            resolve_weights_file(self.cfg.MODEL.WEIGHTS)
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
