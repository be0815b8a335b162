"""The converter base: the one conversion every ``datasets/<source>.py`` runs.

A converter turns one published download (``--root``) into the canonical folder (``--out``, layout in
:mod:`datasets.canonical`). :class:`Converter` owns everything that is the same for every source:

1. the folder checks: ``--root`` must be a folder, ``--out`` missing or empty unless ``--overwrite``
   and never the download itself (:func:`datasets.tables.check_root`,
   :func:`datasets.output.check_out`);
2. the staged output: the dataset is written into a hidden staging folder that replaces ``--out`` only
   when the whole conversion succeeded (:func:`datasets.output.staged_output`);
3. numbering the images, writing their calcification masks and collecting the annotations;
4. the patient-level split (:meth:`Converter.assign_splits`, 60/20/20 unless the source overrides it);
5. the canonical files and the problem report (:func:`datasets.output.write_canonical`), the problem
   summary on stderr;
6. the command line ``python -m datasets.<source> --root RAW --out OUT [--seed S] [--no-hash]
   [--overwrite]``.

A source module holds only its format: subclass :class:`Converter`, set :attr:`~Converter.name` and
:attr:`~Converter.title`, implement :meth:`~Converter.images` (read the download's files and rows,
yield one :class:`ConvertedImage` per usable image, report every skipped row or file on
``self.report``), and expose the entry points::

    class MiasConverter(Converter):
        name, title = "mias", "mini-MIAS"

        def images(self):
            ...
            yield ConvertedImage(record, masses, calc)

    convert = MiasConverter.convert  # convert(root, out, seed=0, hash_files=True, verbose=True, ...)
    main = MiasConverter.main  # the command line
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from common.errors import InputError
from datasets.calc_mask import CalcMask
from datasets.output import staged_output, write_canonical
from datasets.splits import DEFAULT_RATIOS, assign_splits
from datasets.tables import ConversionReport, check_root, unique_stem


@dataclass
class ConvertedImage:
    """One usable image of a download, as a source's :meth:`Converter.images` yields it.

    Attributes:
        record: the image record without ``id``, ``split`` and ``mask_file`` (the base sets them):
            ``file_name`` (absolute path into the download, or relative to the output folder for a
            file written there), ``stem``, ``height``, ``width`` (pixels), ``patient_id``,
            ``laterality``, ``view``, ``pixel_spacing`` ([row_mm, col_mm] or None), ``density`` and
            any source-specific keys (``pathology``, ``birads``, ``source_split``, ...).
        masses: mass annotations without ``image_id``: ``bbox`` [x, y, w, h] in original image
            pixels (top-left origin, x along columns), ``area`` (px², optional), ``segmentation``
            (COCO polygons, optional) and source-specific keys.
        calc: the image's calcification shapes; None (or empty) when it has none.
    """

    record: dict
    masses: list[dict] = field(default_factory=list)
    calc: CalcMask | None = None


class Converter:
    """Base of the converters: one instance converts one download into one staging folder.

    Subclasses set the class attributes and implement :meth:`images`; they may override
    :meth:`assign_splits` and :meth:`info` (VinDr-Mammo keeps its published test set). Use the class
    through :meth:`convert` and :meth:`main`, which build the instance inside the staged output.
    """

    name: str = (
        ""  # short name: conversion_report.json "dataset", the problem summary, progress bars
    )
    title: str = ""  # published name: the COCO files' info "source", the command line's description
    ratios: Sequence[float] = DEFAULT_RATIOS  # train/val/test patient ratios, written to split.json

    def __init__(self, root: Path, out: Path, verbose: bool = True):
        """``root``: the download folder (checked); ``out``: the staging folder to write into;
        ``verbose``: progress bars and the problem summary on stderr."""
        self.root = Path(root)
        self.out = Path(out)
        self.verbose = verbose
        self.report = ConversionReport(self.name)
        self._stems: set[str] = set()

    # ---------------------------------------------------------------------------------- the hooks

    def images(self) -> Iterator[ConvertedImage]:
        """Read the download and yield its usable images in output order (ids follow it).

        Raise :class:`~common.errors.InputError` when the download as a whole is unusable (no table,
        missing columns); report row- and file-level problems on ``self.report`` and leave the image
        out (never yield an image whose ground truth is incomplete). Files written into the output
        (e.g. re-encoded images) go under ``self.out`` and are named relative to it.
        """
        raise NotImplementedError

    def assign_splits(self, images: list[dict], seed: int) -> None:
        """Set ``split`` on every image record: patient-level, seeded, :attr:`ratios`."""
        assign_splits(images, seed, self.ratios)

    def info(self) -> dict:
        """The ``info`` of both COCO files: the source and the download folder it came from."""
        return {"source": self.title, "root": str(self.root.resolve())}

    # -------------------------------------------------------------------- helpers for the hooks

    def progress(self, items: Iterable, desc: str | None = None) -> Iterable:
        """``items`` with a progress bar on stderr when verbose (label ``desc``, default the name)."""
        return tqdm(items, desc=desc or self.name, disable=not self.verbose)

    def unique_stem(self, name: str) -> str:
        """A file-name-safe stem unique within this conversion (:func:`datasets.tables.unique_stem`)."""
        return unique_stem(name, self._stems)

    # ------------------------------------------------------------------------------ the skeleton

    def run(self, seed: int = 0, hash_files: bool = True) -> dict:
        """Convert into ``self.out``: number the images, write their masks, split, write the canonical
        files and the report. Returns the summary of :func:`datasets.output.write_canonical`.

        Raises :class:`~common.errors.InputError` (naming the download) when no image converted.
        """
        images: list[dict] = []
        mass_annotations: list[dict] = []
        calc_annotations: list[dict] = []
        for item in self.images():
            image = {"id": len(images) + 1, **item.record}
            mass_annotations += [{**m, "image_id": image["id"]} for m in item.masses]
            if item.calc is None:
                image["mask_file"] = None
            else:
                calc_annotations += item.calc.finish(self.out, image)
            images.append(image)
        if not images:
            raise InputError(self.root, "no image could be converted")
        self.assign_splits(images, seed)
        summary = write_canonical(
            self.out,
            images,
            mass_annotations,
            calc_annotations,
            seed,
            self.report,
            ratios=self.ratios,
            hash_files=hash_files,
            info=self.info(),
        )
        if self.verbose:
            self.report.print_summary()
        return summary

    @classmethod
    def convert(
        cls,
        root: str | Path,
        out: str | Path,
        seed: int = 0,
        hash_files: bool = True,
        verbose: bool = True,
        overwrite: bool = False,
    ) -> dict:
        """Convert the download at ``root`` into the canonical folder ``out``; returns a summary.

        ``out`` must be missing or empty unless ``overwrite``, and must not be or hold ``root``; it is
        only changed when the conversion succeeds (:func:`datasets.output.staged_output`). ``seed``
        seeds the patient-level split; ``hash_files=False`` leaves the images' SHA-256 out of
        split.json. Raises :class:`~common.errors.InputError` for an unusable download or ``out``.
        """
        root = check_root(root)
        with staged_output(out, root, overwrite) as work:
            summary = cls(root, work, verbose).run(seed, hash_files)
        return {**summary, "out": str(out)}

    @classmethod
    def build_parser(cls) -> argparse.ArgumentParser:
        """The command line: ``--root RAW --out OUT [--seed S] [--no-hash] [--overwrite]``."""
        parser = argparse.ArgumentParser(
            description=f"Convert {cls.title} into the canonical dataset form."
        )
        parser.add_argument("--root", required=True, help="folder of the download, as published")
        parser.add_argument("--out", required=True, help="canonical dataset folder to write")
        parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
        parser.add_argument(
            "--no-hash", action="store_true", help="skip the SHA-256 of every image in split.json"
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="write into a non-empty --out: replace its canonical dataset files (JSON files, "
            "calc_masks/, images it references); nothing else in it is touched",
        )
        return parser

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> int:
        """Run the command line; returns the exit code.

        Prints the summary as JSON on stdout and the problem list on stderr; exit code 0 when the
        canonical folder was written (row-level problems are in conversion_report.json), 2 on an
        unusable download or an unusable ``--out`` (one ``error: <path>: <reason>`` line on stderr).
        """
        args = cls.build_parser().parse_args(argv)
        try:
            summary = cls.convert(
                args.root,
                args.out,
                seed=args.seed,
                hash_files=not args.no_hash,
                overwrite=args.overwrite,
            )
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2))
        return 0
