"""One exception type for problems with input files, and one-line reasons for the files that the
safe loaders (``torch.load(weights_only=True)``, PyYAML's safe loader) refuse."""

from __future__ import annotations

import re
from pathlib import Path

import yaml


class InputError(ValueError):
    """A file that cannot be used as input.

    ``str(err)`` is a single line ``"<path>: <reason>"`` so batch commands can list failures verbatim.
    """

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


def checkpoint_error(error: Exception) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)``: torch's refusal of an object
    (several lines of advice to load it unsafely) becomes the one global it named."""
    reason = " ".join(str(error).split())
    if "Weights only load failed" in reason:
        found = re.search(r"GLOBAL ([\w.]+)", reason)
        if found:
            return (f"it would build the Python object {found.group(1)}; checkpoints are read as "
                    "tensors and plain data only")
        found = re.search(r"WeightsUnpickler error: (.*?) Check the documentation", reason)
        detail = f" ({found.group(1)[:200]})" if found else ""
        return f"not tensors and plain data{detail}; checkpoints are read as data only"
    return f"{type(error).__name__}: {reason[:300]}"


def yaml_error(config_file, error) -> InputError:
    """One-line :class:`InputError` for a YAML file PyYAML's safe loader rejects, naming the file
    (the ``_BASE_`` file where the problem is, when it is one)."""
    mark = getattr(error, "problem_mark", None)
    where = getattr(mark, "name", None)
    path = where if where and not str(where).startswith("<") else config_file
    line = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if isinstance(error, yaml.constructor.ConstructorError):
        # e.g. !!python/object/apply:os.system: configs are data, a tag that builds Python objects
        # (and could run code) is refused
        return InputError(path, f"YAML tag refused{line}: {problem} (configs are plain data; Python "
                                "object tags are never loaded)")
    return InputError(path, f"invalid YAML{line}: {problem}")

