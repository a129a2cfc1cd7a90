"""ODIR-5K (Ocular Disease Intelligent Recognition, Peking University, 2019): 8 labels per eye, FLAIR suite.

Layout (the official training release): `ODIR-5K_Training_Annotations(Updated)_V2.xlsx` (first sheet; columns
`ID`, `Patient Age`, `Patient Sex`, `Left-Fundus`, `Right-Fundus`, `Left-Diagnostic Keywords`,
`Right-Diagnostic Keywords`, `N`, `D`, `G`, `C`, `A`, `H`, `M`, `O`) and `ODIR-5K_Training_Dataset/<ID>_left.jpg`,
`<ID>_right.jpg`. The testing images carry no labels and are not read. Kaggle's re-pack
(andrewmvd/ocular-disease-recognition-odir5k) is read too: its `ODIR-5K/ODIR-5K/data.xlsx` (sheet `Sheet1`, the
same columns) and `Training Images/`; its `full_df.csv` / `preprocessed_images/` (cropped, re-labelled) are not.

Quirk handled: the one-hot columns N..O are per *patient* (both eyes together: a patient with one cataract eye
has C = 1 and N = 0), while the diagnostic keywords are per *eye*. Each eye image is labelled from its own
keywords (split on the Chinese comma "，" the sheet uses, and on ","), mapped to the eight ODIR classes:
"normal fundus" -> normal; keywords with "proliferative" or "diabetic retinopathy" -> diabetic retinopathy;
"glaucoma"; "cataract"; "age-related macular degeneration"; "hypertensive retinopathy"; "myop" -> pathologic
myopia; any other diagnostic keyword -> other disease. Image-quality keywords (lens dust, low image quality,
image offset, optic disk photographically invisible) are not diagnoses and are ignored. Eyes left out and listed
in `skipped`: "no fundus image" / "anterior segment image"; eyes with no diagnostic keyword; *ambiguous* eyes,
whose keywords give a disease class that the patient's one-hot row does not have (or "normal fundus" together
with a disease). Multi-label task; grouping: patient (both eyes in one split); seeded split stratified by each
eye's rarest label.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..recipe import SkippedRow
from ._common import Recipe, Table, inside

SHEET = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
IMAGES = "ODIR-5K_Training_Dataset"
KAGGLE = ("data.xlsx", "Training Images")  # the Kaggle re-pack (andrewmvd/ocular-disease-recognition-odir5k)
LAYOUTS = ((SHEET, IMAGES), KAGGLE)
CODES = ("N", "D", "G", "C", "A", "H", "M", "O")
CLASSES = (
    "normal",
    "diabetic retinopathy",
    "glaucoma",
    "cataract",
    "age-related macular degeneration",
    "hypertensive retinopathy",
    "pathologic myopia",
    "other disease",
)
CODE_OF = dict(zip(CLASSES, CODES, strict=True))
QUALITY = ("lens dust", "low image quality", "image offset", "optic disk photographically invisible",
           "optic disc photographically invisible")  # fmt: skip
UNUSABLE = ("no fundus image", "anterior segment image")


def keyword_class(keyword: str) -> str | None:
    """The ODIR class of one diagnostic keyword; None for an image-quality keyword."""
    k = keyword.strip().lower()
    if k in QUALITY:
        return None
    if k == "normal fundus":
        return "normal"
    if "proliferative" in k or "diabetic retinopathy" in k:
        return "diabetic retinopathy"
    if "glaucoma" in k:
        return "glaucoma"
    if "cataract" in k:
        return "cataract"
    if "age-related macular degeneration" in k:
        return "age-related macular degeneration"
    if "hypertensive retinopathy" in k:
        return "hypertensive retinopathy"
    if "myop" in k:
        return "pathologic myopia"
    return "other disease"


def split_keywords(text: str) -> list[str]:
    return [k.strip() for k in text.replace("，", ",").split(",") if k.strip()]


def read_odir_eyes(
    recipe: Recipe, root: Path
) -> tuple[list[tuple[str, tuple[str, ...], str]], list[SkippedRow]]:
    """Every usable eye image: (path, labels in class order, patient group), and the skipped rows."""
    sheet, images = recipe.layout_in(root) or (SHEET, IMAGES)
    table = Table.read(root / sheet, dataset=recipe.title, root=root, layout=recipe.layout)
    table.require("ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords",
                  *CODES)  # fmt: skip
    rows, skipped = [], []
    for line, row in table.rows:
        patient = table.get(row, "ID")
        onehot = {c: table.get(row, c) in ("1", "1.0") for c in CODES}
        for side in ("Left", "Right"):
            name = table.get(row, f"{side}-Fundus")
            where = f"{table.where(line)} ({side.lower()} eye, {name or 'no file name'})"
            if not name:
                skipped.append(SkippedRow(where, "no image file name"))
                continue
            image = inside(root, f"{images}/{name}", dataset=recipe.title, where=where, entry=name)
            keywords = split_keywords(table.get(row, f"{side}-Diagnostic Keywords"))
            lowered = [k.lower() for k in keywords]
            if any(u in k for k in lowered for u in UNUSABLE):
                skipped.append(SkippedRow(where, f"not a usable fundus image (keywords {keywords})"))
                continue
            labels = {c for c in map(keyword_class, keywords) if c is not None}
            if not labels:
                skipped.append(SkippedRow(where, f"no diagnostic keyword (keywords {keywords})"))
                continue
            disagree = sorted(c for c in labels if c != "normal" and not onehot[CODE_OF[c]])
            if disagree or ("normal" in labels and len(labels) > 1):
                why = (
                    f"the patient's one-hot row lacks {[CODE_OF[c] for c in disagree]}"
                    if disagree
                    else "'normal fundus' together with a disease keyword"
                )
                skipped.append(
                    SkippedRow(where, f"ambiguous: keywords {keywords} give {sorted(labels)}, {why}")
                )
                continue
            if not image.is_file():
                skipped.append(SkippedRow(where, f"image {images}/{name} missing"))
                continue
            ordered = tuple(c for c in CLASSES if c in labels)
            rows.append((str(image), ordered, f"patient{patient}"))
    return rows, skipped


NOTES = [
    "per-eye labels from each eye's diagnostic keywords (patient-level one-hot N..O used only to flag "
    "ambiguous eyes); keywords split on '，' and ','",
    "image-quality keywords ignored; 'no fundus image' / 'anterior segment image' eyes skipped",
    "grouped by patient: both eyes in one split",
]


class ODIR5K(Recipe):
    name = "odir5k"
    title = "ODIR-5K"
    suites = ("flair",)
    task = "multilabel"
    classes = CLASSES
    folder = "odir5k"
    source = (
        "https://odir2019.grand-challenge.org/ (Peking University International Competition on ODIR, 2019)"
    )
    licence = "the ODIR-2019 challenge data terms (research use; see the challenge page)"
    citation = (
        "Li N, Li T, Hu C, Wang K, Kang H. A benchmark of ocular disease intelligent recognition: one shot for "
        "multi-disease detection. In: Benchmarking, Measuring, and Optimizing (Bench 2020), LNCS 12614, 2021."
    )
    layout = (
        "odir5k/\n"
        f"  {SHEET}\n"
        "     columns: ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus, Left-Diagnostic Keywords,\n"
        "              Right-Diagnostic Keywords, N, D, G, C, A, H, M, O (patient-level one-hot)\n"
        f"  {IMAGES}/0_left.jpg, 0_right.jpg, ...\n"
        "  (or Kaggle's re-pack: ODIR-5K/ODIR-5K/data.xlsx, the same columns, and Training Images/)"
    )

    layouts = LAYOUTS

    def required_files(self):
        return (SHEET, IMAGES)

    def read(self, root: Path, *, seed: int):
        rows, skipped = read_odir_eyes(self, root)
        freq = Counter(label for _, labels, _ in rows for label in labels)
        strata = [min(labels, key=lambda c: (freq[c], CLASSES.index(c))) for _, labels, _ in rows]
        ambiguous = sum(r.reason.startswith("ambiguous") for r in skipped)
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="patient",
            notes=NOTES
            + [f"{ambiguous} ambiguous eye(s) skipped", "split stratified by each eye's rarest label"],
            skipped=skipped,
            strata=strata,
        )


RECIPE = ODIR5K()
