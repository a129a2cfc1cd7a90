"""ODIR-200x3: the FLAIR / KeepFIT ODIR subset protocol (normal / pathologic myopia / cataract, 200 eyes each).

Reads the official ODIR-5K training release (the `odir5k` recipe's folder and layout; one download serves both).
Candidates: eye images whose own diagnostic keywords give exactly one of the three classes and nothing else
(per-eye labels as in `odir5k`; ambiguous eyes are skipped there and here). Draw: 200 eyes per class, uniformly
at random without replacement with numpy's default_rng(DRAW_SEED = 0), from the candidates in sheet order — a
fixed, documented draw that `seed` does not change (it only changes the split). FLAIR's own subset
(jusiro/FLAIR local_data/prepare_partitions.py, adequate_08_odir5k; reused by KeepFIT) instead takes the first
200 eyes per class in sheet order among patients whose one-hot row has that single disease, so the images
differ from FLAIR's while the protocol (classes, size) is the same. Class names as FLAIR prompts them
(local_data/experiments.py: normal, pathologic myopia, cataract). Grouping: patient; seeded split. The papers
evaluate zero-shot on all 600 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import Recipe
from .odir5k import IMAGES, LAYOUTS, NOTES, SHEET, read_odir_eyes

PER_CLASS = 200
DRAW_SEED = 0


class ODIR200x3(Recipe):
    name = "odir200x3"
    title = "ODIR-200x3 (FLAIR / KeepFIT subset)"
    suites = ("flair",)
    task = "multiclass"
    classes = ("normal", "pathologic myopia", "cataract")
    per_class = PER_CLASS
    folder = "odir5k"
    source = (
        "https://odir2019.grand-challenge.org/ (ODIR-5K training release; subset protocol of FLAIR / KeepFIT)"
    )
    licence = "the ODIR-2019 challenge data terms (research use; see the challenge page)"
    citation = (
        "Li N, et al. A benchmark of ocular disease intelligent recognition (Bench 2020). Subset protocol: "
        "Silva-Rodriguez J, et al. A foundation language-image model of the retina (FLAIR). Med Image Anal "
        "2025;99:103357; Wu M, et al. Mm-retinal: knowledge-enhanced foundational pretraining with fundus "
        "image-text expertise (KeepFIT). MICCAI 2024."
    )
    layout = f"odir5k/   (the ODIR-5K release, as for odir5k)\n  {SHEET}\n  {IMAGES}/0_left.jpg, ..."

    layouts = LAYOUTS

    def required_files(self):
        return (SHEET, IMAGES)

    def read(self, root: Path, *, seed: int):
        eyes, skipped = read_odir_eyes(self, root)
        rng = np.random.default_rng(DRAW_SEED)
        rows, notes = [], []
        for label in self.classes:
            candidates = [e for e in eyes if e[1] == (label,)]
            if len(candidates) > self.per_class:
                keep = sorted(rng.choice(len(candidates), size=self.per_class, replace=False).tolist())
                candidates = [candidates[i] for i in keep]
            elif len(candidates) < self.per_class:
                notes.append(
                    f"only {len(candidates)} candidate eye(s) for {label!r} (protocol: {self.per_class}): all kept"
                )
            rows.extend(candidates)
        return self.finish(
            rows,
            root=root,
            seed=seed,
            grouping="patient",
            notes=NOTES
            + [
                f"draw: {self.per_class} eyes per class, numpy default_rng({DRAW_SEED}), candidates in sheet order"
            ]
            + notes,
            skipped=skipped,
        )


RECIPE = ODIR200x3()
