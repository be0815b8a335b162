r"""Train or evaluate the mass detector.

    python -m mass_det.train_net --config-file mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml \
        [--resume] [--eval-only] [--num-gpus N] [KEY VALUE ...]
    torchrun --nproc_per_node N -m mass_det.train_net --config-file ... [KEY VALUE ...]

``--num-gpus N`` starts N processes on this machine (detectron2's flag name; on a CPU-only machine, or
with ``MODEL.DEVICE cpu``, they are N CPU processes). Under ``torchrun`` the processes are torchrun's
and ``--num-gpus`` is left out (or equals ``--nproc_per_node``). GPU processes talk over NCCL, one GPU
each; CPU processes over gloo, each with its share of the cores.

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

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, default_setup
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

from common.device import select_device
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


TIMEOUT = timedelta(minutes=30)


class LaunchError(ValueError):
    """A process layout that cannot run (too many GPU processes, a torchrun mismatch)."""


def _worker(local_rank, args, world_size, nproc, machine_rank, dist_url, device_type):
    """One of the processes ``launch_training`` starts: join the group, then :func:`main`."""
    if device_type == "cpu":
        # The spawned processes would otherwise each start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    _join_group(machine_rank * nproc + local_rank, world_size, nproc, local_rank, dist_url,
                device_type)
    main(args)


def _join_group(rank, world_size, nproc, local_rank, init_method, device_type):
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=init_method,
                            world_size=world_size, rank=rank, timeout=TIMEOUT)
    comm.create_local_process_group(nproc)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    comm.synchronize()


def launch_training(args):
    """Run :func:`main` in the processes the arguments ask for; returns its result with one process.

    Three cases: ``torchrun`` started this process (``WORLD_SIZE`` in the environment): it joins
    torchrun's group. ``--num-gpus`` times ``--num-machines`` above 1: ``--num-gpus`` processes are
    spawned here and meet at ``--dist-url``. Otherwise :func:`main` runs in this process. The backend
    follows the device of the config (``MODEL.DEVICE``, resolved as in :func:`setup`): NCCL on CUDA,
    gloo on the CPU.
    """
    device_type = select_device(get_mass_det_cfg(args.config_file, args.opts).MODEL.DEVICE).type
    if "WORLD_SIZE" in os.environ:
        world_size = int(os.environ["WORLD_SIZE"])
        nproc = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if args.num_gpus not in (1, nproc) or args.num_machines != 1:
            raise LaunchError(
                f"under torchrun the processes are torchrun's ({nproc} here): leave out --num-gpus "
                "and --num-machines")
        if world_size == 1:
            return main(args)
        _join_group(int(os.environ["RANK"]), world_size, nproc, int(os.environ["LOCAL_RANK"]),
                    "env://", device_type)
        try:
            return main(args)
        finally:
            dist.destroy_process_group()
    nproc = args.num_gpus
    world_size = nproc * args.num_machines
    if world_size <= 1:
        return main(args)
    if device_type == "cuda" and nproc > torch.cuda.device_count():
        raise LaunchError(f"--num-gpus {nproc} but this machine has {torch.cuda.device_count()} "
                          "GPU(s); add MODEL.DEVICE cpu to train on the CPU")
    dist_url = args.dist_url
    if dist_url == "auto":
        if args.num_machines != 1:
            raise LaunchError("--dist-url auto works on one machine only: give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(_worker, nprocs=nproc, daemon=False,
                       args=(args, world_size, nproc, args.machine_rank, dist_url, device_type))
    return None


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        return launch_training(args)
    except (WeightsNotFoundError, FrozenRandomInitError, IgnoredLossSwitchError, InputError,
            LaunchError) as e:
        # Their messages already say what to do; a traceback would only bury that line. (With
        # several spawned processes, torch.multiprocessing reports the worker's traceback instead.)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    cli()
