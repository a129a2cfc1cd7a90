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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--out", default="outputs/tvhl_manifests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_manifests(args.out, args.root, seed=args.seed)["rows"], indent=2))


if __name__ == "__main__":
    main()
