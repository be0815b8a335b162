"""Mixed precision: where bfloat16 autocast pays off.

bf16 keeps float32's exponent range, so unlike float16 it needs no gradient scaler; it only helps where
the device computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX through oneDNN).
"""

from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "native_bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bfloat16 convolutions and matrix products natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """``torch.bfloat16`` when ``enabled`` and ``device`` computes it natively
    (:func:`native_bf16`), else None (float32): the dtype to give ``torch.autocast``, or none."""
    return torch.bfloat16 if enabled and native_bf16(device) else None
