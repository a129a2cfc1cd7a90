"""MESSIDOR-2 with the adjudicated grades of Krause et al.: 5-grade diabetic retinopathy, RETFound suite.

Layout: the images of the ADCIS release (`IMAGES/`, 1748 files, `.png` and `.JPG`) plus the adjudicated-grade
sheet `messidor_data.csv` (Kaggle google-brain/messidor2-dr-grades; columns `image_id`, `adjudicated_dr_grade`,
`adjudicated_dme`, `adjudicated_gradable`) in the same folder. ADCIS ships the images without DR grades; the
adjudicated grades are what RETFound and FLAIR use (jusiro/FLAIR local_data/prepare_partitions.py,
adequate_02_messidor, reads this sheet). Quirks handled: the sheet spells `IM000001.jpg` where the file is
`IM000001.JPG` (names matched case-insensitively); ungradable images (`adjudicated_gradable` 0, blank grade) are
listed in `skipped`. Copies that name the columns `id_code` / `diagnosis` (a common re-pack) are read too.

Grouping: the examination. The ADCIS download's `messidor-2.csv` pairs the two eyes of each examination, one
`left;right` pair of image names per line (semicolon-separated; a line without two image names, such as a
header, is ignored); where it is present both eyes of an exam share a group and a split (grouping "patient": an
examination is one patient's visit). Without it each image is its own group (grouping "image") and the two eyes
of an exam may land in different splits; the notes say which applied.

Reference figure: RETFound's fine-tuned AUROC 0.884 on MESSIDOR-2 (Zhou et al., Nature 2023, main text), as
quoted in a third-party verification note in the public code index (repository not identified; the paper was
not read first-hand here). RETFound fine-tuned on its own split (and grade source, not checked here): read next
to ours, not as the same run.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..recipe import ReferenceFigure, SkippedRow
from ._common import (
    DR_GRADES,
    IMAGE_SUFFIXES,
    RETFOUND_MAIN_TEXT,
    Recipe,
    Table,
    index_by_name,
    inside,
    parse_grade,
)

SHEET = "messidor_data.csv"
PAIRS = "messidor-2.csv"
IMAGE_DIRS = ("IMAGES", "images", "Images")


class Messidor2(Recipe):
    name = "messidor2"
    title = "MESSIDOR-2 (adjudicated DR grades)"
    suites = ("retfound",)
    task = "multiclass"
    ordinal = True
    classes = DR_GRADES
    folder = "messidor2"
    source = (
        "images: https://www.adcis.net/en/third-party/messidor2/ ; grades: "
        "https://www.kaggle.com/datasets/google-brain/messidor2-dr-grades"
    )
    licence = (
        "images: the ADCIS / LaTIM Messidor-2 licence (research and education, no redistribution); "
        "grades: as published on Kaggle by Google (see the dataset page)"
    )
    citation = (
        "Abramoff MD, et al. Automated analysis of retinal images for detection of referable diabetic retinopathy. "
        "JAMA Ophthalmol 2013;131(3):351-357. Decenciere E, et al. Feedback on a publicly distributed image "
        "database: the Messidor database. Image Anal Stereol 2014;33(3):231-234. Krause J, et al. Grader "
        "variability and the importance of reference standards for evaluating machine learning models for "
        "diabetic retinopathy. Ophthalmology 2018;125(8):1264-1272."
    )
    layout = (
        "messidor2/\n"
        "  messidor_data.csv    columns: image_id, adjudicated_dr_grade (0-4), adjudicated_dme,\n"
        "                       adjudicated_gradable (0/1)\n"
        "  IMAGES/<image_id>    the ADCIS images (20051020_43808_0100_PP.png, IM000001.JPG, ...)\n"
        "  messidor-2.csv       (optional, from ADCIS) one 'left;right' image pair per examination"
    )

    references = (
        ReferenceFigure(
            model="RETFound (CFP)",
            protocol="finetune",
            metric="roc_auc",
            value=0.884,
            source=RETFOUND_MAIN_TEXT,
        ),
    )

    def required_files(self):
        return (SHEET,)

    def read(self, root: Path, *, seed: int):
        table = Table.read(root / SHEET, dataset=self.title, root=root, layout=self.layout)
        id_col = table.first("image_id", "id_code")
        grade_col = table.first("adjudicated_dr_grade", "diagnosis")
        gradable_col = table.first("adjudicated_gradable", required=False)
        image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
        if image_dir is None:
            raise self.error(f"{root} lacks the image folder IMAGES/")
        by_name = index_by_name(image_dir)
        exams = read_pairs(root / PAIRS)
        rows, skipped = [], []
        for line, row in table.rows:
            image_id = table.get(row, id_col)
            where = f"{table.where(line)} ({image_id})"
            if not image_id:
                skipped.append(SkippedRow(where, "no image name"))
                continue
            inside(root, f"{image_dir.name}/{image_id}", dataset=self.title, where=where, entry=image_id)
            gradable = table.get(row, gradable_col) if gradable_col else ""
            grade = parse_grade(table.get(row, grade_col), 5)
            image = by_name.get(image_id.lower())
            if gradable in ("0", "0.0"):
                skipped.append(SkippedRow(where, f"ungradable ({gradable_col} 0)"))
            elif grade is None:
                raw = table.get(row, grade_col)
                skipped.append(SkippedRow(where, f"unknown grade {raw!r}"))
            elif image is None:
                skipped.append(SkippedRow(where, f"image {image_dir.name}/{image_id} missing"))
            else:
                group = exams.get(image_id.lower()) or exams.get(image.name.lower()) or Path(image_id).stem
                rows.append((str(image), (DR_GRADES[grade],), group))
        paired = sum(1 for _, _, g in rows if g.startswith("exam "))
        if exams:
            grouping = "patient"
            pairing = f"grouped by examination from {PAIRS} ({paired} of {len(rows)} images paired)"
        else:
            grouping = "image"
            pairing = f"no {PAIRS}: grouped by image (the two eyes of an exam may land in different splits)"
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping=grouping,
            notes=[
                "image names matched case-insensitively (the sheet's IM*.jpg are IM*.JPG on disk)",
                "ungradable images listed in skipped",
                pairing,
            ],
            skipped=skipped,
        )


def read_pairs(path: Path) -> dict[str, str]:
    """{lower-case image name: "exam <first name's stem>"} from the ADCIS pairing file, {} without it."""
    if not path.is_file():
        return {}
    exams: dict[str, str] = {}
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for line in text.splitlines():
        cells = [c.strip().strip('"') for c in re.split(r"[;,\t]", line)]
        names = [c for c in cells if Path(c).suffix.lower() in IMAGE_SUFFIXES]
        if len(names) == 2:
            group = f"exam {Path(names[0]).stem}"
            for name in names:
                exams[name.lower()] = group
    return exams


RECIPE = Messidor2()
