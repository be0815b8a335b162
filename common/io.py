"""Atomic file output and small I/O helpers.

Every writer goes through a temporary file in the destination folder followed by ``os.replace``, so an
interrupted run never leaves a half-written output behind and never destroys an earlier complete one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.errors import InputError
from common.limits import check_raster_size

# suffixes of the hidden temporaries (".NAME.<random>.tmp", ".NAME.<pid>.staged") that the
# atomic writers rename into place; remove_stale_temporaries finds a killed process's leftovers by them
_TMP_SUFFIX = ".tmp"
_STAGED_SUFFIX = ".staged"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders.

    The file gets the usual permissions of a new file (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` (numpy scalars and arrays allowed) to JSON atomically."""
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 (H, W) or uint8 (H, W, 3|4) RGB(A) array; bool is stored as 0/255."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16 data, got {a.dtype}")
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def atomic_write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an image array as PNG atomically (see :func:`encode_png` for accepted arrays)."""
    return atomic_write_bytes(path, encode_png(array))


def read_png(path: str | Path) -> np.ndarray:
    """Read a PNG/TIFF keeping its bit depth; colour images come back RGB. The header's pixel count is
    checked against :func:`common.limits.pixel_limit` before decoding."""
    if Path(path).is_file():
        check_raster_size(path)
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise InputError(path, "missing or not a readable image file")
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_BGR2RGB if a.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return a


def read_json(path: str | Path) -> Any:
    """Load a JSON file, turning a missing or malformed file into an :class:`InputError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e.msg} at line {e.lineno})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats by None recursively, numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_together(items: Sequence[tuple[Path, Callable[[Path], Any]]],
                   invalidate: Sequence[Path] = ()) -> list[Path]:
    """Write several files as a set: ``writer(tmp)`` of each ``(path, writer)`` first writes a hidden
    temporary file beside ``path``; only when all are written are they renamed into place, in the order
    given. A failure while writing (full disk, read-only folder...) therefore leaves the earlier
    versions of ALL of them untouched and no temporary file behind. ``invalidate`` files are deleted
    just before the renames (e.g. a "complete" marker that the new files would contradict)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, writer in items:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}{_STAGED_SUFFIX}")
            staged.append((tmp, path))
            writer(tmp)
        for path in invalidate:
            Path(path).unlink(missing_ok=True)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return [path for _, path in staged]


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the hidden temporaries of :func:`atomic_write_bytes` and :func:`write_together` (and
    the writers built on them) that a killed process left in ``folder``. Only safe when no other
    process is writing into ``folder``; a file that cannot be removed is left alone."""
    for suffix in (_TMP_SUFFIX, _STAGED_SUFFIX):
        for tmp in Path(folder).glob(f".*{suffix}"):
            try:
                tmp.unlink()
            except OSError:
                pass  # not ours to remove after all: harmless beside the outputs


def os_error_reason(e: OSError) -> str:
    """One line for a failed file operation: the reason, then the file when the error names one."""
    reason = e.strerror or str(e) or type(e).__name__
    where = f": {e.filename}" if e.filename else ""
    return " ".join(f"{reason}{where}".split())
