"""Glaucoma fundus (Kim et al., Harvard Dataverse doi:10.7910/DVN/1YRRAC): normal / early / advanced glaucoma,
RETFound suite.

Layout: three class folders `normal_control/`, `early_glaucoma/`, `advanced_glaucoma/` holding `1.png`,
`2.png`, ... (the folder names RETFound's released split prefixes as anormal_control / bearly_glaucoma /
cadvanced_glaucoma; file names restart at 1 in each folder, so groups are `<folder>/<file>`). No patient ids:
grouped by image; seeded split.
"""

from __future__ import annotations

from ._common import ClassFolderRecipe


class GlaucomaFundus(ClassFolderRecipe):
    name = "glaucoma_fundus"
    title = "Glaucoma fundus (Kim et al.)"
    suites = ("retfound",)
    classes = ("normal", "early glaucoma", "advanced glaucoma")
    class_folders = {
        "normal_control": "normal",
        "early_glaucoma": "early glaucoma",
        "advanced_glaucoma": "advanced glaucoma",
    }
    folder = "glaucoma_fundus"
    source = "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/1YRRAC"
    licence = "as stated on the Harvard Dataverse record (CC0 1.0 is Dataverse's default; check the record)"
    citation = (
        "Ahn JM, Kim S, Ahn KS, Cho SH, Lee KB, Kim US. A deep learning model for the detection of both advanced "
        "and early glaucoma using fundus photography. PLoS One 2018;13(11):e0207982."
    )
    layout = (
        "glaucoma_fundus/\n"
        "  normal_control/1.png ...\n"
        "  early_glaucoma/1.png ...\n"
        "  advanced_glaucoma/1.png ..."
    )
    extra_notes = ("file names restart at 1.png in each class folder: groups are '<folder>/<file>'",)


RECIPE = GlaucomaFundus()
