"""Mass detection in mammograms as a Detectron2 project (paper §2.1, §4.1).

Faster R-CNN on ResNet-50, with an FPN, non-local blocks in the late stage and a focal-loss box
classifier (optionally a focal-loss RPN as well). ``import mass_det`` registers the backbones, ROI heads
and RPN (the import of ``modeling`` below exists for that side effect).
"""

from . import modeling  # noqa: F401  (registers backbones, ROI heads, RPN)
from .config import add_mass_det_config, get_mass_det_cfg

__all__ = ["add_mass_det_config", "get_mass_det_cfg"]
