"""Data loading for the mass detector: pre-processed mammograms, augmentation, dataset registration."""

from .mapper import MassDatasetMapper, build_mass_augmentations
from .register import register_mass_datasets
from .transforms import gray_to_model_input

__all__ = [
    "MassDatasetMapper",
    "build_mass_augmentations",
    "gray_to_model_input",
    "register_mass_datasets",
]
