"""Synthetic stand-ins for the public benchmark datasets (issue 28), written in each publisher's layout.

    write_standin(name, data_root, per_class=3, seed=0) -> Path

writes a small folder for recipe `name` under `data_root` (at `data_root / recipe.folder`, where
`retvlp benchmark --data-root data_root` looks for it): tiny 32x32 images under the release's file names, the
label sheets with the release's columns (CSV / XLSX), the folder nesting, and the release's known quirks
(IDRiD's trailing-space column and blank CSV columns, MESSIDOR-2's `.jpg` in the sheet for `.JPG` files and its
ungradable rows, PAPILA's sub-header rows and `#002` ids, ODIR's patient-level one-hot with per-eye keywords
joined by a Chinese comma, quality keywords, an image-less eye and an ambiguous eye, ...). It returns that
folder. `per_class` is the number of images written per class (PAPILA: patients per class, two eyes each with
mixed diagnoses; ODIR: single-class eyes per class, plus the quirk eyes).

What a stand-in holds is also written to `data_root/.standins/<name>.json` (read it with `standin_truth`):
every usable image with its labels, its true group (patient / eye / image) and its official split (or None),
and every row the recipe should list as skipped, so tests compare a recipe's output with what was written, not
with the recipe's own view. `messidor` shares `messidor2`'s folder and `odir200x3` shares `odir5k`'s.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from pathlib import Path

from PIL import Image

from retvlp.benchmarks.datasets._sheets import write_xlsx

STANDIN_NAMES = (
    "aptos2019",
    "messidor2",
    "idrid",
    "papila",
    "glaucoma_fundus",
    "jsiec",
    "retina",
    "octid",
    "messidor",
    "fives",
    "refuge",
    "odir5k",
    "odir200x3",
)

DR = (
    "no diabetic retinopathy",
    "mild diabetic retinopathy",
    "moderate diabetic retinopathy",
    "severe diabetic retinopathy",
    "proliferative diabetic retinopathy",
)


class _Writer:
    def __init__(self, root: Path, seed: int):
        self.root = root
        self.rng = random.Random(seed)
        self.records: list[dict] = []
        self.skipped: list[dict] = []

    def image(self, relative: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = tuple(self.rng.randrange(256) for _ in range(3))
        img = Image.new("RGB", (32, 32), colour)
        img.putpixel((self.rng.randrange(32), self.rng.randrange(32)), (255, 255, 255))
        suffix = path.suffix.lower()
        img.save(path, format={".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, "JPEG"))
        return path

    def record(self, relative: str, labels, group: str, split: str | None = None) -> None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        path = (self.root / relative).resolve()
        self.records.append({"image": str(path), "labels": labels, "group": group, "split": split})

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})

    def csv(self, relative: str, rows) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        return path


def _aptos2019(w: _Writer, k: int) -> None:
    rows = [["id_code", "diagnosis"]]
    for grade, label in enumerate(DR):
        for _ in range(k):
            code = f"{w.rng.getrandbits(48):012x}"
            w.image(f"train_images/{code}.png")
            rows.append([code, grade])
            w.record(f"train_images/{code}.png", label, code)
    w.csv("train.csv", rows)
    test = [["id_code"]]
    for _ in range(2):  # unlabelled test part of the release: never read
        code = f"{w.rng.getrandbits(48):012x}"
        w.image(f"test_images/{code}.png")
        test.append([code])
    w.csv("test.csv", test)


def _idrid(w: _Writer, k: int) -> None:
    base = "B. Disease Grading"
    header = ["Image name", "Retinopathy grade", "Risk of macular edema "] + [""] * 8  # the release's quirks
    for split, images, sheet, n in (
        ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", k),
        ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", max(1, k // 2 + 1)),
    ):
        rows = [header]
        number = 1
        for grade, label in enumerate(DR):
            for _ in range(n):
                stem = f"IDRiD_{number:03d}"
                number += 1
                rel = f"{base}/1. Original Images/{images}/{stem}.jpg"
                w.image(rel)
                rows.append([stem, grade, w.rng.randrange(3)] + [""] * 8)
                w.record(rel, label, f"{split}:{stem}", split)
        w.csv(f"{base}/2. Groundtruths/{sheet}", rows)
    # the segmentation part of the release sits beside it and is not read
    w.image("A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg")


def _messidor2(w: _Writer, k: int) -> None:
    rows = [["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"]]
    written = []  # (file name on disk, label or None for an ungradable image)
    n = 0
    for grade, label in enumerate(DR):
        for _ in range(k):
            n += 1
            if n % 2:
                name = f"200510{20 + n % 9:02d}_{40000 + n:05d}_0100_PP.png"
                on_disk = name
            else:  # the sheet writes IM*.jpg, the release's files are IM*.JPG
                name = f"IM{n:06d}.jpg"
                on_disk = f"IM{n:06d}.JPG"
            w.image(f"IMAGES/{on_disk}")
            rows.append([name, grade, w.rng.randrange(2), 1])
            written.append((on_disk, label))
    ungradable = []
    for j in range(2):  # ungradable images: blank grade, gradable 0
        name = f"IM{900 + j:06d}.JPG"
        w.image(f"IMAGES/{name}")
        rows.append([name, "", "", 0])
        ungradable.append(name)
        w.skip(name, "ungradable")
    w.csv("messidor_data.csv", rows)
    # ADCIS's examination list: one "left;right" pair per line, the two eyes of one exam. Here the first two
    # images of each grade (where a grade has four or more) and the two ungradable ones form exams; the rest
    # stay single so that every grade keeps three or more groups (train, val and test each get one).
    pairs = ["left;right", ";".join(ungradable)]
    for grade, label in enumerate(DR):
        mine = [d for d, lab in written if lab == label]
        paired = mine[:2] if len(mine) >= 4 else []
        if paired:
            pairs.append(";".join(paired))
        for on_disk in mine:
            group = f"exam {grade}" if on_disk in paired else f"image {on_disk}"
            w.record(f"IMAGES/{on_disk}", label, group)
    (w.root / "messidor-2.csv").write_text("\n".join(pairs) + "\n", encoding="utf-8")


def _papila(w: _Writer, k: int) -> None:
    classes = ("normal", "glaucoma", "suspected glaucoma")
    header = ["", "Age", "Gender", "Diagnosis", "Refractive_Defect", None, None, "Phakic/Pseudophakic", "IOP"]
    sub = [None, None, None, None, "dioptre_1", "dioptre_2", "astigmatism", None, "Pneumatic"]
    sheets = {"OD": [header, sub, []], "OS": [header, sub, []]}
    for i in range(3 * k):
        pid = f"{i + 2:03d}"
        diagnosis = {"OD": i % 3, "OS": (i + i // 3) % 3}
        for eye in ("OD", "OS"):
            rel = f"FundusImages/RET{pid}{eye}.jpg"
            w.image(rel)
            d = diagnosis[eye]
            sheets[eye].append([f"#{pid}", 40 + i, i % 2, d, -0.5, 0.25, 0.0, 0, 15])
            w.record(rel, classes[d], f"patient {pid}")
    for eye, rows in sheets.items():
        write_xlsx(w.root / f"ClinicalData/patient_data_{eye.lower()}.xlsx", {"Sheet1": rows})
    w.image("ExpertsSegmentations/ImagesWithContours/RET002OD.jpg")  # beside the data; not read


def _class_folders(w: _Writer, k: int, base: str, folders: dict[str, str], name_of) -> None:
    for index, (folder, label) in enumerate(folders.items()):
        for j in range(k):
            rel = f"{base}{folder}/{name_of(folder, index, j)}"
            w.image(rel)
            w.record(rel, label, rel)


def _glaucoma_fundus(w: _Writer, k: int) -> None:
    folders = {
        "normal_control": "normal",
        "early_glaucoma": "early glaucoma",
        "advanced_glaucoma": "advanced glaucoma",
    }
    _class_folders(w, k, "", folders, lambda folder, i, j: f"{j + 1}.png")


def _retina(w: _Writer, k: int) -> None:
    folders = {
        "1_normal": "normal",
        "2_cataract": "cataract",
        "2_glaucoma": "glaucoma",
        "3_retina_disease": "retina disease",
    }
    prefix = {
        "1_normal": "NL",
        "2_cataract": "cataract",
        "2_glaucoma": "Glaucoma",
        "3_retina_disease": "Retina",
    }
    _class_folders(w, k, "dataset/", folders, lambda folder, i, j: f"{prefix[folder]}_{j + 1:03d}.png")
    (w.root / "dataset/1_normal/Thumbs.db").write_bytes(b"\0" * 16)  # Windows thumbnail cache in the zip


def _octid(w: _Writer, k: int) -> None:
    folders = {
        "NORMAL": "normal",
        "AMRD": "age-related macular degeneration",
        "CSR": "central serous retinopathy",
        "DR": "diabetic retinopathy",
        "MH": "macular hole",
    }
    _class_folders(w, k, "", folders, lambda folder, i, j: f"{folder}{j + 1}.jpg")


def _jsiec(w: _Writer, k: int) -> None:
    from retvlp.benchmarks.datasets.jsiec import FOLDERS  # the 39 folder names as released

    def name(folder, i, j):
        return f"{uuid.UUID(int=w.rng.getrandbits(128))}{'.png' if j % 2 else '.jpg'}"

    _class_folders(w, k, "1000images/", dict(FOLDERS), name)


def _fives(w: _Writer, k: int) -> None:
    letters = {
        "A": "age related macular degeneration",
        "D": "diabetic retinopathy",
        "G": "glaucoma",
        "N": "normal",
    }
    for split, n in (("train", k), ("test", max(1, k // 2 + 1))):
        number = 1
        for letter, label in letters.items():
            for _ in range(n):
                rel = f"{split}/Original/{number}_{letter}.png"
                w.image(rel)
                w.image(f"{split}/Ground truth/{number}_{letter}.png")
                w.record(rel, label, f"{split}:{number}", split)
                number += 1
    (w.root / "train/Original/Thumbs.db").write_bytes(b"\0" * 16)


def _refuge(w: _Writer, k: int) -> None:
    for folder, letter, label in (("Glaucoma", "g", "glaucoma"), ("Non-Glaucoma", "n", "no glaucoma")):
        for j in range(k):
            rel = f"Training400/{folder}/{letter}{j + 1:04d}.jpg"
            w.image(rel)
            w.record(rel, label, rel)
    w.image("Validation400/V0001.jpg")  # unlabelled in this layout: not read


ODIR_CODES = {
    "normal": "N",
    "diabetic retinopathy": "D",
    "glaucoma": "G",
    "cataract": "C",
    "age-related macular degeneration": "A",
    "hypertensive retinopathy": "H",
    "pathologic myopia": "M",
    "other disease": "O",
}
ODIR_KEYWORD = {
    "normal": "normal fundus",
    "diabetic retinopathy": "moderate non proliferative retinopathy",
    "glaucoma": "glaucoma",
    "cataract": "cataract",
    "age-related macular degeneration": "dry age-related macular degeneration",
    "hypertensive retinopathy": "hypertensive retinopathy",
    "pathologic myopia": "pathological myopia",
    "other disease": "drusen",
}


def _odir5k(w: _Writer, k: int) -> None:
    # eyes: (keywords, labels, or None where the recipe must skip the eye, and why)
    eyes: list[tuple[str, tuple[str, ...] | None, str]] = []
    for label, keyword in ODIR_KEYWORD.items():
        eyes += [(keyword, (label,), "")] * k
    eyes += [
        ("moderate non proliferative retinopathy，hypertensive retinopathy", ("diabetic retinopathy", "hypertensive retinopathy"), ""),
        ("lens dust，normal fundus", ("normal",), ""),
    ]  # fmt: skip
    w.rng.shuffle(eyes)
    if len(eyes) % 2:
        eyes.append(("normal fundus", ("normal",), ""))
    normal = ("normal fundus", ("normal",), "")
    eyes += [  # quirk patients, each paired with an eye that keeps the patient's one-hot row as intended
        ("lens dust", None, "no diagnostic keyword"),
        normal,
        ("no fundus image", None, "not a usable fundus image"),
        ("glaucoma", ("glaucoma",), ""),
        ("cataract", None, "ambiguous"),  # the patient's one-hot row is written without C
        normal,
    ]
    header = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
              "Right-Diagnostic Keywords", *ODIR_CODES.values()]  # fmt: skip
    rows = [header]
    for p in range(len(eyes) // 2):
        left, right = eyes[2 * p], eyes[2 * p + 1]
        onehot = dict.fromkeys(ODIR_CODES.values(), 0)
        for _keywords, labels, reason in (left, right):
            for label in labels or ():
                if label != "normal" and reason != "ambiguous":
                    onehot[ODIR_CODES[label]] = 1
            if reason == "no diagnostic keyword" or reason == "not a usable fundus image":
                onehot["O"] = 1  # the release marks such patients "other"
        if left[1] == ("normal",) and right[1] == ("normal",):
            onehot["N"] = 1
        for side, (_keywords, labels, reason) in (("left", left), ("right", right)):
            rel = f"ODIR-5K_Training_Dataset/{p}_{side}.jpg"
            w.image(rel)
            if labels is None:
                w.skip(f"{p}_{side}.jpg", reason)
            else:
                w.record(rel, labels, f"patient {p}")
        rows.append([p, 50 + p % 30, "Female" if p % 2 else "Male", f"{p}_left.jpg", f"{p}_right.jpg", left[0],
                     right[0], *onehot.values()])  # fmt: skip
    write_xlsx(w.root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", {"Sheet1": rows})
    w.image("ODIR-5K_Testing_Images/1000_left.jpg")  # unlabelled: not read


_WRITERS = {
    "aptos2019": _aptos2019,
    "messidor2": _messidor2,
    "messidor": _messidor2,
    "idrid": _idrid,
    "papila": _papila,
    "glaucoma_fundus": _glaucoma_fundus,
    "jsiec": _jsiec,
    "retina": _retina,
    "octid": _octid,
    "fives": _fives,
    "refuge": _refuge,
    "odir5k": _odir5k,
    "odir200x3": _odir5k,
}


def write_standin(name: str, data_root: Path, *, per_class: int = 3, seed: int = 0) -> Path:
    """Write the stand-in for recipe `name` under `data_root` and return its folder (`data_root / folder`)."""
    from retvlp.benchmarks.registry import get_recipe

    recipe = get_recipe(name)
    if recipe.name not in _WRITERS:
        raise KeyError(f"No stand-in for {name!r}; known: {', '.join(STANDIN_NAMES)}.")
    root = Path(data_root) / recipe.folder
    root.mkdir(parents=True, exist_ok=True)
    writer = _Writer(root, seed)
    _WRITERS[recipe.name](writer, per_class)
    truth = {
        "name": recipe.name,
        "per_class": per_class,
        "records": writer.records,
        "skipped": writer.skipped,
    }
    if recipe.name == "odir200x3":  # the subset: single-label eyes of the three classes (all kept below 200)
        keep = {"normal", "pathologic myopia", "cataract"}
        truth["records"] = [r for r in writer.records if len(r["labels"]) == 1 and r["labels"][0] in keep]
    sidecar = Path(data_root) / ".standins" / f"{recipe.name}.json"
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(truth, indent=1))
    return root


def standin_truth(name: str, data_root: Path) -> dict:
    """What `write_standin(name, data_root)` wrote: {"records": [{image, labels, group, split}], "skipped": [...]}."""
    from retvlp.benchmarks.registry import get_recipe

    return json.loads((Path(data_root) / ".standins" / f"{get_recipe(name).name}.json").read_text())
