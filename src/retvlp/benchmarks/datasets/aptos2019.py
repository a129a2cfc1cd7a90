"""APTOS 2019 Blindness Detection (Kaggle): 5-grade diabetic retinopathy, RETFound suite.

Layout (the Kaggle competition download, unzipped): `train.csv` with columns `id_code`, `diagnosis` (0-4) and
`train_images/<id_code>.png`. Only the training part carries labels (the competition's test labels were never
released; `test.csv` / `test_images/` are ignored). The release has no patient ids, so the grouping is the image;
the split is retvlp's seeded split (RETFound shares its own split as a separate download, BENCHMARK.md of
rmaphoh/RETFound_MAE; that folder is not the publisher's layout and is not read here).
Class names: the ICDR grades as FLAIR prompts them (jusiro/FLAIR, local_data/prepare_partitions.py).

Reference figure: RETFound's fine-tuned AUROC 0.943 on Kaggle APTOS-2019 (Zhou et al., Nature 2023, main
text), as quoted in a third-party verification note in the public code index (repository not identified; the
paper was not read first-hand here). RETFound fine-tuned on its own split: read next to ours, not as the same
run.
"""

from __future__ import annotations

from pathlib import Path

from ..recipe import ReferenceFigure, SkippedRow
from ._common import DR_GRADES, RETFOUND_MAIN_TEXT, Recipe, Table, inside, parse_grade


class APTOS2019(Recipe):
    name = "aptos2019"
    title = "APTOS 2019 Blindness Detection"
    suites = ("retfound",)
    task = "multiclass"
    ordinal = True
    classes = DR_GRADES
    folder = "aptos2019"
    source = "https://www.kaggle.com/competitions/aptos2019-blindness-detection/data"
    licence = (
        "Kaggle competition data: the competition rules (non-commercial research use; no redistribution)"
    )
    citation = "Karthik, Maggie, Dane S. APTOS 2019 Blindness Detection. Kaggle, 2019."
    layout = (
        "aptos2019/\n"
        "  train.csv            columns: id_code, diagnosis (0 no DR .. 4 proliferative DR)\n"
        "  train_images/<id_code>.png"
    )
    references = (
        ReferenceFigure(
            model="RETFound (CFP)",
            protocol="finetune",
            metric="roc_auc",
            value=0.943,
            source=RETFOUND_MAIN_TEXT,
        ),
    )

    def required_files(self):
        return ("train.csv", "train_images")

    def read(self, root: Path, *, seed: int):
        table = Table.read(root / "train.csv", dataset=self.title, root=root, layout=self.layout)
        table.require("id_code", "diagnosis")
        rows, skipped = [], []
        for line, row in table.rows:
            code = table.get(row, "id_code")
            where = f"{table.where(line)} ({code})"
            if not code:
                skipped.append(SkippedRow(where, "no image name"))
                continue
            image = inside(root, f"train_images/{code}.png", dataset=self.title, where=where, entry=code)
            grade = parse_grade(table.get(row, "diagnosis"), 5)
            if grade is None:
                skipped.append(SkippedRow(where, f"unknown grade {table.get(row, 'diagnosis')!r}"))
            elif not image.is_file():
                skipped.append(SkippedRow(where, f"image train_images/{code}.png missing"))
            else:
                rows.append((str(image), (DR_GRADES[grade],), code))
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="image",
            notes=[
                "no patient ids in the release: grouped by image",
                "test.csv / test_images/ unlabelled: unused",
            ],
            skipped=skipped,
        )


RECIPE = APTOS2019()
