"""One exception type for problems with input files."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A file that cannot be used as input.

    ``str(err)`` is a single line ``"<path>: <reason>"`` so batch commands can list failures verbatim.
    """

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)
