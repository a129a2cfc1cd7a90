"""REFUGE (Retinal Fundus Glaucoma Challenge, Orlando et al.): glaucoma vs no glaucoma, FLAIR suite.

Layout: the challenge's training release `Training400/Glaucoma/g0001.jpg` .. and
`Training400/Non-Glaucoma/n0001.jpg` ... Only these 400 images carry diagnosis labels in the release FLAIR uses
(jusiro/FLAIR local_data/prepare_partitions.py, adequate_25_refuge: "We only have labels for train subset"; it
reads a re-packed copy `train/Images/` and takes the class from the file name's first letter, g or n). This
recipe reads `Training400/` and, where that is absent, the re-packed `train/Images/`; in both the class is
checked against the letter g / n. Validation400 / Test400 are not read. Class names as FLAIR prompts them
(local_data/experiments.py). No patient ids: grouped by image; seeded split.
"""

from __future__ import annotations

from pathlib import Path

from ..recipe import SkippedRow
from ._common import Recipe, is_image

LETTERS = {"g": "glaucoma", "n": "no glaucoma"}
OFFICIAL = {"Training400/Glaucoma": "glaucoma", "Training400/Non-Glaucoma": "no glaucoma"}
REPACKED = "train/Images"


class REFUGE(Recipe):
    name = "refuge"
    title = "REFUGE (training set)"
    suites = ("flair",)
    task = "binary"
    classes = ("no glaucoma", "glaucoma")
    folder = "refuge"
    source = "https://refuge.grand-challenge.org/ (also https://ieee-dataport.org/documents/refuge-retinal-fundus-glaucoma-challenge)"
    licence = "the REFUGE challenge data terms (research use; see the challenge page)"
    citation = (
        "Orlando JI, Fu H, Barbosa Breda J, et al. REFUGE Challenge: A unified framework for evaluating automated "
        "methods for glaucoma assessment from fundus photographs. Med Image Anal 2020;59:101570."
    )
    layout = (
        "refuge/\n"
        "  Training400/Glaucoma/g0001.jpg ...\n"
        "  Training400/Non-Glaucoma/n0001.jpg ...\n"
        "  (or FLAIR's re-packed copy: train/Images/g0001.jpg, n0001.jpg ...)"
    )

    layouts = (tuple(OFFICIAL), (REPACKED,))

    def required_files(self):
        return tuple(OFFICIAL)

    def read(self, root: Path, *, seed: int):
        if self.layout_in(root) == tuple(OFFICIAL):
            sources = [(root / d, label) for d, label in OFFICIAL.items()]
            note = "read Training400/Glaucoma and Training400/Non-Glaucoma"
        else:
            sources = [(root / REPACKED, None)]
            note = "read the re-packed train/Images/ (class from the file name's first letter)"
        rows, skipped = [], []
        for directory, label in sources:
            for path in sorted(directory.iterdir(), key=lambda p: p.name):
                if not is_image(path):
                    if path.name.lower() not in ("thumbs.db", ".ds_store"):
                        skipped.append(SkippedRow(str(path), "not an image file"))
                    continue
                by_name = LETTERS.get(path.name[:1].lower())
                if by_name is None or (label is not None and by_name != label):
                    skipped.append(
                        SkippedRow(
                            str(path), f"file name {path.name!r} disagrees with its folder / is not g*/n*"
                        )
                    )
                    continue
                rows.append((str(path), (by_name,), path.stem))
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="image",
            notes=[note, "Validation400 / Test400 not read", "no patient ids: grouped by image"],
            skipped=skipped,
        )


RECIPE = REFUGE()
