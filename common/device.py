"""Device selection shared by both models and the pipeline."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    ``None`` or ``"auto"`` picks CUDA when it is available, else the CPU. A CUDA device that is asked
    for but not available falls back to the CPU with a warning (so a config written for a GPU machine
    still runs); any other name is passed to :class:`torch.device` (which rejects unknown names).
    """
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU")
        return torch.device("cpu")
    return device
