"""IDRiD, part B "Disease Grading" (IEEE DataPort): 5-grade diabetic retinopathy, RETFound suite.

Layout (the "B. Disease Grading" folder of the release, unzipped as published):
`1. Original Images/a. Training Set/IDRiD_001.jpg` .. and `b. Testing Set/IDRiD_001.jpg` ..;
`2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv` and `b. IDRiD_Disease Grading_Testing Labels.csv`
with columns `Image name`, `Retinopathy grade`, `Risk of macular edema ` (the release spells the last one with a
trailing space, and the CSVs carry blank trailing columns; both handled: columns are matched stripped, blank
columns ignored). File names follow jusiro/FLAIR local_data/prepare_partitions.py (adequate_03_idrid), which
reads the same release. Split: the official training (413) / testing (103) sets; val = 10 % of the training
images (seeded). The training and testing sets reuse the same names (`IDRiD_001` in both), so the group is the
image prefixed by its set. No patient ids: grouped by image.

Reference figure: RETFound's fine-tuned AUROC 0.822 on IDRID (Zhou et al., Nature 2023, main text), as quoted
in a third-party verification note in the public code index (repository not identified; the paper was not read
first-hand here). The note points out that the paper reports the same 0.822 (95% CI 0.815, 0.829) for RETFound
fine-tuned on APTOS-2019 and tested on IDRID; the within-IDRID figure is the one listed.
"""

from __future__ import annotations

from pathlib import Path

from ..recipe import ReferenceFigure, SkippedRow
from ._common import DR_GRADES, RETFOUND_MAIN_TEXT, Recipe, Table, inside, parse_grade

IMAGES = "B. Disease Grading/1. Original Images"
TRUTHS = "B. Disease Grading/2. Groundtruths"
SETS = (
    ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv"),
    ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv"),
)


class IDRiD(Recipe):
    name = "idrid"
    title = "IDRiD Disease Grading"
    suites = ("retfound",)
    task = "multiclass"
    ordinal = True
    classes = DR_GRADES
    folder = "idrid"
    source = "https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid"
    licence = "CC BY 4.0 (IEEE DataPort open access; verify on the record)"
    citation = (
        "Porwal P, et al. Indian Diabetic Retinopathy Image Dataset (IDRiD): a database for diabetic retinopathy "
        "screening research. Data 2018;3(3):25."
    )
    layout = (
        "idrid/B. Disease Grading/\n"
        "  1. Original Images/a. Training Set/IDRiD_001.jpg ...\n"
        "  1. Original Images/b. Testing Set/IDRiD_001.jpg ...\n"
        "  2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv\n"
        "  2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv\n"
        "     columns: Image name, Retinopathy grade (0-4), 'Risk of macular edema ' (0-2; trailing space)"
    )

    references = (
        ReferenceFigure(
            model="RETFound (CFP)",
            protocol="finetune",
            metric="roc_auc",
            value=0.822,
            source=RETFOUND_MAIN_TEXT,
        ),
    )

    def required_files(self):
        return tuple(f"{TRUTHS}/{sheet}" for _, _, sheet in SETS) + tuple(f"{IMAGES}/{d}" for _, d, _ in SETS)

    def read(self, root: Path, *, seed: int):
        rows, official, skipped = [], [], []
        for split, images, sheet in SETS:
            table = Table.read(root / TRUTHS / sheet, dataset=self.title, root=root, layout=self.layout)
            table.require("Image name", "Retinopathy grade")
            for line, row in table.rows:
                stem = table.get(row, "Image name")
                where = f"{table.where(line)} ({stem})"
                if not stem:
                    skipped.append(SkippedRow(where, "no image name"))
                    continue
                rel = f"{IMAGES}/{images}/{stem}.jpg"
                image = inside(root, rel, dataset=self.title, where=where, entry=stem)
                grade = parse_grade(table.get(row, "Retinopathy grade"), 5)
                if grade is None:
                    raw = table.get(row, "Retinopathy grade")
                    skipped.append(SkippedRow(where, f"unknown grade {raw!r}"))
                elif not image.is_file():
                    skipped.append(SkippedRow(where, f"image {rel} missing"))
                else:
                    rows.append((str(image), (DR_GRADES[grade],), f"{split}/{stem}"))
                    official.append(split)
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="image",
            official=official,
            split_source="official (2. Groundtruths: a. Training / b. Testing Labels.csv)",
            notes=[
                "column 'Risk of macular edema ' has a trailing space in the release; columns matched stripped",
                "blank trailing columns of the CSVs ignored",
                "training and testing sets reuse names (IDRiD_001...): groups are '<split>/<name>'",
                "no patient ids in the release: grouped by image",
            ],
            skipped=skipped,
        )


RECIPE = IDRiD()
