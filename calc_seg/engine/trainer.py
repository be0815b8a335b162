"""Training loop of the calcification U-Net: balanced patches, weighted CE, Adam, per-epoch validation.

One process, or several under ``torchrun`` (``WORLD_SIZE`` set): the model is wrapped in
``DistributedDataParallel`` and every rank draws its own share of the balanced batches
(:class:`calc_seg.data.sampler.BalancedBatchSampler`); validation and checkpoints run on rank 0.

Checkpoints (``OUTPUT_DIR/model_last.pth`` and ``model_best.pth``) hold the model, optimizer, scheduler,
epoch, best score and the config; ``--resume`` continues from ``model_last.pth``. The model-selection
score is the recall at 1 false positive per image of the IoP FROC on whole validation images
(``common.metrics.evaluate_masks`` on sliding-window probability maps), scored against the processed
labels that are also the training target (``TEST.GT_LABELS``, ``common.calcifications``).

Logs: ``OUTPUT_DIR/metrics.jsonl`` (one line per epoch) and TensorBoard event files in ``OUTPUT_DIR``
(``train/loss``, ``train/lr``, ``train/grad_norm`` per iteration; ``val/recall_at_<k>fp`` per
validation; ``data/positive_pixel_fraction`` once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from calc_seg.data.dataset import CalcPatchDataset, build_augmentation
from calc_seg.data.labels import LabelParams
from calc_seg.data.patches import Study, build_patch_index, load_study, select_patches
from calc_seg.data.sampler import BalancedBatchSampler
from calc_seg.inference import predict_from_cfg
from calc_seg.losses import build_loss
from calc_seg.model import build_model, load_checkpoint
from common.amp import native_bf16
from common.canonical import load_canonical_dicts
from common.errors import InputError
from common.metrics import evaluate_masks
from common.metrics.froc import at_fp

logger = logging.getLogger("calc_seg")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0"))


def cache_dir_of(cfg) -> Path:
    return Path(cfg.DATA.CACHE_DIR or Path(cfg.OUTPUT_DIR) / "cache")


def load_split(cfg, split: str) -> list[Study]:
    """Cached, pre-processed studies of one split of ``cfg.DATA.ROOT``."""
    records = load_canonical_dicts(cfg.DATA.ROOT, "calc", split)
    params = LabelParams.from_cfg(cfg)
    return [load_study(r, cache_dir_of(cfg), params, cfg.DATA.REMOVE_ARTIFACTS) for r in records]


def build_lr_lambda(cfg, total_iters: int):
    """Multiplier of ``BASE_LR`` at iteration ``it``: linear warm-up from ``WARMUP_FACTOR`` over
    ``WARMUP_ITERS`` iterations, times the cosine / poly / step decay over all iterations (config)."""
    s = cfg.SOLVER
    floor = s.MIN_LR_RATIO
    total = max(total_iters, 1)
    warm = min(int(s.WARMUP_ITERS), total)

    def f(it: int) -> float:
        t = min(it / total, 1.0)
        if s.LR_SCHEDULER == "cosine":
            v = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        elif s.LR_SCHEDULER == "poly":
            v = floor + (1 - floor) * (1 - t) ** s.POLY_POWER
        else:
            v = s.GAMMA ** sum(t >= m for m in s.STEPS)
        if it < warm:
            v *= s.WARMUP_FACTOR + (1 - s.WARMUP_FACTOR) * it / warm
        return v

    return f


def positive_pixel_fraction(entries: np.ndarray, size: int) -> float:
    """Expected fraction of target pixels in a balanced batch (half positive, half negative patches).

    Positive patches are drawn uniformly (:class:`~calc_seg.data.sampler.BalancedBatchSampler`), so the
    mean of their ``pos_pixels`` over ``size**2``, halved for the negative half, is the batch mean.
    """
    pos = entries["pos_pixels"][entries["positive"]]
    return float(pos.mean()) / (2.0 * size * size) if len(pos) else 0.0


def pos_weight_of(cfg, fraction: float) -> float:
    """Cross-entropy weight of the calcification class: ``SOLVER.POS_WEIGHT``, or when it is <= 0 the
    weight that balances the two classes in an average batch, ``(1 - f) / f`` for the measured
    positive-pixel fraction ``f``, capped at ``SOLVER.POS_WEIGHT_MAX``."""
    w = float(cfg.SOLVER.POS_WEIGHT)
    if w > 0:
        return w
    if fraction <= 0:
        return 1.0
    return float(min((1.0 - fraction) / fraction, cfg.SOLVER.POS_WEIGHT_MAX))


def amp_dtype(cfg, device: torch.device):
    """``torch.bfloat16`` when ``SOLVER.AMP`` is on and ``device`` computes bf16 natively, else None."""
    return torch.bfloat16 if cfg.SOLVER.AMP and native_bf16(device) else None


def score_studies(studies: list[Study], probs: dict, cfg, gt_labels: str | None = None,
                  ignore_excluded: bool = False) -> dict:
    """IoP FROC of probability maps ``{stem: float (H, W)}`` against the studies' labels.

    ``gt_labels`` (default ``cfg.TEST.GT_LABELS``): "processed" scores against the processed labels
    (small components grown to the minimum area: the training target, ``common.calcifications``),
    "raw" against the masks as annotated. ``ignore_excluded`` (validation, paper §4.2.1: vessel and
    large-region labels are kept out of the training and validation sets) removes the
    ``LABELS.EXCLUDE_TYPES`` components and their grown extent from the evaluation: their GT pixels are
    dropped and the probability there is set to 0, so predictions on them count neither as hits nor as
    false positives. The test split is scored with every label (per-type recall, paper Table 4).

    Returns the ``common.metrics.evaluate_masks`` report (recall, sensitivity_at_fp, froc, per_type)
    with ``gt_labels`` added.
    """
    gt_labels = gt_labels or cfg.TEST.GT_LABELS
    if gt_labels not in ("processed", "raw"):
        raise ValueError(f"gt_labels must be processed or raw, got {gt_labels!r}")
    gt, scored, types, min_area = {}, {}, {}, {}
    excluded_types = set(cfg.LABELS.EXCLUDE_TYPES)
    for s in studies:
        prob = probs[s.stem]
        gt[s.stem] = np.asarray(s.array("gt"), dtype=bool)
        # the processed labels are grown inside the metric with the study's own minimum area: the
        # same function and area that made its training target (train_mask)
        min_area[s.stem] = s.min_area
        types[s.stem] = s.types
        if ignore_excluded:
            excl = np.asarray(s.array("excluded"), dtype=bool)
            if excl.any():
                gt[s.stem] = gt[s.stem] & ~excl
                prob = np.where(excl, np.float32(0), prob)
            types[s.stem] = [t for t in s.types if t["type"] not in excluded_types]
        scored[s.stem] = prob
    return evaluate_masks(
        gt, scored, types=types, iop_thr=cfg.TEST.IOP_THR, binarize=cfg.TEST.THRESHOLD,
        fps=tuple(cfg.TEST.FPS), min_area=min_area if gt_labels == "processed" else None,
    )


def evaluate_studies(model: nn.Module, studies: list[Study], cfg, device=None, progress=False,
                     ignore_excluded: bool = False, with_raw: bool = False):
    """IoP FROC of ``model`` on whole images (sliding window, then :func:`score_studies`).

    ``with_raw`` adds ``report["raw_labels"]``: the same probability maps scored against the raw
    masks (``sensitivity_at_fp``, ``recall``, ``per_type``, ``n_lesions``), reported beside the
    processed-label figures.

    Returns (report, prob_maps): the report and ``{stem: float32 (H, W)}`` probability maps (unmasked).
    """
    it = studies
    if progress:
        it = tqdm(studies, desc="evaluate", leave=False)
    probs = {s.stem: predict_from_cfg(model, s.array("image"), s.array("breast"), cfg, device)
             for s in it}
    report = score_studies(studies, probs, cfg, ignore_excluded=ignore_excluded)
    if with_raw:
        other = "raw" if report["gt_labels"] == "processed" else "processed"
        r = score_studies(studies, probs, cfg, gt_labels=other, ignore_excluded=ignore_excluded)
        report[f"{other}_labels"] = {
            "recall": r["recall"], "sensitivity_at_fp": r["sensitivity_at_fp"],
            "n_lesions": r["n_lesions"], "n_predictions": r["n_predictions"],
            "per_type": {t: {k: v for k, v in pt.items() if k != "froc"}
                         for t, pt in (r.get("per_type") or {}).items()},
        }
    return report, probs


def recall_at(report: dict, fp: int | float = 1) -> float:
    """Sensitivity at ``fp`` FP/image of an ``evaluate_masks`` report (1, 1.0 and "1" alike); 0.0
    when it is undefined (no lesion). A level the report does not hold raises KeyError."""
    v = at_fp(report["sensitivity_at_fp"], fp)
    return float(v or 0.0)


def plain_data(obj):
    """``obj`` with numpy numbers and arrays as Python numbers and lists, tuples as lists (recursively):
    what ``torch.load(weights_only=True)`` reads back without allowing any class."""
    if isinstance(obj, dict):
        return {k: plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return obj


class CalcSegTrainer:
    """Builds model, data, optimizer and schedule from ``cfg``; :meth:`train` runs the epochs."""

    def __init__(self, cfg, resume: bool = False):
        self.cfg = cfg
        self.rank, self.world_size, local_rank = dist_info()
        self.distributed = self.world_size > 1
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        seed_all(cfg.SEED + self.rank)
        self.out = Path(cfg.OUTPUT_DIR)
        self.out.mkdir(parents=True, exist_ok=True)

        self.model = build_model(cfg).to(self.device)
        self.train_studies = load_split(cfg, cfg.DATA.TRAIN_SPLIT)
        self.val_studies = load_split(cfg, cfg.DATA.VAL_SPLIT) if cfg.DATA.VAL_SPLIT else []
        entries = select_patches(
            build_patch_index(self.train_studies, cfg.PATCH.SIZE, cfg.PATCH.STRIDE, cache_dir_of(cfg))
        )
        self.dataset = CalcPatchDataset(
            self.train_studies, entries, cfg.PATCH.SIZE, build_augmentation(cfg)
        )
        self.positive_fraction = positive_pixel_fraction(entries, cfg.PATCH.SIZE)
        self.pos_weight = pos_weight_of(cfg, self.positive_fraction)
        logger.info("positive-pixel fraction of a balanced batch %.4f -> calcification class weight %.2f",
                    self.positive_fraction, self.pos_weight)
        iters = cfg.SOLVER.ITERS_PER_EPOCH or None
        self.sampler = BalancedBatchSampler(
            self.dataset.positive, cfg.SOLVER.BATCH_SIZE, iters, cfg.SEED, self.rank, self.world_size
        )
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=cfg.DATA.NUM_WORKERS,
            pin_memory=self.device.type == "cuda", persistent_workers=cfg.DATA.NUM_WORKERS > 0,
        )
        self.loss_fn = build_loss(cfg, self.pos_weight)
        self.amp_dtype = amp_dtype(cfg, self.device)
        if cfg.SOLVER.CHANNELS_LAST:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        self.iters_per_epoch = len(self.sampler)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, build_lr_lambda(cfg, self.iters_per_epoch * cfg.SOLVER.EPOCHS)
        )
        self.net = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # VGG encoders are trimmed to the used stages (calc_seg.model); other smp encoders may keep
            # unused deeper stages
            unused = not cfg.MODEL.ENCODER.startswith("vgg")
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=unused
            )
        self.start_epoch, self.best_score, self.history = 0, -1.0, []
        if resume:
            self.resume()
        if self.start_epoch == 0 and self.rank == 0:  # a fresh run starts a fresh log
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.tb = None
        if self.rank == 0 and cfg.SOLVER.TENSORBOARD:
            # only when logging is on: tensorboard pulls in protobuf and is optional at run time
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out), purge_step=self.start_epoch * self.iters_per_epoch)
            self.tb.add_scalar("data/positive_pixel_fraction", self.positive_fraction, 0)
            self.tb.add_scalar("data/pos_weight", self.pos_weight, 0)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, epoch: int) -> dict:
        """Tensors, numbers, strings and plain containers only, so that it loads with
        ``torch.load(weights_only=True)`` (:func:`calc_seg.model.load_checkpoint`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": int(epoch),
            "best_score": float(self.best_score),
            "history": plain_data(self.history),
            "cfg": self.cfg.dump(),
        }

    def save(self, name: str, epoch: int) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint(epoch), tmp)
        os.replace(tmp, path)
        return path

    def resume(self) -> bool:
        """Continue from ``OUTPUT_DIR/model_last.pth`` if it exists; returns whether it did."""
        path = self.out / "model_last.pth"
        if not path.exists():
            logger.warning("no %s to resume from; starting from scratch", path)
            return False
        ckpt = load_checkpoint(path, map_location=self.device)  # data only (weights_only=True)
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "scheduler", "epoch"} <= set(ckpt):
            raise InputError(path, "not a calc_seg training checkpoint (model, optimizer, scheduler, "
                                   "epoch) to resume from")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_score = float(ckpt.get("best_score", -1.0))
        self.history = list(ckpt.get("history", []))
        logger.info("resumed from %s at epoch %d", path, self.start_epoch)
        return True

    # ------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int, progress: bool = True) -> float:
        self.net.train()
        self.sampler.set_epoch(epoch)
        losses = []
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.cfg.SOLVER.EPOCHS}",
                   disable=not progress or self.rank != 0, leave=False)
        fmt = torch.channels_last if self.cfg.SOLVER.CHANNELS_LAST else torch.contiguous_format
        clip = self.cfg.SOLVER.GRAD_CLIP if self.cfg.SOLVER.GRAD_CLIP > 0 else float("inf")
        for i, (images, targets) in enumerate(bar):
            images = images.to(self.device, memory_format=fmt)
            targets = targets.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.net(images)
            loss = self.loss_fn(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # total gradient norm (logged); clipped only when SOLVER.GRAD_CLIP > 0
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            losses.append(float(loss.detach()))
            if self.tb is not None:
                step = epoch * self.iters_per_epoch + i
                self.tb.add_scalar("train/loss", losses[-1], step)
                self.tb.add_scalar("train/lr", lr, step)
                self.tb.add_scalar("train/grad_norm", grad_norm, step)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        return float(np.mean(losses)) if losses else float("nan")

    def validate(self) -> dict:
        report, _ = evaluate_studies(self.model, self.val_studies, self.cfg, self.device,
                                     ignore_excluded=True)
        return report

    def train(self, progress: bool = True) -> dict:
        """Run the remaining epochs; returns the last history entry."""
        cfg = self.cfg
        entry = {}
        for epoch in range(self.start_epoch, cfg.SOLVER.EPOCHS):
            t0 = time.time()
            loss = self.train_epoch(epoch, progress)
            entry = {"epoch": epoch + 1, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                     "time_s": round(time.time() - t0, 2)}
            if epoch == 0:
                entry["positive_pixel_fraction"] = round(self.positive_fraction, 5)
                entry["pos_weight"] = round(self.pos_weight, 3)
            if self.rank == 0:
                last = epoch + 1 == cfg.SOLVER.EPOCHS
                if self.val_studies and ((epoch + 1) % cfg.TEST.EVAL_PERIOD == 0 or last):
                    report = self.validate()
                    entry["val_recall_at_1fp"] = recall_at(report, 1)
                    entry["val_sensitivity_at_fp"] = report.get("sensitivity_at_fp")
                    if self.tb is not None:
                        for k, v in (report.get("sensitivity_at_fp") or {}).items():
                            self.tb.add_scalar(f"val/recall_at_{k}fp", float(v or 0.0), epoch + 1)
                    # model selection: recall at 1 FP/image (ties -> later epoch, lower loss)
                    if entry["val_recall_at_1fp"] >= self.best_score:
                        self.best_score = entry["val_recall_at_1fp"]
                        entry["best"] = True
                elif not self.val_studies:
                    entry["best"] = True  # nothing to select on: the last model is the best
                self.history.append(entry)
                if entry.get("best"):
                    self.save("model_best.pth", epoch)
                self.save("model_last.pth", epoch)
                with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
                logger.info("epoch %d: %s", epoch + 1, entry)
                if self.tb is not None:
                    self.tb.add_scalar("train/epoch_loss", loss, epoch + 1)
                    self.tb.flush()
            if self.distributed:
                torch.distributed.barrier()
        if self.tb is not None:
            self.tb.flush()
        return entry
