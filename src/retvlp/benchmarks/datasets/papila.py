"""PAPILA (Kovalyk et al., figshare 14798004): glaucoma diagnosis per eye, RETFound suite.

Layout: `FundusImages/RET<id>OD.jpg` / `RET<id>OS.jpg` and `ClinicalData/patient_data_od.xlsx`,
`patient_data_os.xlsx` (one sheet per eye). Sheet quirks handled: the header row has an empty first cell (the
patient id column; pandas calls it "Unnamed: 0"), two sub-header / blank rows follow it before the first patient,
and ids are written "#002" (the image is RET002OD.jpg): the recipe finds the header row by its `Diagnosis` cell,
takes the id from the first column and keeps rows whose id is "#<digits>". `Diagnosis`: 0 healthy, 1 glaucoma,
2 suspect, kept as three classes in RETFound's order, normal / suspected glaucoma / glaucoma (its released
split names the folders anormal / bsuspectglaucoma / cglaucoma; FLAIR merges 2 into glaucoma). The .xlsx sheets are read with
the standard library (`_sheets.py`). Grouping: patient (both eyes of a patient stay in one split); seeded split.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..recipe import SkippedRow
from ._common import Recipe, inside, parse_grade
from ._sheets import SheetError, read_xlsx

SHEETS = (("OD", "ClinicalData/patient_data_od.xlsx"), ("OS", "ClinicalData/patient_data_os.xlsx"))
PATIENT = re.compile(r"#?(\d+)")
DIAGNOSIS = {0: "normal", 1: "glaucoma", 2: "suspected glaucoma"}  # the sheets' Diagnosis codes


class PAPILA(Recipe):
    name = "papila"
    title = "PAPILA"
    suites = ("retfound",)
    task = "multiclass"
    classes = ("normal", "suspected glaucoma", "glaucoma")
    folder = "papila"
    source = "https://figshare.com/articles/dataset/PAPILA/14798004"
    licence = "CC BY 4.0 (figshare record; verify on the record)"
    citation = (
        "Kovalyk O, Morales-Sanchez J, Verdu-Monedero R, Sellés-Navarro I, Palazón-Cabanes A, Sancho-Gómez JL. "
        "PAPILA: Dataset with fundus images and clinical data of both eyes of the same patient for glaucoma "
        "assessment. Sci Data 2022;9:291."
    )
    layout = (
        "papila/\n"
        "  FundusImages/RET002OD.jpg, RET002OS.jpg, ...\n"
        "  ClinicalData/patient_data_od.xlsx, patient_data_os.xlsx\n"
        "     header row: (empty: id), Age, Gender, Diagnosis (0 healthy, 1 glaucoma, 2 suspect), ...;\n"
        "     two sub-header rows, then one row per patient, id '#002'"
    )

    def required_files(self):
        return ("FundusImages",) + tuple(path for _, path in SHEETS)

    def read(self, root: Path, *, seed: int):
        rows, skipped = [], []
        for eye, sheet in SHEETS:
            try:
                cells = read_xlsx(root / sheet)
            except SheetError as exc:
                raise self.error(f"cannot read {sheet}: {exc}") from exc
            header = next(
                (i for i, r in enumerate(cells) if any(c.strip().lower() == "diagnosis" for c in r)), None
            )
            if header is None:
                raise self.error(f"{sheet} has no 'Diagnosis' column")
            col = [c.strip().lower() for c in cells[header]].index("diagnosis")
            for n, row in enumerate(cells[header + 1 :], start=header + 2):
                first = row[0].strip() if row else ""
                match = PATIENT.fullmatch(first)
                if not match:
                    if first:
                        skipped.append(SkippedRow(f"{sheet} row {n}", f"not a patient id: {first!r}"))
                    continue
                pid = match.group(1).zfill(3)
                where = f"{sheet} row {n}"
                rel = f"FundusImages/RET{pid}{eye}.jpg"
                image = inside(root, rel, dataset=self.title, where=where)
                grade = parse_grade(row[col] if col < len(row) else "", 3)
                if grade is None:
                    raw = row[col] if col < len(row) else ""
                    skipped.append(SkippedRow(where, f"unknown diagnosis {raw!r}"))
                elif not image.is_file():
                    skipped.append(SkippedRow(where, f"image {rel} missing"))
                else:
                    rows.append((str(image), (DIAGNOSIS[grade],), f"patient{pid}"))
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="patient",
            notes=[
                "header row found by its 'Diagnosis' cell; sub-header rows and non-'#<id>' rows not used",
                "diagnosis 2 (suspect) kept as its own class (RETFound); FLAIR merges it into glaucoma",
                "grouped by patient: both eyes in one split",
            ],
            skipped=skipped,
        )


RECIPE = PAPILA()
