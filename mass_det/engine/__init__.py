"""Training loop of the mass detector (a detectron2 DefaultTrainer)."""

from .trainer import MassDetCheckpointer, MassDetTrainer, build_mass_optimizer, check_weights_file

__all__ = ["MassDetCheckpointer", "MassDetTrainer", "build_mass_optimizer", "check_weights_file"]
