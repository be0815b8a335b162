"""Training loop of the mass detector (a detectron2 DefaultTrainer)."""

from .trainer import (
    FrozenRandomInitError,
    IgnoredLossSwitchError,
    MassDetCheckpointer,
    MassDetTrainer,
    WeightsNotFoundError,
    build_mass_optimizer,
    check_loss_switches,
    check_trainable_init,
    resolve_weights_file,
)

__all__ = [
    "FrozenRandomInitError",
    "IgnoredLossSwitchError",
    "MassDetCheckpointer",
    "MassDetTrainer",
    "WeightsNotFoundError",
    "build_mass_optimizer",
    "check_loss_switches",
    "check_trainable_init",
    "resolve_weights_file",
]
