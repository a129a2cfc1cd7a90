"""FIVES (Fundus Image dataset for Vessel Segmentation, Jin et al., figshare): 4 diagnosis classes, FLAIR suite.

Layout: `train/Original/<n>_<C>.png` and `test/Original/<n>_<C>.png` (vessel masks in `Ground truth/`, not read),
where the letter C is the diagnosis: A age-related macular degeneration, D diabetic retinopathy, G glaucoma,
N normal (jusiro/FLAIR local_data/prepare_partitions.py, adequate_13_fives, reads the class from that letter).
Split: the official train (600) / test (200) folders; val = 10 % of train (seeded). Numbers restart in each set,
so groups are `<set>/<file>`. No patient ids: grouped by image. Class names as FLAIR prompts them
(local_data/experiments.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..recipe import SkippedRow
from ._common import Recipe, is_image

LETTERS = {
    "N": "normal",
    "A": "age related macular degeneration",
    "D": "diabetic retinopathy",
    "G": "glaucoma",
}
NAME = re.compile(r"\d+_([A-Za-z])")
SETS = (("train", "train/Original"), ("test", "test/Original"))


class FIVES(Recipe):
    name = "fives"
    title = "FIVES"
    suites = ("flair",)
    task = "multiclass"
    classes = tuple(LETTERS.values())
    folder = "fives"
    source = "https://doi.org/10.6084/m9.figshare.19688169"
    licence = "CC BY 4.0 (figshare record; verify on the record)"
    citation = (
        "Jin K, Huang X, Zhou J, et al. FIVES: A fundus image dataset for artificial intelligence based vessel "
        "segmentation. Sci Data 2022;9:475."
    )
    layout = (
        "fives/\n"
        "  train/Original/1_A.png ... (letter: A AMD, D DR, G glaucoma, N normal)\n"
        "  test/Original/1_A.png ..."
    )

    def required_files(self):
        return tuple(d for _, d in SETS)

    def read(self, root: Path, *, seed: int):
        rows, official, skipped = [], [], []
        for split, directory in SETS:
            for path in sorted((root / directory).iterdir(), key=lambda p: p.name):
                match = NAME.fullmatch(path.stem)
                if not is_image(path):
                    if path.name.lower() not in ("thumbs.db", ".ds_store"):
                        skipped.append(SkippedRow(str(path), "not an image file"))
                elif not match or match.group(1).upper() not in LETTERS:
                    skipped.append(SkippedRow(str(path), "file name not '<n>_<A|D|G|N>': class unknown"))
                else:
                    label = LETTERS[match.group(1).upper()]
                    rows.append((str(path), (label,), f"{split}/{path.name}"))
                    official.append(split)
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="image",
            official=official,
            split_source="official (train/ and test/ folders)",
            notes=[
                "class from the file name's letter (A, D, G, N)",
                "numbers restart per set: groups are '<set>/<file>'; no patient ids: grouped by image",
            ],
            skipped=skipped,
        )


RECIPE = FIVES()
