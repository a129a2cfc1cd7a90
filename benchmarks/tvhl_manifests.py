"""Patient-split pretraining / evaluation manifests for the real TVHL fundus + OCT images.

`../shared/data/tvhl` (see its README) has specialist DME labels for every image and DR grades for a third
of the fundus photographs; there are no captions. This script turns it into the manifests a user would
write for `retvlp`:

- ``categorical.csv``: fundus photographs of the training patients with their DME class (the label becomes a
  prompt during pretraining);
- ``elite.csv``: for a share of the training patients, a caption written from the specialist labels
  ("color fundus photograph, left eye: diabetic macular edema; non-proliferative diabetic retinopathy"), the
  image–caption set that KeepFIT needs and MaskedCLIP treats as more paired data;
- ``unpaired.csv``: every OCT B-scan of the training patients (image only: MaskedCLIP's L_mim / L_mfd);
- ``test.csv``: fundus photographs of held-out patients (DME class), and ``probe_train.csv``: the fundus
  photographs of the training patients, for the linear probe and fine-tuning;
- ``dr_test.csv`` / ``dr_probe_train.csv``: the same two sides restricted to the photographs with a DR grade
  (no DR / NPDR / PDR), a second evaluation task that pretraining never saw as a label.

All images of one patient land on one side of the split. Run as a script to write them:
`python benchmarks/tvhl_manifests.py --out outputs/tvhl_manifests`.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tvhl"
DME_CLASSES = {"1": "diabetic macular edema", "0": "no diabetic macular edema"}
DR_TEXT = {
    "no_DR": "no diabetic retinopathy",
    "NPDR": "non-proliferative diabetic retinopathy",
    "PDR": "proliferative diabetic retinopathy",
}
CLASSES = [DME_CLASSES["1"], DME_CLASSES["0"]]
DR_CLASSES = list(DR_TEXT.values())


def caption_of(row: dict) -> str:
    findings = [DME_CLASSES[row["DME"]]]
    if row["DR"] in DR_TEXT:
        findings.append(DR_TEXT[row["DR"]])
    return f"color fundus photograph, {row['eye']} eye: " + "; ".join(findings)


def write_manifests(
    out_dir: str | Path,
    root: str | Path = DEFAULT_ROOT,
    test_fraction: float = 0.2,
    elite_fraction: float = 0.3,
    seed: int = 0,
) -> dict:
    """Write the seven manifests into `out_dir`; returns their paths and row counts."""
    root = Path(root).resolve()
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: point --root at the TVHL folder (shared/data/tvhl).")
    with open(labels, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({row["patient_id"] for row in rows})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    num_test = round(test_fraction * len(patients))
    test_patients = {patients[i] for i in order[:num_test]}
    train_patients = [patients[i] for i in order[num_test:]]
    elite_patients = set(train_patients[: round(elite_fraction * len(train_patients))])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {
        "categorical": [],
        "elite": [],
        "unpaired": [],
        "test": [],
        "probe_train": [],
        "dr_test": [],
        "dr_probe_train": [],
    }
    for row in rows:
        image = str(root / row["path"])
        pid = row["patient_id"]
        if row["modality"] == "oct":
            if pid not in test_patients:
                tables["unpaired"].append({"image": image, "patient_id": pid})
            continue
        label = DME_CLASSES[row["DME"]]
        if row["DR"] in DR_TEXT:  # DR grades exist for a third of the photographs: a second, harder task
            side = "dr_test" if pid in test_patients else "dr_probe_train"
            tables[side].append({"image": image, "label": DR_TEXT[row["DR"]], "patient_id": pid})
        if pid in test_patients:
            tables["test"].append({"image": image, "label": label, "patient_id": pid})
            continue
        tables["probe_train"].append({"image": image, "label": label, "patient_id": pid})
        if pid in elite_patients:
            tables["elite"].append(
                {"image": image, "text": caption_of(row), "label": label, "patient_id": pid}
            )
        else:
            tables["categorical"].append({"image": image, "label": label, "patient_id": pid})

    summary = {
        "classes": CLASSES,
        "dr_classes": DR_CLASSES,
        "root": str(root),
        "seed": seed,
        "files": {},
        "rows": {},
    }
    for name, table in tables.items():
        path = out / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        summary["files"][name] = str(path)
        summary["rows"][name] = len(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# The multi-class task (issue 23): four classes from the DME and DR labels, with the clinic's imbalance
# (DME 1,025 : no DR 398 : NPDR 69 : PDR 52 photographs). PDR wins over DME (it is the graver finding), DME over
# NPDR; the four photographs with neither a DME nor a DR finding are left out of the labelled rows.
MULTICLASS_CLASSES = [
    "no diabetic retinopathy",
    "non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
    "diabetic macular edema",
]
# How a clinic writes each finding: several names for one thing, abbreviations, British spelling.
FINDING_SYNONYMS = {
    "no_DR": [
        "no diabetic retinopathy",
        "no DR",
        "no apparent retinopathy",
        "normal fundus",
        "no signs of diabetic retinopathy",
        "unremarkable retina",
    ],
    "NPDR": [
        "non-proliferative diabetic retinopathy",
        "NPDR",
        "nonproliferative DR",
        "background diabetic retinopathy",
        "non proliferative retinopathy",
    ],
    "PDR": [
        "proliferative diabetic retinopathy",
        "PDR",
        "proliferative DR",
        "proliferative retinopathy with neovascularization",
    ],
    "DME": [
        "diabetic macular edema",
        "DME",
        "macular edema",
        "clinically significant macular oedema",
        "diabetic maculopathy with edema",
    ],
    "no_DME": ["no macular edema", "no DME", "macula flat and dry"],
}
CAPTION_PREFIXES = [
    "color fundus photograph, {eye} eye:",
    "colour fundus photo, {eye} eye -",
    "fundus, {eye} eye:",
]


def multiclass_label(row: dict) -> str | None:
    """The class of a TVHL photograph in the four-class task (None: neither finding is known)."""
    if row["DR"] == "PDR":
        return MULTICLASS_CLASSES[2]
    if row["DME"] == "1":
        return MULTICLASS_CLASSES[3]
    if row["DR"] == "NPDR":
        return MULTICLASS_CLASSES[1]
    if row["DR"] == "no_DR":
        return MULTICLASS_CLASSES[0]
    return None


def clinic_caption(row: dict, rng: np.random.Generator) -> str:
    """A caption the way a clinic writes one: a long shared prefix, then one or several findings in some order,
    each under one of its names ("color fundus photograph, left eye: NPDR, no macular edema")."""
    findings = []
    if row["DR"] in ("no_DR", "NPDR", "PDR"):
        findings.append(row["DR"])
    findings.append("DME" if row["DME"] == "1" else "no_DME")
    if row["DR"] == "no_DR" and row["DME"] == "0" and rng.random() < 0.5:
        findings = ["no_DR"]  # "normal fundus" is often all a clinic writes
    order = rng.permutation(len(findings))
    words = [str(rng.choice(FINDING_SYNONYMS[findings[i]])) for i in order]
    prefix = CAPTION_PREFIXES[0] if rng.random() < 0.7 else str(rng.choice(CAPTION_PREFIXES[1:]))
    return prefix.format(eye=row["eye"]) + " " + ", ".join(words)


def write_multiclass_manifests(
    out_dir: str | Path,
    root: str | Path = DEFAULT_ROOT,
    test_fraction: float = 0.2,
    seed: int = 0,
    one_acquisition: bool = False,
) -> dict:
    """Write the four-class task's manifests into `out_dir`; returns their paths and row counts.

    - ``paired.csv``: every fundus photograph of the training patients with a clinic-style caption and its class
      (label-guided targets);
    - ``unpaired.csv``: the training patients' OCT B-scans and their photographs without a class (image only);
    - ``probe_train.csv`` / ``test.csv``: the training / held-out patients' photographs with their class.

    The DME photographs without a DR grade (999 of the 1,025 DME ones) come from another acquisition (mean pixel
    value 45 against 66–77 for every graded group, a third of the frame black against a fifth): "DME" is partly
    recognisable from the camera. `one_acquisition=True` removes that shortcut: those photographs become
    unpaired images, and the four classes come from the graded photographs alone (no DR 398, NPDR 69, PDR 52,
    DME with NPDR 26) — a harder task whose DME class is small.
    """
    root = Path(root).resolve()
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: point --root at the TVHL folder (shared/data/tvhl).")
    with open(labels, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({row["patient_id"] for row in rows})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    test_patients = {patients[i] for i in order[: round(test_fraction * len(patients))]}
    tables: dict[str, list[dict]] = {"paired": [], "unpaired": [], "probe_train": [], "test": []}
    for row in rows:
        image, pid = str(root / row["path"]), row["patient_id"]
        held_out = pid in test_patients
        label = multiclass_label(row) if row["modality"] == "fundus" else None
        if one_acquisition and row["DR"] == "unknown":
            label = None
        if label is None:
            if not held_out:
                tables["unpaired"].append({"image": image, "patient_id": pid})
            continue
        if held_out:
            tables["test"].append({"image": image, "label": label, "patient_id": pid})
            continue
        tables["probe_train"].append({"image": image, "label": label, "patient_id": pid})
        tables["paired"].append(
            {"image": image, "text": clinic_caption(row, rng), "label": label, "patient_id": pid}
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "classes": MULTICLASS_CLASSES,
        "root": str(root),
        "seed": seed,
        "one_acquisition": one_acquisition,
        "files": {},
        "rows": {},
    }
    for name, table in tables.items():
        path = out / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        summary["files"][name] = str(path)
        summary["rows"][name] = len(table)
    summary["class_counts"] = {
        side: {c: sum(r["label"] == c for r in tables[side]) for c in MULTICLASS_CLASSES}
        for side in ("probe_train", "test")
    }
    summary["distinct_captions"] = len({r["text"] for r in tables["paired"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_text_corpus(captions_csv: str | Path, classes: list[str], path: Path) -> None:
    """The text-MLM corpus of a task: the captions of `captions_csv` (its `text` column) plus every class prompt
    with its expert descriptions, one JSON line each."""
    from retvlp.prompts import class_prompts

    with open(captions_csv, newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    texts += [p for name in classes for p in class_prompts(name, modality="CFP")]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--out", default="outputs/tvhl_manifests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("dme", "multiclass", "multiclass-one-acquisition"), default="dme")
    args = parser.parse_args()
    if args.task == "dme":
        summary = write_manifests(args.out, args.root, seed=args.seed)
    else:
        one_acquisition = args.task == "multiclass-one-acquisition"
        summary = write_multiclass_manifests(
            args.out, args.root, seed=args.seed, one_acquisition=one_acquisition
        )
    print(
        json.dumps(
            {k: summary[k] for k in ("rows", "class_counts", "distinct_captions") if k in summary}, indent=2
        )
    )


if __name__ == "__main__":
    main()
