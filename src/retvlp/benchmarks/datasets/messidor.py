"""MESSIDOR as FLAIR / KeepFIT evaluate it: 5-grade diabetic retinopathy, FLAIR suite.

Choice (sources disagree): "MESSIDOR" in the FLAIR paper's transfer tasks is not the 1200-image MESSIDOR-1
release (4-grade R0-R3 scale, per-base `Annotation_BaseXY.xls` sheets) but the Messidor-2 images with the
5-grade adjudicated ICDR labels: jusiro/FLAIR local_data/prepare_partitions.py (adequate_02_messidor) reads
`messidor_data.csv` (image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable), keeps the gradable
images, and its released dataframe local_data/dataframes/transferability/classification/02_MESSIDOR.csv lists
Messidor-2 file names (20051020_43808_0100_PP.png, ...) with the five ICDR class names of
local_data/experiments.py. This recipe therefore reads the same release as `messidor2` (same folder, so one
download serves both suites) with FLAIR's class names; MESSIDOR-1's per-base sheets are not read.

Reference figure: FLAIR's zero-shot ACA 0.604 (FLAIR paper, Table 3), as quoted in jusiro/FLAIR issue #7 (the
reporter measured 0.490 with the released weights; the first author answered that he reproduces the paper's
value). The paper's other figures were not found in a readable source here and are not listed.
"""

from __future__ import annotations

from ..recipe import ReferenceFigure
from .messidor2 import Messidor2


class Messidor(Messidor2):
    name = "messidor"
    title = "MESSIDOR (FLAIR's DR-grading task: Messidor-2 images, adjudicated grades)"
    suites = ("flair",)
    references = (
        ReferenceFigure(
            model="FLAIR",
            protocol="zero-shot",
            metric="balanced_accuracy",
            value=0.604,
            source=(
                "Silva-Rodriguez et al., A foundation language-image model of the retina (FLAIR), arXiv:2308.07898 "
                "/ Med Image Anal 2025, Table 3 (zero-shot, ACA); the value as "
                "quoted in jusiro/FLAIR issue #7, where the first author confirms reproducing it"
            ),
        ),
    )


RECIPE = Messidor()
