"""The images of a prediction run, pre-processed ahead of the models.

:class:`ImageSource` is a :class:`torch.utils.data.Dataset` whose item is one input file made ready
for the models (:class:`PreparedImage`): its SHA-256, whether an earlier run already finished it
(``--resume``), and its pre-processing (:class:`deeplima.pipeline.Preprocessor`: DICOM read, window,
breast region, artifacts). :func:`prepared_batches` reads it through a
:class:`~torch.utils.data.DataLoader`: with ``workers > 0`` that work runs in worker processes on
the next images while the models run on the current ones; with 0 it runs in this process, one
image after the other, as before.

A bad file never stops the loader: every exception of an item is caught in the worker and handed
back as the item's one-line ``error`` (an exception raised in a worker would end the whole
iteration). Items come back in input order. Only a worker process that dies (killed for memory, a
crash in native code) stops the run, with one line (:func:`worker_died`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from common.errors import InputError
from common.io import sha256_file
from common.preprocess import Preprocessed

__all__ = ["ImageSource", "PreparedImage", "prepared_batches", "sha256_or_none", "worker_died"]


def sha256_or_none(path: str | Path) -> str | None:
    """Hex SHA-256 of the file, or None when it is missing or unreadable (the pre-processing then
    reports why)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


@dataclass
class PreparedImage:
    """One input file, ready for the models (or not).

    Exactly one of ``preprocessed``, ``record`` and ``error`` is set.

    Attributes:
        index: position in the run's input list (0-based; the image id is ``index + 1``).
        path / stem: the input file and its output stem.
        sha256: the file's SHA-256 (None when it cannot be read).
        preprocessed: the pre-processing result, to predict.
        seconds: time the pre-processing took.
        record: the per-image record of an earlier run that already finished this file
            (``--resume``): nothing to do.
        error / reason: the one-line failure (``"PATH: reason"``) and its reason.
    """

    index: int
    path: str
    stem: str
    sha256: str | None
    preprocessed: Preprocessed | None = None
    seconds: float = 0.0
    record: dict | None = None
    error: str | None = None
    reason: str | None = None


class ImageSource(Dataset):
    """``ImageSource(items, preprocess, finished)[k]`` -> :class:`PreparedImage` of ``items[k]``.

    Picklable as long as ``preprocess`` and ``finished`` are (module-level functions, partials,
    :class:`deeplima.pipeline.Preprocessor`), so it also works with spawned worker processes.
    """

    def __init__(
        self,
        items: Sequence[tuple[int, str | Path, str]],
        preprocess: Callable[[str], Preprocessed],
        finished: Callable[[str, str | None], dict | None] | None = None,
    ):
        """
        Args:
            items: ``(index, path, stem)`` of each file, in the order to read them.
            preprocess: path -> :class:`~common.preprocess.Preprocessed`, raising
                :class:`InputError` for a bad file.
            finished: ``(stem, sha256) -> record or None``: the per-image record of an earlier
                run that needs no redoing (``--resume``); None = redo everything.
        """
        self.items = [(int(i), str(p), str(s)) for i, p, s in items]
        self.preprocess = preprocess
        self.finished = finished

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> PreparedImage:
        index, path, stem = self.items[k]
        item = PreparedImage(index, path, stem, sha256_or_none(path))
        if self.finished is not None:
            item.record = self.finished(stem, item.sha256)
            if item.record is not None:
                return item
        t = time.perf_counter()
        try:
            item.preprocessed = self.preprocess(path)
        except InputError as e:
            item.error, item.reason = str(e), e.reason
        except Exception as e:  # a bug rather than a bad file: report it, go on with the rest
            item.reason = " ".join(f"unexpected {type(e).__name__}: {e}".split())
            item.error = f"{path}: {item.reason}"
        item.seconds = time.perf_counter() - t
        return item


def _as_is(item: PreparedImage) -> PreparedImage:
    """The DataLoader's collate function: items stay as they are (no tensors)."""
    return item


def prepared_batches(source: ImageSource, batch_size: int = 1, workers: int = 0
                     ) -> Iterator[list[PreparedImage]]:
    """The items of ``source`` in order, in lists holding up to ``batch_size`` images to predict
    (plus the finished and failed items met on the way).

    Args:
        batch_size: images handed to the models together (>= 1).
        workers: DataLoader worker processes (0: in this process, one item after the other). At
            most ``len(source)`` are started; they keep ``max(2, ceil(batch_size / workers))``
            items each in flight, so the next batch is ready when the models finish one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    workers = min(workers, len(source))
    if not len(source):
        return
    loader = DataLoader(
        source, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
        prefetch_factor=max(2, -(-batch_size // workers)) if workers else None,
    )
    batch: list[PreparedImage] = []
    n_todo = 0
    items = iter(loader)
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except RuntimeError as e:
            raise worker_died(e) or e from None
        batch.append(item)
        n_todo += item.preprocessed is not None
        if n_todo == batch_size:
            yield batch
            batch, n_todo = [], 0
    if batch:
        yield batch


def worker_died(error: BaseException) -> InputError | None:
    """The one-line error of a run whose pre-processing worker process died (killed for memory, a
    crash in a native decoder: torch's DataLoader raises a RuntimeError naming the worker), or None
    for any other error. What was written so far stays; ``--resume`` goes on from there."""
    reason = " ".join(str(error).split())
    if not isinstance(error, RuntimeError) or "DataLoader worker" not in reason:
        return None
    return InputError(None, f"a pre-processing worker process died ({reason}); the outputs "
                            f"written so far are kept (rerun with --resume, or fewer --workers)")
