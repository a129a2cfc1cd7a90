"""What a public-dataset recipe is: the interface every file in `benchmarks/datasets/` implements.

A recipe reads one public dataset from the folder a user downloaded it to, in the layout its publisher
releases (no download code: the recipe names the official source and licence), and returns
:class:`BenchmarkData` — one :class:`BenchmarkRecord` per image with its class name(s), its patient (or eye /
image, where the data has no patient ids) and its split. The split is the official one where the publisher
gives one, else a documented seeded patient-level split (:func:`seeded_group_split`). `write_manifests`
turns the records into the CSV manifests `retvlp evaluate` reads, so every protocol of the evaluation suite
runs on them unchanged.

Layout problems raise :class:`RecipeLayoutError` naming the dataset, the file or column that is missing or
wrong, and what the recipe expected; rows a recipe cannot use (an image listed in the sheet but missing on
disk, an unknown grade) are never dropped silently: they are counted and listed in `BenchmarkData.skipped`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

SPLITS = ("train", "val", "test")
TASKS = ("multiclass", "binary", "multilabel")


class RecipeLayoutError(FileNotFoundError):
    """The dataset folder does not look like the publisher's release (message: which file / column, expected
    what, and where the recipe looked)."""


@dataclass(frozen=True)
class ReferenceFigure:
    """A published figure the leaderboard shows as a reference row (never recomputed here)."""

    model: str  # as the paper names it, e.g. "RETFound (CFP)", "FLAIR"
    protocol: str  # "finetune", "linear-probe", "zero-shot", "few-shot-<k>" (k shots per class)
    metric: str  # "roc_auc", "pr_auc", "balanced_accuracy" (ACA), "kappa", "accuracy"
    value: float  # in [0, 1]
    source: str  # paper, table / figure, e.g. "Zhou et al., Nature 2023, Fig. 2 / Suppl. Table 2"


@dataclass(frozen=True)
class BenchmarkRecord:
    image: str  # absolute path of the image file
    labels: tuple[str, ...]  # class name(s) as the recipe's `classes` spell them (one unless multilabel)
    group: str  # patient id where the data has one, else eye, else the image's own id
    split: str  # one of SPLITS


@dataclass(frozen=True)
class SkippedRow:
    where: str  # file and row / image name
    reason: str


@dataclass
class BenchmarkData:
    name: str
    classes: tuple[str, ...]
    task: str
    ordinal: bool
    records: list[BenchmarkRecord]
    split_source: str  # "official (<file>)" or "seeded patient-level split (seed S, fractions ...)"
    grouping: str  # "patient", "eye" or "image"
    notes: list[str] = field(default_factory=list)  # quirks the recipe applied, in words
    skipped: list[SkippedRow] = field(default_factory=list)

    def split(self, name: str) -> list[BenchmarkRecord]:
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: images}}."""
        table: dict[str, dict[str, int]] = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for record in self.records:
            for label in record.labels:
                table[record.split][label] += 1
        return {s: c for s, c in table.items() if any(c.values())}

    def write_manifests(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write `<split>.csv` (columns image, label, group; multi-label rows join labels with "|") for each
        split present and return {split: path}. The images stay where they are."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for split in SPLITS:
            rows = self.split(split)
            if not rows:
                continue
            path = directory / f"{split}.csv"
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "label", "group"])
                for r in rows:
                    writer.writerow([r.image, "|".join(r.labels), r.group])
            os.replace(tmp, path)
            written[split] = path
        return written


class DatasetRecipe:
    """One public dataset. Subclasses set the class attributes and implement `required_files` and `read`."""

    name: ClassVar[str]  # command-line name, lower case, e.g. "aptos2019", "odir200x3"
    title: ClassVar[str]  # e.g. "APTOS 2019 Blindness Detection"
    suites: ClassVar[tuple[str, ...]]  # "retfound" and / or "flair"
    task: ClassVar[str]  # one of TASKS
    ordinal: ClassVar[bool] = False  # graded classes (quadratic kappa is reported)
    classes: ClassVar[tuple[str, ...]]  # class names as the papers prompt them, in label order
    folder: ClassVar[str]  # the folder under --data-root the user unpacks the release into
    source: ClassVar[str]  # official download page
    licence: ClassVar[str]
    citation: ClassVar[str]
    layout: ClassVar[str]  # the expected layout, for docs and errors (a few lines)
    references: ClassVar[tuple[ReferenceFigure, ...]] = ()

    def root(self, data_root: str | os.PathLike) -> Path:
        return Path(data_root) / self.folder

    def required_files(self) -> Sequence[str]:
        """Paths relative to `root` whose presence says the dataset is there (e.g. the label sheet)."""
        raise NotImplementedError

    def is_present(self, data_root: str | os.PathLike) -> bool:
        root = self.root(data_root)
        return root.is_dir() and all((root / p).exists() for p in self.required_files())

    def missing(self, data_root: str | os.PathLike) -> list[str]:
        root = self.root(data_root)
        return [p for p in self.required_files() if not (root / p).exists()]

    def load(self, data_root: str | os.PathLike, *, seed: int = 0) -> BenchmarkData:
        """Read the release under `data_root / folder`. `seed` only matters where the split is not official."""
        root = self.root(data_root)
        missing = self.missing(data_root)
        if missing:
            raise RecipeLayoutError(
                f"{self.title}: {root} lacks {', '.join(missing)}. Expected layout:\n{self.layout}\n"
                f"Download: {self.source}"
            )
        data = self.read(root.resolve(), seed=seed)
        unknown = sorted({lab for r in data.records for lab in r.labels} - set(self.classes))
        if unknown:
            raise RecipeLayoutError(
                f"{self.title}: the recipe produced labels {unknown} outside {self.classes}."
            )
        return data

    def read(self, root: Path, *, seed: int) -> BenchmarkData:
        raise NotImplementedError


def seeded_group_split(
    labels: Sequence[str],
    groups: Sequence[str],
    classes: Sequence[str],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> list[str]:
    """A patient-level split stratified by class: every group lands in one split; returns each row's split.

    Used where the publisher gives no split; the recipe states `fractions` and `seed` in `split_source`.
    Built on the evaluation suite's group-stratified split (test first, then validation from the rest), so
    it depends only on the rows, their labels, their groups and the seed.
    """
    import numpy as np

    from ..evaluation.splits import group_stratified_split, order_free_targets

    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups.")
    train_f, val_f, test_f = fractions
    if min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or test_f <= 0:
        raise ValueError(f"fractions (train, val, test) must be >= 0, sum to 1, test > 0; got {fractions}.")
    index = {c: i for i, c in enumerate(classes)}
    targets = order_free_targets(np.asarray([index[lab] for lab in labels]), list(classes))
    groups = np.asarray([str(g) for g in groups])
    rest, test = group_stratified_split(targets, groups, test_fraction=test_f, seed=seed)
    split = np.full(len(labels), "train", dtype=object)
    split[test] = "test"
    if val_f > 0:
        rest = np.asarray(rest)
        _, val = group_stratified_split(
            targets[rest], groups[rest], test_fraction=val_f / (1 - test_f), seed=seed
        )
        split[rest[val]] = "val"
    return [str(s) for s in split]


def records_from(
    rows: Iterable[tuple[str, tuple[str, ...], str]], splits: Sequence[str]
) -> list[BenchmarkRecord]:
    return [
        BenchmarkRecord(image=image, labels=tuple(labels), group=group, split=split)
        for (image, labels, group), split in zip(rows, splits, strict=True)
    ]
