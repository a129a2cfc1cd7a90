"""Retina (Kaggle "cataractdataset" by jr2ngb): normal / cataract / glaucoma / retina disease, RETFound suite.

Layout: `dataset/1_normal/`, `dataset/2_cataract/`, `dataset/2_glaucoma/`, `dataset/3_retina_disease/` (the
folder names of the Kaggle download; jusiro/FLAIR local_data/prepare_partitions.py, adequate_34_cataract, reads
the same four folders). No patient ids: grouped by image; seeded split.
"""

from __future__ import annotations

from ._common import ClassFolderRecipe


class Retina(ClassFolderRecipe):
    name = "retina"
    title = "Retina (Kaggle cataract dataset)"
    suites = ("retfound",)
    classes = ("normal", "cataract", "glaucoma", "retina disease")
    base = "dataset"
    class_folders = {
        "1_normal": "normal",
        "2_cataract": "cataract",
        "2_glaucoma": "glaucoma",
        "3_retina_disease": "retina disease",
    }
    folder = "retina"
    source = "https://www.kaggle.com/datasets/jr2ngb/cataractdataset"
    licence = "as stated on the Kaggle dataset page (unknown licence at the time of writing)"
    citation = (
        "jr2ngb. Cataract dataset. Kaggle, 2019. https://www.kaggle.com/datasets/jr2ngb/cataractdataset"
    )
    layout = (
        "retina/dataset/\n  1_normal/  2_cataract/  2_glaucoma/  3_retina_disease/   (images .png / .jpg)"
    )


RECIPE = Retina()
