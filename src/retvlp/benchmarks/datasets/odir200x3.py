"""ODIR-200x3: the FLAIR / KeepFIT ODIR subset protocol (normal / pathologic myopia / cataract, 200 eyes each).

Reads the official ODIR-5K training release (the `odir5k` recipe's folder and layout; one download serves both).
Candidates: eye images whose own diagnostic keywords give exactly one of the three classes and nothing else
(per-eye labels as in `odir5k`; ambiguous eyes are skipped there and here). Draw: 200 eyes per class, uniformly
at random without replacement with numpy's default_rng(DRAW_SEED = 0), from the candidates in sheet order — a
fixed, documented draw that `seed` does not change (it only changes the split). FLAIR's own subset
(jusiro/FLAIR local_data/prepare_partitions.py, adequate_08_odir5k; reused by KeepFIT) instead takes the first
200 eyes per class in sheet order among patients whose one-hot row has that single disease, so the images
differ from FLAIR's while the protocol (classes, size) is the same — unless FLAIR's published subset list is
in the folder: put `08_ODIR200x3.csv` (jusiro/FLAIR, local_data/dataframes/transferability/classification/;
columns image, atributes, categories; image `08_ODIR-5K/preprocessed_images/<id>_<eye>.jpg`, categories a
one-element list) next to the sheet and exactly those images, with FLAIR's labels, are used (image file
names matched by base name in the release's image folder; a listed image missing there is skipped and listed),
so zero-shot figures compare with FLAIR's and KeepFIT's on the same 600 eyes. Class names as FLAIR prompts them
(local_data/experiments.py: normal, pathologic myopia, cataract). Grouping: patient; seeded split. The papers
evaluate zero-shot on all 600 images.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from ..recipe import SkippedRow
from ._common import Recipe, inside
from ._sheets import read_csv
from .odir5k import IMAGES, LAYOUTS, NOTES, SHEET, read_odir_eyes

PER_CLASS = 200
DRAW_SEED = 0
FLAIR_SUBSET = "08_ODIR200x3.csv"  # FLAIR's published list of the 600 eyes, used when the user adds it


class ODIR200x3(Recipe):
    name = "odir200x3"
    title = "ODIR-200x3 (FLAIR / KeepFIT subset)"
    suites = ("flair",)
    task = "multiclass"
    classes = ("normal", "pathologic myopia", "cataract")
    per_class = PER_CLASS
    folder = "odir5k"
    source = (
        "https://odir2019.grand-challenge.org/ (ODIR-5K training release; subset protocol of FLAIR / KeepFIT)"
    )
    licence = "the ODIR-2019 challenge data terms (research use; see the challenge page)"
    citation = (
        "Li N, et al. A benchmark of ocular disease intelligent recognition (Bench 2020). Subset protocol: "
        "Silva-Rodriguez J, et al. A foundation language-image model of the retina (FLAIR). Med Image Anal "
        "2025;99:103357; Wu M, et al. Mm-retinal: knowledge-enhanced foundational pretraining with fundus "
        "image-text expertise (KeepFIT). MICCAI 2024."
    )
    layout = f"odir5k/   (the ODIR-5K release, as for odir5k)\n  {SHEET}\n  {IMAGES}/0_left.jpg, ..."

    layouts = LAYOUTS

    def required_files(self):
        return (SHEET, IMAGES)

    def read(self, root: Path, *, seed: int):
        if (root / FLAIR_SUBSET).is_file():
            return self.read_flair_subset(root, seed=seed)
        eyes, skipped = read_odir_eyes(self, root)
        rng = np.random.default_rng(DRAW_SEED)
        rows, notes = [], []
        for label in self.classes:
            candidates = [e for e in eyes if e[1] == (label,)]
            if len(candidates) > self.per_class:
                keep = sorted(rng.choice(len(candidates), size=self.per_class, replace=False).tolist())
                candidates = [candidates[i] for i in keep]
            elif len(candidates) < self.per_class:
                notes.append(
                    f"only {len(candidates)} candidate eye(s) for {label!r} (protocol: {self.per_class}): all kept"
                )
            rows.extend(candidates)
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="patient",
            notes=NOTES
            + [
                f"draw: {self.per_class} eyes per class, numpy default_rng({DRAW_SEED}), candidates in sheet order"
            ]
            + notes,
            skipped=skipped,
        )

    def read_flair_subset(self, root: Path, *, seed: int):
        """The eyes and labels of FLAIR's `08_ODIR200x3.csv`, found by base name in the release's images."""
        images = (self.layout_in(root) or (SHEET, IMAGES))[1]
        where_file = f"{self.folder}/{FLAIR_SUBSET}"
        table = read_csv(root / FLAIR_SUBSET)
        header, lines = (table[0], table[1:]) if table else ([], [])
        missing = [c for c in ("image", "categories") if c not in header]
        if missing:
            raise self.error(
                f"{where_file} lacks the column(s) {missing}; FLAIR's file has image and categories"
            )
        column = {name: header.index(name) for name in ("image", "categories")}
        rows, skipped = [], []
        for number, values in enumerate(lines, start=2):
            where = f"{where_file} row {number}"
            name = values[column["image"]].replace("\\", "/").rsplit("/", 1)[-1]
            try:
                categories = ast.literal_eval(values[column["categories"]])
            except (ValueError, SyntaxError):
                categories = None
            if not isinstance(categories, list) or len(categories) != 1 or categories[0] not in self.classes:
                skipped.append(
                    SkippedRow(
                        where, f"categories {values[column['categories']]!r} is not one of {self.classes}"
                    )
                )
                continue
            image = inside(root, f"{images}/{name}", dataset=self.title, where=where, entry=name)
            if not image.is_file():
                skipped.append(SkippedRow(where, f"{name} is not in {images}/"))
                continue
            rows.append((str(image), (categories[0],), name.split("_", 1)[0]))
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="patient",
            notes=[f"subset: FLAIR's published list {FLAIR_SUBSET} ({len(rows)} eyes, its labels)"],
            skipped=skipped,
        )


RECIPE = ODIR200x3()
