"""Command-line plumbing shared by the toolkit's commands: usage errors as one line, and argparse
``type`` functions that refuse NaN, infinities and values out of range."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["OneLineArgumentParser", "number_arg", "number_list_arg"]


class OneLineArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose usage errors are one line ``error: ...`` on stderr with
    exit status 2 (the usage block is left to ``--help``); sub-command parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _describe(low: float, high: float, low_open: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if math.isfinite(high):
        return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}]"
    return f"{kind} {'>' if low_open else '>='} {low:g}"


def number_arg(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               integer: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number (an ``int`` with ``integer``) that is ``>= low`` (``> low``
    with ``low_open``) and ``<= high``; anything else is a usage error naming the range."""
    what = _describe(low, high, low_open, integer)

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and value <= high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


def number_list_arg(low: float = -math.inf, *, low_open: bool = False) -> Callable[[str], list]:
    """An argparse ``type``: one or more comma-separated values, each as :func:`number_arg`
    (``low``, ``low_open``) accepts (e.g. FP/image levels ``1,2,5,10``)."""
    one = number_arg(low, low_open=low_open)
    what = _describe(low, math.inf, low_open, False)

    def parse(text: str) -> list[float]:
        try:
            values = [one(v) for v in text.split(",") if v.strip()]
        except argparse.ArgumentTypeError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(
                f"must be values separated by commas, each {what}, got {text!r}")
        return values

    return parse
