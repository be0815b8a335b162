r"""Train or evaluate the mass detector.

    python -m mass_det.train_net --config-file mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml \
        [--resume] [--eval-only] [--num-gpus N] [KEY VALUE ...]

``KEY VALUE`` pairs override the config (e.g. ``MODEL.WEIGHTS /path/R-50.pkl SOLVER.MAX_ITER 100``).
The paper's configs start from ImageNet weights (``detectron2://ImageNetPretrained/MSRA/R-50.pkl``,
downloaded once into iopath's cache); offline, give a local copy in ``MODEL.WEIGHTS`` or use
``faster_rcnn_R50_FPN_FL_NL_scratch.yaml``. A missing weights file, a failed download or a config
that would train frozen random layers stops the command before the first iteration with one
``error:`` line, as do a focal-loss switch the configured modules would ignore and a training or test
dataset whose canonical folder does not exist.
The datasets of ``DATASETS.CANONICAL.ROOTS`` are registered in ``setup()``, so every process that
``launch`` starts has them.
"""

from __future__ import annotations

from detectron2.engine import default_argument_parser, default_setup, launch

from common.errors import InputError
from mass_det.config import get_mass_det_cfg, resolve_device
from mass_det.data.register import register_mass_datasets
from mass_det.engine.trainer import (
    FrozenRandomInitError,
    IgnoredLossSwitchError,
    MassDetCheckpointer,
    MassDetTrainer,
    WeightsNotFoundError,
    resolve_weights_file,
)


def setup(args):
    """Config from file + command-line overrides; datasets registered; output dir and logging set up."""
    cfg = get_mass_det_cfg(args.config_file, args.opts)
    resolve_device(cfg)
    register_mass_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = MassDetTrainer.build_model(cfg)
        checkpointer = MassDetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not (args.resume and checkpointer.has_checkpoint()):
            resolve_weights_file(cfg.MODEL.WEIGHTS)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return MassDetTrainer.test(cfg, model)
    trainer = MassDetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (WeightsNotFoundError, FrozenRandomInitError, IgnoredLossSwitchError, InputError) as e:
        # Their messages already say what to do; a traceback would only bury that line. (With
        # several processes, torch.multiprocessing reports the worker's traceback instead.)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    cli()
