r"""Prediction over several processes (``torchrun``), one prediction folder.

``torchrun --nproc_per_node N -m deeplima predict ...`` (and the same across nodes with
``--nnodes`` / ``--rdzv-endpoint``) starts N copies of the command; each reads its place in the run
from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
and :func:`init_ranks` joins them in a :mod:`torch.distributed` process group: NCCL when the models
run on CUDA (rank r on ``cuda:LOCAL_RANK``), gloo on the CPU. Without torchrun (or with one process)
nothing is initialised and :class:`Ranks` is the single process.

The ranks only exchange small Python objects (the input list, each rank's per-image outcomes, the
final summary), always over a gloo group (detectron2's ``comm`` does the same): object collectives
then never need a GPU, and a NCCL group is left to the models. How the work is shared and merged is
:func:`deeplima.writer.write_predictions`'s business: rank 0 collects the inputs and assigns the
image ids, each rank predicts every ``WORLD_SIZE``-th image and writes its per-image files, and
rank 0 writes the folder-level files once every rank has handed in its outcomes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from common.device import select_device

__all__ = ["COLLECTIVE_TIMEOUT", "Ranks", "choose_device", "init_ranks", "launched_world_size"]

#: How long a rank waits for the others in a collective. A rank that finished its share waits at
#: the final gather for the slowest one (after ``--resume`` one rank may have everything to do and
#: another nothing), so it is a day rather than torch's 30 minutes; a rank that dies is noticed by
#: torchrun, which stops the others at once.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


def launched_world_size() -> int:
    """The number of processes torchrun started for this run (``WORLD_SIZE``; 1 without
    torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def choose_device(requested: str | None, default: str | None = None) -> torch.device:
    """The device this process predicts on.

    Args:
        requested: ``--device``: "auto", "cpu", "cuda" or "cuda:N"; None = ``default``.
        default: the models' own choice (e.g. the mass config's ``MODEL.DEVICE``); None = "auto".

    "auto" is CUDA when available, else the CPU; CUDA asked for but absent falls back to the CPU
    with a warning (:func:`common.device.select_device`). Under torchrun with more than one process,
    "cuda" without an index (and "auto" on a GPU machine) becomes ``cuda:LOCAL_RANK``, one GPU per
    process; an explicit ``cuda:N`` is kept as given.
    """
    device = select_device(requested if requested is not None else (default or "auto"))
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass
class Ranks:
    """The processes of one prediction run and the few collectives the writer needs.

    The default is the single process (every collective is the identity). Built by
    :func:`init_ranks` under torchrun.

    Attributes:
        rank / world_size / local_rank: this process's place (torchrun's ``RANK``, ``WORLD_SIZE``,
            ``LOCAL_RANK``).
        group: the gloo process group of the object collectives (None: the default group, or no
            process group at all when ``world_size`` is 1).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: collects the inputs, writes the folder-level files, prints the summary."""
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """The indices of ``range(n)`` this rank owns: every ``world_size``-th one from ``rank``
        (round robin, so neighbouring images, often of one study, are spread evenly)."""
        return list(range(self.rank, n, self.world_size))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable; the other ranks' argument is ignored)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0, None on the others. Waits for all ranks
        (the run's barrier)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def close(self) -> None:
        """Leave the process group (a no-op for the single process)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group torchrun prepared (``env://``), or the single process without one.

    Args:
        device: this process's device (:func:`choose_device`): a CUDA device selects NCCL for the
            default group and becomes the current device; the CPU selects gloo.

    Returns:
        :class:`Ranks` with a gloo group for the object collectives.
    """
    world = launched_world_size()
    if world <= 1:
        return Ranks()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if cuda else None
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), group=group)
