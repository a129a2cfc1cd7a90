"""OCTID (Optical Coherence Tomography Image Database, Borealis): 5 OCT classes, RETFound suite.

Layout: one folder per class as the database distributes them, `NORMAL/`, `AMRD/`, `CSR/`, `DR/`, `MH/` (image
names such as `NORMAL1.jpg`, `AMRD1.jpg`); the class is the folder. No patient ids: grouped by image; seeded split.
"""

from __future__ import annotations

from ._common import ClassFolderRecipe


class OCTID(ClassFolderRecipe):
    name = "octid"
    title = "OCTID"
    suites = ("retfound",)
    classes = (
        "normal",
        "age-related macular degeneration",
        "central serous retinopathy",
        "diabetic retinopathy",
        "macular hole",
    )
    class_folders = {
        "NORMAL": "normal",
        "AMRD": "age-related macular degeneration",
        "CSR": "central serous retinopathy",
        "DR": "diabetic retinopathy",
        "MH": "macular hole",
    }
    folder = "octid"
    source = "https://borealisdata.ca/dataverse/OCTID"
    licence = "as stated on the Borealis dataverse record (check the record before use)"
    citation = (
        "Gholami P, Roy P, Parthasarathy MK, Lakshminarayanan V. OCTID: Optical coherence tomography image "
        "database. Computers & Electrical Engineering 2020;81:106532."
    )
    layout = "octid/\n  NORMAL/NORMAL1.jpg ...  AMRD/  CSR/  DR/  MH/"


RECIPE = OCTID()
