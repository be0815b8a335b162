"""Whole-image inference by a sliding window over the breast (paper §2.2.2, test stage).

The image is covered by ``window x window`` tiles, every one inside the frame, at most ``stride``
apart; on the frame grid their starts are spread evenly between 0 and ``size - window`` (nnU-Net's
``compute_steps_for_sliding_window`` placement, so the last tile is flush with the edge). Tiles that
contain no breast pixel are never evaluated: the model does not see the empty background, which on
a mammogram is often half of the frame. The remaining tiles run in batches;
overlapping predictions are blended by averaging (``blend="mean"``) or with a Gaussian importance
map that trusts tile centres more (``blend="gaussian"``, nnU-Net / MONAI style). Images smaller than
a window are zero-padded at the bottom / right and the result cropped back.

Where the tiles go is ``placement`` (``TEST.PLACEMENT``, :func:`window_positions`). ``"frame"``
keeps the frame grid's tiles that hold a breast pixel, so every breast pixel receives the same set of
tile predictions as a full-frame sliding window of the same stride: inside the breast both give
identical output. ``"breast"`` (the shipped configs) lays bands of tiles along the breast's outline
instead and keeps the cover with the fewest tiles; every breast pixel is still predicted, by tiles
that sit where the breast is rather than on the frame grid. Pixels covered by no evaluated tile get
probability 0.

The shipped configs use ``stride = window`` (``TEST.STRIDE``): the paper's test stage puts each
patch prediction back at its place, and on the synthetic quality set the overlap of half-window
tiles bought no sensitivity (``bench/calc_segmentation.py --tiling``). The tiles of several images
can share forward passes (:func:`predict_images`, :meth:`CalcPredictor.predict_probs`), and the
forward pass runs in bf16 where the device computes it natively, on channels-last tensors
(``TEST.AMP``, ``TEST.CHANNELS_LAST``).

:class:`CalcPredictor` is the U-Net's predictor: a pre-processed 8-bit mammogram and its breast mask
in (:func:`common.preprocess.preprocess`; no pre-processing here), the probability map and its
lesion components (:func:`mask_components`) out, in the frame of the image given. Reading files,
laterality and writing outputs belong to ``deeplima`` (``python -m deeplima predict-calc``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calc_seg.data.labels import LabelParams
from calc_seg.model import build_model, load_weights, logits_to_prob
from common.amp import autocast_dtype
from common.calcifications import describe_components, label_components
from common.device import select_device
from common.errors import InputError

__all__ = [
    "PLACEMENTS",
    "CalcPredictor",
    "compute_steps",
    "gaussian_importance",
    "mask_components",
    "predict_from_cfg",
    "predict_image",
    "predict_images",
    "window_positions",
]


def compute_steps(size: int, window: int, stride: int) -> list[int]:
    """Tile starts along one axis of length ``size >= window``: evenly spaced, step <= ``stride``.

    ``ceil((size - window) / stride) + 1`` tiles, first at 0, last at ``size - window`` (nnU-Net's
    even step placement with the step given in pixels).
    """
    if size < window:
        raise ValueError(f"size {size} is smaller than the window {window}; pad first")
    n = math.ceil((size - window) / stride) + 1
    if n == 1:
        return [0]
    step = (size - window) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


PLACEMENTS = ("frame", "breast")


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def _span_steps(lo: int, hi: int, size: int, window: int, stride: int,
                anchor: str = "even") -> list[int]:
    """Tile starts covering [lo, hi) along an axis of length ``size >= window``, every tile inside
    [0, size), steps <= ``stride``: spread evenly between the span's ends (:func:`compute_steps`,
    ``anchor="even"``), or ``stride`` apart from ``lo`` on (``"start"``) or from ``hi`` back
    (``"end"``), where the last tile may reach past the span but not past the frame. A span shorter
    than the window is widened at its end (at its start by the frame's far edge)."""
    span = max(hi - lo, window)
    start = min(lo, size - span)
    steps = compute_steps(span, window, stride)
    if anchor == "start":
        return [min(start + k * stride, size - window) for k in range(len(steps))]
    if anchor == "end":
        return [max(start + span - window - k * stride, 0) for k in reversed(range(len(steps)))]
    return [start + s for s in steps]


def _band_covers(mask: np.ndarray, window: int, stride: int) -> list[list[tuple[int, int]]]:
    """(y, x) tiles of bands of rows over the mask's rows, each band's tiles spread over the mask's
    columns in that band, one cover per band anchoring (:func:`_span_steps`): every True pixel lies
    in a tile of each cover."""
    h, w = mask.shape
    rows = mask.any(1)
    first = np.where(rows, mask.argmax(1), w)  # first and last True column of each row
    last = np.where(rows, w - 1 - mask[:, ::-1].argmax(1), -1)
    lo, hi = int(np.argmax(rows)), int(h - np.argmax(rows[::-1]))
    covers = []
    for anchor in ("even", "start", "end"):
        tiles = []
        for y in _span_steps(lo, hi, h, window, stride, anchor):
            x0, x1 = int(first[y : y + window].min()), int(last[y : y + window].max()) + 1
            if x1 > x0:
                tiles += [(y, x) for x in _span_steps(x0, x1, w, window, stride)]
        covers.append(tiles)
    return covers


def window_positions(
    shape: tuple[int, int], window: int, stride: int, breast_mask: np.ndarray | None = None,
    placement: str = "frame",
) -> list[tuple[int, int]]:
    """Top-left (y, x) of the tiles over an (H, W) frame (H, W >= window), sorted.

    Without ``breast_mask`` (bool (H, W)): the frame grid (:func:`compute_steps` both ways). With
    it, only tiles holding a breast pixel, placed by ``placement``:

    - ``"frame"``: the frame grid's tiles that hold a breast pixel. Every breast pixel gets the
      predictions the full-frame sliding window of the same stride gives it.
    - ``"breast"``: the cover with the fewest tiles (ties to the frame grid) among the frame grid
      and band covers: bands of rows over the breast's rows (spread evenly between its first and
      last row, or ``stride`` apart from the first row on, or from the last row back), each band's
      tiles spread over the breast's columns within that band; the same with rows and columns
      swapped. The bands follow the breast's outline, so the rows near the nipple and the axilla
      need fewer tiles than the frame grid gives them. Every breast pixel lies in a tile; tiles sit
      where the breast is, not on the frame grid.
    """
    _check_placement(placement)
    h, w = shape
    grid = [(y, x) for y in compute_steps(h, window, stride) for x in compute_steps(w, window, stride)]
    if breast_mask is None:
        return grid
    mask = np.asarray(breast_mask, dtype=bool)
    if mask.shape != (h, w):
        raise ValueError(f"breast_mask shape {mask.shape} differs from the frame {(h, w)}")
    if not mask.any():
        return []
    # summed-area table: O(1) "any breast pixel in this tile" per tile
    sat = np.pad(mask.cumsum(0, dtype=np.int64).cumsum(1), ((1, 0), (1, 0)))

    def holding_breast(tiles):
        return sorted({(y, x) for y, x in tiles
                       if sat[y + window, x + window] - sat[y, x + window] - sat[y + window, x]
                       + sat[y, x] > 0})

    covers = [holding_breast(grid)]
    if placement == "breast":
        covers += [holding_breast(c) for c in _band_covers(mask, window, stride)]
        covers += [holding_breast((y, x) for x, y in c)
                   for c in _band_covers(mask.T, window, stride)]
    return min(covers, key=len)


def gaussian_importance(window: int, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """(window, window) float64 Gaussian weights, max 1, no zeros (nnU-Net's importance map)."""
    c = (window - 1) / 2.0
    g = np.exp(-0.5 * ((np.arange(window) - c) / (window * sigma_scale)) ** 2)
    w = np.outer(g, g)
    w /= w.max()
    return np.maximum(w, w[w > 0].min())


def default_to_prob(output: torch.Tensor) -> torch.Tensor:
    """Model output (N, C, h, w) logits -> (N, h, w) probability (see ``calc_seg.model``)."""
    return logits_to_prob(output)


def _device_of(model) -> torch.device:
    """The device of a module's first parameter; the CPU for anything else."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def _prepare(image: np.ndarray, breast_mask: np.ndarray | None, window: int,
             skip_background: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 (H', W') image in [0, 1], bool (H', W') breast mask or None) of one input,
    zero-padded at the bottom / right to at least ``window`` each way (H' = max(H, window))."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {img.shape}")
    h, w = img.shape
    x = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    mask = None
    if breast_mask is not None and skip_background:
        mask = np.asarray(breast_mask, dtype=bool)
        if mask.shape != img.shape:
            raise ValueError(f"breast_mask shape {mask.shape} differs from image shape {img.shape}")
    ph, pw = max(h, window), max(w, window)
    if (ph, pw) != (h, w):  # pad small images at the bottom / right
        x = np.pad(x, ((0, ph - h), (0, pw - w)))
        if mask is not None:
            mask = np.pad(mask, ((0, ph - h), (0, pw - w)))
    return x, mask


@torch.inference_mode()
def predict_images(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[np.ndarray],
    breast_masks: Sequence[np.ndarray | None] | None = None,
    window: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    blend: str = "mean",
    device: str | torch.device | None = None,
    skip_background: bool = True,
    to_prob: Callable[[torch.Tensor], torch.Tensor] = default_to_prob,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    placement: str = "frame",
) -> list[np.ndarray]:
    """Calcification probability maps of several whole images, their tiles batched together.

    The tiles of every image (:func:`window_positions`, in image order) form one queue cut into
    forward passes of ``batch_size`` tiles, so a batch may hold tiles of two or more images (what
    keeps a GPU busy when the breasts are small). Each tile is predicted on its own (GroupNorm
    normalises each sample), so the maps are those of :func:`predict_image` image by image, up to
    the last bits a backend may change with the batch composition. An image's map is finished and
    its accumulators released as soon as its last tile is in.

    Args:
        model: maps (N, 1, window, window) float in [0, 1] to (N, C, window, window) output; a
            module is put in eval mode and run on ``device`` (default: the model's own device),
            any other callable receives tiles on ``device``.
        images: uint8 (H_i, W_i) pre-processed images (``common.preprocess``), original frames;
            float input is taken as already scaled to [0, 1]. Sizes may differ.
        breast_masks: one bool (H_i, W_i) mask or None per image (None = every tile of that image);
            tiles with no breast pixel are skipped when ``skip_background``. None = no masks.
        window, stride: tile size and largest step in pixels (:func:`compute_steps`).
        batch_size: tiles per forward pass.
        blend: "mean" or "gaussian".
        to_prob: output -> (N, window, window) probability; default sigmoid (C=1) / softmax[:, 1].
            It receives the output in float32 whatever ``amp_dtype`` computed.
        amp_dtype: None (float32) or the autocast dtype of the forward pass (``torch.bfloat16``
            where :func:`common.amp.native_bf16`); the blending stays float64.
        channels_last: NHWC tiles, and the model's parameters converted to channels-last in place
            (a layout change: the values stay the same).
        placement: where the tiles of an image with a breast mask go: "frame" (the frame grid) or
            "breast" (the fewest tiles covering the breast; :func:`window_positions`).

    Returns:
        one float32 (H_i, W_i) probability map per image, in its original frame; 0 where no tile was
        evaluated.
    """
    if blend not in ("mean", "gaussian"):
        raise ValueError(f"blend must be 'mean' or 'gaussian', got {blend!r}")
    images = list(images)
    masks = [None] * len(images) if breast_masks is None else list(breast_masks)
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} breast masks")
    prepared = [_prepare(im, m, window, skip_background) for im, m in zip(images, masks)]
    shapes = [np.asarray(im).shape for im in images]
    # the queue: (image index, y, x) of every tile to evaluate, image after image
    queue = [(i, y, x) for i, (xi, mi) in enumerate(prepared)
             for y, x in window_positions(xi.shape, window, stride, mi, placement)]
    last_tile = {i: k for k, (i, _, _) in enumerate(queue)}  # images without tiles stay all 0

    device = torch.device(device if device is not None else _device_of(model))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(model, nn.Module):
        model.eval()
        if channels_last:
            model.to(memory_format=fmt)
    weight = gaussian_importance(window) if blend == "gaussian" else np.ones((window, window))
    weight = torch.from_numpy(weight).to(device)
    out: list[np.ndarray | None] = [None] * len(images)
    live: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def finish(i: int) -> None:
        h, w = shapes[i]
        if i in live:
            _, acc, wsum = live.pop(i)
            prob = torch.where(wsum > 0, acc / wsum.clamp_min(1e-12), torch.zeros_like(acc))
            out[i] = prob.cpu().numpy()[:h, :w].astype(np.float32)
        else:
            out[i] = np.zeros((h, w), np.float32)

    for b in range(0, len(queue), batch_size):
        chunk = queue[b : b + batch_size]
        for i, _, _ in chunk:
            if i not in live:
                # float64 accumulators on the model's device: a mean of identical values reproduces
                # them exactly, and the blending stays next to the predictions
                xi = torch.from_numpy(prepared[i][0]).to(device)
                live[i] = (xi, torch.zeros(xi.shape, dtype=torch.float64, device=device),
                           torch.zeros(xi.shape, dtype=torch.float64, device=device))
        batch = torch.stack([live[i][0][y : y + window, x : x + window] for i, y, x in chunk])
        batch = batch[:, None].contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(batch)
        prob = to_prob(logits.float()).to(torch.float64)
        for (i, y, x), pr in zip(chunk, prob):
            _, acc, wsum = live[i]
            acc[y : y + window, x : x + window] += weight * pr
            wsum[y : y + window, x : x + window] += weight
        done = b + len(chunk) - 1
        for i in [i for i in live if last_tile[i] <= done]:
            finish(i)
    for i in range(len(images)):
        if out[i] is None:
            finish(i)
    return out


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    breast_mask: np.ndarray | None = None,
    window: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    blend: str = "mean",
    device: str | torch.device | None = None,
    skip_background: bool = True,
    to_prob: Callable[[torch.Tensor], torch.Tensor] = default_to_prob,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    placement: str = "frame",
) -> np.ndarray:
    """Calcification probability map of a whole image (:func:`predict_images` of one image).

    Args:
        model: maps (N, 1, window, window) float in [0, 1] to (N, C, window, window) output; it is
            put in eval mode and run on ``device`` (default: the model's own device).
        image: uint8 (H, W) pre-processed image (``common.preprocess``), original frame; float input
            is taken as already scaled to [0, 1].
        breast_mask: bool (H, W); tiles with no breast pixel are skipped when ``skip_background``.
            None = every tile is evaluated.
        window, stride: tile size and largest step in pixels (:func:`compute_steps`).
        batch_size: tiles per forward pass.
        blend: "mean" or "gaussian".
        to_prob: output -> (N, window, window) probability; default sigmoid (C=1) / softmax[:, 1].
        amp_dtype, channels_last: the forward pass's autocast dtype and memory layout
            (:func:`predict_images`).
        placement: "frame" or "breast" tile placement (:func:`window_positions`).

    Returns:
        float32 (H, W) probability in the original image frame; 0 where no tile was evaluated.
    """
    return predict_images(model, [image], [breast_mask], window=window, stride=stride,
                          batch_size=batch_size, blend=blend, device=device,
                          skip_background=skip_background, to_prob=to_prob, amp_dtype=amp_dtype,
                          channels_last=channels_last, placement=placement)[0]


def predict_from_cfg(model: nn.Module, image: np.ndarray, breast_mask, cfg,
                     device=None) -> np.ndarray:
    """:func:`predict_image` with window, stride, placement, batch size, blending, autocast and
    memory layout from ``cfg.TEST`` (the trainer's validation and test path; :class:`CalcPredictor`
    runs the same settings)."""
    t = cfg.TEST
    device = device if device is not None else _device_of(model)
    return predict_image(model, image, breast_mask, window=t.WINDOW, stride=t.STRIDE,
                         batch_size=t.BATCH_SIZE, blend=t.BLEND, device=device,
                         amp_dtype=autocast_dtype(device, t.AMP), channels_last=t.CHANNELS_LAST,
                         placement=t.PLACEMENT)


def mask_components(prob: np.ndarray, threshold: float = 0.5,
                    params: LabelParams | None = None) -> tuple[np.ndarray, list[dict]]:
    """Component labels and lesion components of a probability map.

    Args:
        prob: float (H, W) probability in [0, 1], any frame (the components are in the same one).

    Returns (int32 (H, W) labels of ``prob >= threshold``, 0 = background; components) where each
    component (8-connected, :func:`common.calcifications.describe_components`) has ``label``,
    ``bbox`` [x, y, w, h] (frame of ``prob``, top-left origin), ``area`` (pixels), ``point``
    [x, y] (a pixel inside), ``type`` (shape rule with the thresholds of ``params``, a
    :class:`calc_seg.data.labels.LabelParams`) and ``score`` (its maximum probability, the score the
    FROC sweeps).
    """
    labels, n = label_components(np.asarray(prob) >= threshold)
    rule = params.type_rule if params is not None else None
    return labels, describe_components(labels, n, prob=prob, type_rule=rule)


class CalcPredictor:
    """``CalcPredictor(model)(image, breast_mask)`` -> (probability, labels, components) of one
    pre-processed mammogram.

    The U-Net runs by a sliding window over the breast (:func:`predict_image`); the components are
    those of :func:`mask_components` at ``threshold``. No pre-processing happens here: the image is
    the uint8 (H, W) result of :func:`common.preprocess.preprocess` with its breast mask, and
    everything returned is in the frame of that image. Built from parts (testable without a config)
    or from a calc_seg config with :meth:`from_config`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int = 512,
        stride: int = 256,
        batch_size: int = 4,
        blend: str = "mean",
        threshold: float = 0.5,
        label_params: LabelParams | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        channels_last: bool = False,
        placement: str = "frame",
    ):
        """
        Args:
            model: (N, 1, window, window) float in [0, 1] -> (N, C, window, window) logits; moved to
                ``device`` and put in eval mode.
            window, stride, batch_size, blend: sliding window (:func:`predict_image`).
            threshold: probability binarised into components (``TEST.THRESHOLD``, also the
                evaluation's binarisation).
            label_params: component typing thresholds (:class:`calc_seg.data.labels.LabelParams`;
                None = the defaults).
            device: None / "auto" = CUDA when available (:func:`common.device.select_device`).
            amp: bf16 autocast where ``device`` computes bf16 natively (``TEST.AMP``;
                :func:`common.amp.autocast_dtype`), else float32.
            channels_last: NHWC tiles and weights (``TEST.CHANNELS_LAST``).
            placement: "frame" or "breast" tile placement (``TEST.PLACEMENT``,
                :func:`window_positions`).
        """
        _check_placement(placement)
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.window, self.stride, self.batch_size, self.blend = window, stride, batch_size, blend
        self.threshold = float(threshold)
        self.amp_dtype = autocast_dtype(self.device, amp)
        self.channels_last = bool(channels_last)
        self.placement = placement
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.label_params = label_params if label_params is not None else LabelParams()

    @classmethod
    def from_config(cls, cfg, weights: str | Path | None = None, *,
                    device: str | torch.device | None = None) -> CalcPredictor:
        """The predictor of a calc_seg config (:func:`calc_seg.config.get_calc_seg_cfg`).

        Args:
            cfg: the config: ``MODEL`` (architecture), ``TEST`` (window, stride, placement, batch
                size, blending, threshold), ``LABELS`` (component typing). Not modified.
            weights: checkpoint of :mod:`calc_seg.train_net`; None = ``cfg.MODEL.WEIGHTS``. Read as
                data (``torch.load(weights_only=True)``) and required to set every parameter
                (:func:`calc_seg.model.load_weights`).
            device: as in the constructor.

        Raises:
            InputError: no weights, or a missing, unreadable or non-fitting weights file (one line).
        """
        weights = str(cfg.MODEL.WEIGHTS if weights is None else weights)
        if not weights:
            raise InputError(None, "no weights given: the calcification U-Net would predict with "
                                   "random ones")
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # build_model would load them once more
        model = build_model(cfg)
        load_weights(model, weights)
        t = cfg.TEST
        return cls(model, window=int(t.WINDOW), stride=int(t.STRIDE), batch_size=int(t.BATCH_SIZE),
                   blend=str(t.BLEND), threshold=float(t.THRESHOLD),
                   label_params=LabelParams.from_cfg(cfg), device=device, amp=bool(t.AMP),
                   channels_last=bool(t.CHANNELS_LAST), placement=str(t.PLACEMENT))

    def predict_prob(self, image: np.ndarray, breast_mask: np.ndarray | None) -> np.ndarray:
        """float32 (H, W) calcification probability of ``image`` (uint8 (H, W)), 0 outside every
        evaluated window; ``breast_mask`` (bool (H, W)) limits the windows to the breast."""
        return self.predict_probs([image], [breast_mask])[0]

    def predict_probs(self, images: Sequence[np.ndarray],
                      breast_masks: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """float32 (H_i, W_i) calcification probability of each uint8 (H_i, W_i) image, with the
        tiles of all images batched together (``batch_size`` tiles per forward,
        :func:`predict_images`): the maps :meth:`predict_prob` gives image by image, with fewer,
        fuller batches. ``breast_masks``: one bool (H_i, W_i) mask or None per image."""
        return predict_images(self.model, images, breast_masks, window=self.window,
                              stride=self.stride, batch_size=self.batch_size, blend=self.blend,
                              device=self.device, amp_dtype=self.amp_dtype,
                              channels_last=self.channels_last, placement=self.placement)

    def components(self, prob: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """:func:`mask_components` of ``prob`` at ``threshold``: (int32 (H, W) labels, components
        with ``label``, ``bbox`` [x, y, w, h], ``area``, ``point`` [x, y], ``type``, ``score``), in
        the frame of ``prob``."""
        return mask_components(prob, self.threshold, self.label_params)

    def __call__(self, image: np.ndarray, breast_mask: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(float32 (H, W) probability, int32 (H, W) component labels, components) of one image,
        all in the frame of ``image``."""
        prob = self.predict_prob(image, breast_mask)
        labels, comps = self.components(prob)
        return prob, labels, comps
