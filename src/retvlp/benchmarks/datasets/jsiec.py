"""JSIEC, the "1000 fundus images with 39 categories" (Cen et al., Zenodo record 3477553), RETFound suite.

Layout: `1000images/<category folder>/` with the 39 category folders as released, numbered `0.0.Normal` ..
`29.1.Blur fundus with suspected PDR` (the names jusiro/FLAIR local_data/prepare_partitions.py,
adequate_05_1000x39, reads). Class names: the folder names without their numbers, lower case, with DR1-DR3
written out as the grades they denote. No patient ids: grouped by image; seeded split (RETFound's released split
is a separate download, not read).
"""

from __future__ import annotations

from ._common import ClassFolderRecipe

FOLDERS = {
    "0.0.Normal": "normal",
    "0.1.Tessellated fundus": "tessellated fundus",
    "0.2.Large optic cup": "large optic cup",
    "0.3.DR1": "mild non-proliferative diabetic retinopathy",
    "1.0.DR2": "moderate non-proliferative diabetic retinopathy",
    "1.1.DR3": "severe non-proliferative diabetic retinopathy",
    "2.0.BRVO": "branch retinal vein occlusion",
    "2.1.CRVO": "central retinal vein occlusion",
    "3.RAO": "retinal artery occlusion",
    "4.Rhegmatogenous RD": "rhegmatogenous retinal detachment",
    "5.0.CSCR": "central serous chorioretinopathy",
    "5.1.VKH disease": "Vogt-Koyanagi-Harada disease",
    "6.Maculopathy": "maculopathy",
    "7.ERM": "epiretinal membrane",
    "8.MH": "macular hole",
    "9.Pathological myopia": "pathological myopia",
    "10.0.Possible glaucoma": "possible glaucoma",
    "10.1.Optic atrophy": "optic atrophy",
    "11.Severe hypertensive retinopathy": "severe hypertensive retinopathy",
    "12.Disc swelling and elevation": "disc swelling and elevation",
    "13.Dragged Disc": "dragged disc",
    "14.Congenital disc abnormality": "congenital disc abnormality",
    "15.0.Retinitis pigmentosa": "retinitis pigmentosa",
    "15.1.Bietti crystalline dystrophy": "Bietti crystalline dystrophy",
    "16.Peripheral retinal degeneration and break": "peripheral retinal degeneration and break",
    "17.Myelinated nerve fiber": "myelinated nerve fiber",
    "18.Vitreous particles": "vitreous particles",
    "19.Fundus neoplasm": "fundus neoplasm",
    "20.Massive hard exudates": "massive hard exudates",
    "21.Yellow-white spots-flecks": "yellow-white spots or flecks",
    "22.Cotton-wool spots": "cotton-wool spots",
    "23.Vessel tortuosity": "vessel tortuosity",
    "24.Chorioretinal atrophy-coloboma": "chorioretinal atrophy or coloboma",
    "25.Preretinal hemorrhage": "preretinal hemorrhage",
    "26.Fibrosis": "fibrosis",
    "27.Laser Spots": "laser spots",
    "28.Silicon oil in eye": "silicon oil in eye",
    "29.0.Blur fundus without PDR": "blurred fundus without proliferative diabetic retinopathy",
    "29.1.Blur fundus with suspected PDR": "blurred fundus with suspected proliferative diabetic retinopathy",
}


class JSIEC(ClassFolderRecipe):
    name = "jsiec"
    title = "JSIEC 1000 fundus images (39 categories)"
    suites = ("retfound",)
    classes = tuple(FOLDERS.values())
    base = "1000images"
    class_folders = FOLDERS
    folder = "jsiec"
    source = "https://zenodo.org/records/3477553"
    licence = "as stated on the Zenodo record 3477553 (check the record before use)"
    citation = (
        "Cen LP, Ji J, Lin JW, et al. Automatic detection of 39 fundus diseases and conditions in retinal "
        "photographs using deep neural networks. Nat Commun 2021;12:4828."
    )
    layout = "jsiec/1000images/\n  0.0.Normal/ 0.1.Tessellated fundus/ ... 29.1.Blur fundus with suspected PDR/ (39)"


RECIPE = JSIEC()
