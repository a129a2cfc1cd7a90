"""The public-dataset recipes (issue 28) on synthetic stand-ins written in each publisher's layout.

Every expectation is computed from what the stand-in wrote (`benchmark_standins.standin_truth`) or written out
here literally (the classes the papers prompt, the grouping, the task), never from the recipe under test.
"""

from __future__ import annotations

import csv
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_standins import STANDIN_NAMES, standin_truth, write_standin  # noqa: E402

from retvlp.benchmarks.datasets import _sheets  # noqa: E402
from retvlp.benchmarks.datasets._common import RecipePathError  # noqa: E402
from retvlp.benchmarks.recipe import SPLITS, RecipeLayoutError  # noqa: E402
from retvlp.benchmarks.registry import get_recipe, recipes, suite_recipes  # noqa: E402

DR = (
    "no diabetic retinopathy",
    "mild diabetic retinopathy",
    "moderate diabetic retinopathy",
    "severe diabetic retinopathy",
    "proliferative diabetic retinopathy",
)
# name: (classes as the papers prompt them, task, ordinal, grouping, official split?)
EXPECTED = {
    "aptos2019": (DR, "multiclass", True, "image", False),
    "messidor2": (DR, "multiclass", True, "patient", False),
    "messidor": (DR, "multiclass", True, "patient", False),
    "idrid": (DR, "multiclass", True, "image", True),
    "papila": (("normal", "suspected glaucoma", "glaucoma"), "multiclass", False, "patient", False),
    "glaucoma_fundus": (
        ("normal", "early glaucoma", "advanced glaucoma"),
        "multiclass",
        False,
        "image",
        False,
    ),
    "retina": (("normal", "cataract", "glaucoma", "retina disease"), "multiclass", False, "image", False),
    "octid": (
        (
            "normal",
            "age-related macular degeneration",
            "central serous retinopathy",
            "diabetic retinopathy",
            "macular hole",
        ),
        "multiclass",
        False,
        "image",
        False,
    ),
    "fives": (
        ("normal", "age related macular degeneration", "diabetic retinopathy", "glaucoma"),
        "multiclass",
        False,
        "image",
        True,
    ),
    "refuge": (("no glaucoma", "glaucoma"), "binary", False, "image", False),
    "odir5k": (
        (
            "normal",
            "diabetic retinopathy",
            "glaucoma",
            "cataract",
            "age-related macular degeneration",
            "hypertensive retinopathy",
            "pathologic myopia",
            "other disease",
        ),
        "multilabel",
        False,
        "patient",
        False,
    ),
    "odir200x3": (("normal", "pathologic myopia", "cataract"), "multiclass", False, "patient", False),
}
RETFOUND = {"aptos2019", "messidor2", "idrid", "papila", "glaucoma_fundus", "jsiec", "retina", "octid"}
FLAIR = {"messidor", "fives", "refuge", "odir5k", "odir200x3"}
# recipes whose images are listed in a label sheet: (sheet relative to the dataset folder, the column naming the
# image, how a sheet value is turned into an escaping one)
SHEETS = {
    "aptos2019": ("train.csv", "id_code"),
    "messidor2": ("messidor_data.csv", "image_id"),
    "messidor": ("messidor_data.csv", "image_id"),
    "idrid": (
        "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
        "Image name",
    ),
    "odir5k": ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "Left-Fundus"),
    "odir200x3": ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "Left-Fundus"),
}
LISTED = sorted(SHEETS) + ["papila"]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """Every stand-in written once (read-only tests share it)."""
    root = tmp_path_factory.mktemp("public")
    for name in STANDIN_NAMES:
        write_standin(name, root)
    return root


def _jsiec_expected():
    from retvlp.benchmarks.datasets.jsiec import FOLDERS

    return tuple(FOLDERS.values())


# ------------------------------------------------------------------------------------------------ registry
def test_registry_finds_every_module_and_the_suites():
    folder = Path(get_recipe("aptos2019").__module__.replace(".", "/")).parent
    modules = {
        p.stem
        for p in (Path(__file__).resolve().parents[1] / "src" / folder).glob("*.py")
        if not p.stem.startswith("_")
    }
    assert set(recipes()) == modules == RETFOUND | FLAIR
    assert set(STANDIN_NAMES) == modules
    assert {r.name for r in suite_recipes("retfound")} == RETFOUND
    assert {r.name for r in suite_recipes("flair")} == FLAIR
    assert (
        get_recipe("ODIR-200x3").name == "odir200x3"
        and get_recipe("glaucoma-fundus").name == "glaucoma_fundus"
    )
    for recipe in recipes().values():
        assert recipe.source.startswith("http") or "http" in recipe.source
        assert recipe.licence and recipe.citation and recipe.layout and recipe.title
        assert all(0 <= f.value <= 1 and f.source for f in recipe.references)


# ------------------------------------------------------------------------------------------- every stand-in
@pytest.mark.parametrize("name", STANDIN_NAMES)
def test_standin_loads_as_written(standins, name):
    recipe = get_recipe(name)
    truth = standin_truth(name, standins)
    data = recipe.load(standins)
    classes, task, ordinal, grouping, official = EXPECTED.get(name) or (
        _jsiec_expected(),
        "multiclass",
        False,
        "image",
        False,
    )
    assert (data.classes, data.task, data.ordinal, data.grouping) == (classes, task, ordinal, grouping)
    assert data.name == name and recipe.name == name

    # the images and labels the stand-in wrote, and nothing else
    written = {r["image"]: tuple(r["labels"]) for r in truth["records"]}
    assert {r.image: r.labels for r in data.records} == written
    assert all(Path(r.image).is_file() and Path(r.image).is_absolute() for r in data.records)
    per_class = Counter(label for labels in written.values() for label in labels)
    got = Counter()
    for split_counts in data.counts().values():
        got.update({c: n for c, n in split_counts.items() if n})
    assert got == per_class
    if name not in ("papila", "odir5k", "odir200x3", "idrid", "fives"):
        assert set(per_class.values()) == {truth["per_class"]} and set(per_class) == set(classes)

    # rows the recipe cannot use: listed, with the stand-in's reason
    assert len(data.skipped) == len(truth["skipped"])
    for expected in truth["skipped"]:
        assert any(
            expected["what"] in s.where and expected["reason"].split()[0] in s.reason for s in data.skipped
        ), (expected, data.skipped)

    # grouping: the recipe's groups are exactly the stand-in's patients / eyes / images
    recipe_group = {r.image: r.group for r in data.records}
    true_group = {r["image"]: r["group"] for r in truth["records"]}
    pairs = {(recipe_group[i], true_group[i]) for i in recipe_group}
    assert len(pairs) == len({g for g, _ in pairs}) == len({t for _, t in pairs})
    if name in ("papila", "odir5k", "odir200x3"):
        assert len(set(true_group.values())) < len(true_group)  # patients with both eyes present

    # splits: known names, every group in one split, train and test present
    split_of_group = defaultdict(set)
    for r in data.records:
        assert r.split in SPLITS
        split_of_group[r.group].add(r.split)
    assert all(len(s) == 1 for s in split_of_group.values())
    assert {"train", "test"} <= {r.split for r in data.records}

    # the official split where the publisher gives one; else a seeded split that says so
    by_image = {r.image: r.split for r in data.records}
    if official:
        for r in truth["records"]:
            assert r["split"] in ("train", "test")
            assert (
                by_image[r["image"]] == "test"
                if r["split"] == "test"
                else by_image[r["image"]] in ("train", "val")
            )
        assert data.split_source.startswith("official")
    else:
        assert all(r["split"] is None for r in truth["records"])
        assert "seed 0" in data.split_source
    again = recipe.load(standins)
    assert [r.split for r in again.records] == [r.split for r in data.records]  # deterministic


@pytest.mark.parametrize("name", STANDIN_NAMES)
def test_manifests_are_readable_by_the_evaluation_suite(standins, tmp_path, name):
    from retvlp.evaluation.data import read_labelled_records

    data = get_recipe(name).load(standins)
    written = data.write_manifests(tmp_path / name)
    assert set(written) == {r.split for r in data.records}
    for split, path in written.items():
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == len(data.split(split))
        spec = {"path": str(path), "allowed_roots": [str(get_recipe(name).root(standins))]}  # images stay put
        records = read_labelled_records(spec, list(data.classes), multi_label=data.task == "multilabel")
        assert len(records.records) == len(data.split(split)), records.excluded
        assert len(set(records.groups.tolist())) == len({r.group for r in data.split(split)})


@pytest.mark.parametrize("name", STANDIN_NAMES)
def test_missing_required_file_is_named(tmp_path, name):
    recipe = get_recipe(name)
    root = write_standin(name, tmp_path)
    assert recipe.is_present(tmp_path)
    first = recipe.required_files()[0]
    target = root / first
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert not recipe.is_present(tmp_path)
    with pytest.raises(RecipeLayoutError) as error:
        recipe.load(tmp_path)
    assert first in str(error.value) and "Expected layout" in str(error.value)
    with pytest.raises(RecipeLayoutError, match="lacks"):
        recipe.load(tmp_path / "elsewhere")


@pytest.mark.parametrize("name", LISTED)
def test_listed_but_missing_image_is_skipped(tmp_path, name):
    recipe = get_recipe(name)
    write_standin(name, tmp_path)
    truth = standin_truth(name, tmp_path)
    gone = Path(truth["records"][0]["image"])
    gone.unlink()
    data = recipe.load(tmp_path)
    assert gone.as_posix() not in {r.image for r in data.records}
    assert len(data.records) == len(truth["records"]) - 1
    assert len(data.skipped) == len(truth["skipped"]) + 1
    assert any("missing" in s.reason and gone.stem.split(".")[0] in s.reason + s.where for s in data.skipped)


def _rewrite_first(path: Path, column: str, value: str) -> None:
    if path.suffix == ".xlsx":
        rows = _sheets.read_xlsx(path)
        rows[1][rows[0].index(column)] = value
        _sheets.write_xlsx(path, {"Sheet1": rows})
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows[1][[h.strip() for h in rows[0]].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize("name", sorted(SHEETS))
@pytest.mark.parametrize("value", ["../../../../etc/passwd", "/etc/passwd"])
def test_sheet_entry_outside_the_dataset_folder_is_refused(tmp_path, name, value):
    recipe = get_recipe(name)
    root = write_standin(name, tmp_path)
    sheet, column = SHEETS[name]
    _rewrite_first(root / sheet, column, value)
    with pytest.raises(RecipePathError, match="refused") as error:
        recipe.load(tmp_path)
    assert isinstance(error.value, RecipeLayoutError) and value in str(error.value)


# ----------------------------------------------------------------------------------------------- quirks
def test_idrid_trailing_space_column_and_missing_column(tmp_path):
    root = write_standin("idrid", tmp_path)
    sheet = root / SHEETS["idrid"][0]
    header = sheet.read_text(encoding="utf-8").splitlines()[0]
    assert "Risk of macular edema ," in header and header.endswith(",,")  # the release's quirks are there
    assert len(get_recipe("idrid").load(tmp_path).records) == len(standin_truth("idrid", tmp_path)["records"])
    sheet.write_text(
        sheet.read_text(encoding="utf-8").replace("Retinopathy grade", "Grade"), encoding="utf-8"
    )
    with pytest.raises(RecipeLayoutError, match="Retinopathy grade") as error:
        get_recipe("idrid").load(tmp_path)
    assert "Training Labels.csv" in str(error.value)


def test_idrid_and_fives_reuse_names_across_official_sets(standins):
    for name in ("idrid", "fives"):
        data = get_recipe(name).load(standins)
        stems = Counter(Path(r.image).name for r in data.records)
        assert max(stems.values()) == 2  # the same file name in the training and the testing set
        assert len({r.group for r in data.records}) == len(data.records)
        assert "val" in {r.split for r in data.records} and "val" in data.split_source


def test_messidor_extension_case_and_shared_folder(standins):
    two, one = get_recipe("messidor2"), get_recipe("messidor")
    assert two.folder == one.folder and set(one.suites) == {"flair"} and set(two.suites) == {"retfound"}
    data = two.load(standins)
    with open(standins / two.folder / "messidor_data.csv", newline="") as handle:
        listed = [r["image_id"] for r in csv.DictReader(handle) if r["adjudicated_gradable"] == "1"]
    assert any(n.endswith(".jpg") for n in listed)
    on_disk = {Path(r.image).name for r in data.records}
    assert {n for n in on_disk if n.endswith(".JPG")} == {
        n[:-4] + ".JPG" for n in listed if n.endswith(".jpg")
    }
    assert [s.reason for s in data.skipped] == ["ungradable (adjudicated_gradable 0)"] * 2
    assert [r.image for r in one.load(standins).records] == [r.image for r in data.records]


def test_messidor2_exam_pairs_group_the_two_eyes(tmp_path):
    root = write_standin("messidor2", tmp_path, per_class=5)
    lines = (root / "messidor-2.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "left;right" and all(line.count(";") == 1 for line in lines)
    data = get_recipe("messidor2").load(tmp_path)
    split_of = {Path(r.image).name: r.split for r in data.records}
    group_of = {Path(r.image).name: r.group for r in data.records}
    pairs = [line.split(";") for line in lines[1:] if all(n in split_of for n in line.split(";"))]
    assert len(pairs) == 5  # one exam per grade (the ungradable pair is skipped)
    for left, right in pairs:
        assert group_of[left] == group_of[right] and split_of[left] == split_of[right]
    assert data.grouping == "patient" and any("grouped by examination" in n for n in data.notes)
    (root / "messidor-2.csv").unlink()
    alone = get_recipe("messidor2").load(tmp_path)
    assert alone.grouping == "image" and len({r.group for r in alone.records}) == len(alone.records)


def test_messidor2_repack_column_names(tmp_path):
    root = write_standin("messidor2", tmp_path)
    sheet = root / "messidor_data.csv"
    text = sheet.read_text(encoding="utf-8")
    sheet.write_text(
        text.replace("image_id", "id_code").replace("adjudicated_dr_grade", "diagnosis"), "utf-8"
    )
    assert len(get_recipe("messidor2").load(tmp_path).records) == len(
        standin_truth("messidor2", tmp_path)["records"]
    )
    sheet.write_text(text.replace("adjudicated_dr_grade", "grade"), encoding="utf-8")
    with pytest.raises(RecipeLayoutError, match="'adjudicated_dr_grade' / 'diagnosis'"):
        get_recipe("messidor2").load(tmp_path)


def test_papila_header_rows_ids_and_eyes(standins):
    rows = _sheets.read_xlsx(standins / "papila/ClinicalData/patient_data_od.xlsx")
    assert (
        rows[0][0] == "" and rows[0][3] == "Diagnosis" and rows[1][4] == "dioptre_1" and rows[3][0] == "#002"
    )
    data = get_recipe("papila").load(standins)
    eyes = defaultdict(dict)
    for r in data.records:
        eyes[r.group][Path(r.image).stem[-2:]] = r
    assert all(set(e) == {"OD", "OS"} for e in eyes.values())
    assert any(e["OD"].labels != e["OS"].labels for e in eyes.values())  # labels are per eye
    assert all(e["OD"].split == e["OS"].split for e in eyes.values())


def test_odir_per_eye_keywords_against_patient_one_hot(standins):
    data = get_recipe("odir5k").load(standins)
    labels = {Path(r.image).name: r.labels for r in data.records}
    rows = _sheets.read_xlsx(standins / "odir5k" / SHEETS["odir5k"][0])
    header = rows[0]
    for row in rows[1:]:
        cells = dict(zip(header, row, strict=False))
        for side in ("Left", "Right"):
            keywords = cells[f"{side}-Diagnostic Keywords"]
            name = cells[f"{side}-Fundus"]
            if keywords == "moderate non proliferative retinopathy，hypertensive retinopathy":
                assert labels[name] == ("diabetic retinopathy", "hypertensive retinopathy")
            if keywords == "lens dust，normal fundus":
                assert labels[name] == ("normal",)
            if keywords == "normal fundus" and cells["N"] == "0":
                assert labels[name] == ("normal",)  # patient-level N is 0 when the other eye is diseased
    reasons = Counter(s.reason.split(":")[0].split(" (")[0] for s in data.skipped)
    assert reasons == Counter({"no diagnostic keyword": 1, "not a usable fundus image": 1, "ambiguous": 1})
    assert any("1 ambiguous eye(s) skipped" in n for n in data.notes)


def test_odir200x3_draw_is_fixed_and_seed_only_moves_the_split(tmp_path):
    write_standin("odir200x3", tmp_path, per_class=12)
    recipe = type(get_recipe("odir200x3"))()
    recipe.per_class = 8
    first, other_seed = recipe.load(tmp_path, seed=0), recipe.load(tmp_path, seed=1)
    assert Counter(r.labels[0] for r in first.records) == Counter(
        {"normal": 8, "pathologic myopia": 8, "cataract": 8}
    )
    assert sorted(r.image for r in first.records) == sorted(r.image for r in other_seed.records)
    assert "seed 1" in other_seed.split_source
    full = get_recipe("odir200x3").load(tmp_path)
    assert any("all kept" in n for n in full.notes)  # fewer candidates than 200 in a stand-in


def test_refuge_repacked_layout(tmp_path):
    root = write_standin("refuge", tmp_path)
    (root / "train/Images").mkdir(parents=True)
    for path in sorted((root / "Training400").rglob("*.jpg")):
        shutil.move(path, root / "train/Images" / path.name)
    shutil.rmtree(root / "Training400")
    data = get_recipe("refuge").load(tmp_path)
    assert Counter(r.labels[0] for r in data.records) == Counter({"glaucoma": 3, "no glaucoma": 3})


def test_class_folder_release_extra_folder_and_files_listed(tmp_path):
    root = write_standin("octid", tmp_path)
    (root / "NORMAL" / "notes.txt").write_text("x")
    (root / "EXTRA").mkdir()
    data = get_recipe("octid").load(tmp_path)
    assert len(data.records) == 15
    assert sorted(Path(s.where).name for s in data.skipped) == ["EXTRA", "notes.txt"]


# ------------------------------------------------------------------------------------------------ sheets
def test_xlsx_round_trip(tmp_path):
    rows = [["ID", "", "Name，x", "Grade"], [], ["#002", None, "a & <b>", 3], [1, 2.5, "", 0]]
    path = _sheets.write_xlsx(tmp_path / "s.xlsx", {"Data": rows, "Other": [["z"]]})
    assert _sheets.sheet_names(path) == ["Data", "Other"]
    assert _sheets.read_xlsx(path) == [["ID", "", "Name，x", "Grade"], [], ["#002", "", "a & <b>", "3"], ["1", "2.5", "", "0"]]  # fmt: skip
    assert _sheets.read_xlsx(path, "other") == [["z"]]
    with pytest.raises(_sheets.SheetError, match="no sheet"):
        _sheets.read_xlsx(path, "missing")
    (tmp_path / "bad.xlsx").write_text("not a zip")
    with pytest.raises(_sheets.SheetError, match="not an .xlsx"):
        _sheets.read_xlsx(tmp_path / "bad.xlsx")


def test_legacy_xls_needs_xlrd_or_a_csv(tmp_path):
    xls = tmp_path / "Annotation_Base11.xls"
    xls.write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "Annotation_Base11.csv").write_text(
        "Image name,Retinopathy grade\nx.tif,1\n", encoding="utf-8"
    )
    try:
        import xlrd  # noqa: F401
    except ImportError:
        assert _sheets.read_xls_or_csv(xls) == [["Image name", "Retinopathy grade"], ["x.tif", "1"]]
        (tmp_path / "Annotation_Base11.csv").unlink()
        with pytest.raises(_sheets.SheetError, match="xlrd"):
            _sheets.read_xls_or_csv(xls)


@pytest.mark.parametrize("name", ["fives", "papila", "jsiec"])
def test_a_wrapper_folder_added_by_the_archive_is_found(tmp_path, name):
    recipe = get_recipe(name)
    root = write_standin(name, tmp_path)
    wrapper = root / "Release 1.0"
    wrapper.mkdir()
    for entry in list(root.iterdir()):
        if entry != wrapper:
            shutil.move(entry, wrapper / entry.name)
    assert recipe.root(tmp_path) == wrapper and recipe.is_present(tmp_path)
    data = recipe.load(tmp_path)
    assert len(data.records) == len(standin_truth(name, tmp_path)["records"])
    assert all(Path(r.image).is_relative_to(wrapper.resolve()) for r in data.records)


@pytest.mark.parametrize("name", ["octid", "fives", "refuge", "messidor2"])
def test_an_image_linking_out_of_the_dataset_folder_is_refused(tmp_path, name):
    root = write_standin(name, tmp_path / "data")
    victim = Path(standin_truth(name, tmp_path / "data")["records"][0]["image"])
    outside = tmp_path / "elsewhere.png"
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    with pytest.raises(RecipePathError, match="outside the dataset folder"):
        get_recipe(name).load(tmp_path / "data")
    assert root.is_dir()


@pytest.mark.parametrize("name", ["odir5k", "odir200x3"])
def test_odir_kaggle_repack_two_folders_down(tmp_path, name):
    root = write_standin(name, tmp_path)
    inner = root / "ODIR-5K" / "ODIR-5K"
    inner.mkdir(parents=True)
    shutil.move(root / SHEETS[name][0], inner / "data.xlsx")
    shutil.move(root / "ODIR-5K_Training_Dataset", inner / "Training Images")
    (root / "preprocessed_images").mkdir()
    (root / "full_df.csv").write_text("ID\n", encoding="utf-8")
    recipe = get_recipe(name)
    assert recipe.root(tmp_path) == inner and recipe.is_present(tmp_path) and not recipe.missing(tmp_path)
    data = recipe.load(tmp_path)
    assert len(data.records) == len(standin_truth(name, tmp_path)["records"])
    assert all("/Training Images/" in r.image for r in data.records)


@pytest.mark.parametrize("per_class", [2, 5])
def test_every_standin_loads_at_other_sizes_and_seeds(tmp_path, per_class):
    for name in STANDIN_NAMES:
        assert write_standin(name, tmp_path, per_class=per_class, seed=7) == get_recipe(name).root(tmp_path)
        data = get_recipe(name).load(tmp_path, seed=7)
        assert len(data.records) == len(standin_truth(name, tmp_path)["records"])
        assert {"train", "test"} <= {r.split for r in data.records}
        assert "val" in {r.split for r in data.records} or any("too few" in n for n in data.notes)


@pytest.mark.parametrize(
    "main",
    [
        "http://schemas.openxmlformats.org/spreadsheetml/2006/main",  # transitional (what Excel writes)
        "http://purl.oclc.org/ooxml/spreadsheetml/main",  # strict
    ],
)
def test_xlsx_shared_and_rich_strings_as_excel_writes_them(tmp_path, main):
    import zipfile

    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    path = tmp_path / "excel.xlsx"
    with zipfile.ZipFile(path, "w") as book:
        book.writestr(
            "xl/workbook.xml",
            f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId7"/></sheets></workbook>',
        )
        book.writestr(
            "xl/_rels/workbook.xml.rels",
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId7" Type="worksheet" Target="/xl/worksheets/data.xml"/></Relationships>',
        )
        book.writestr(
            "xl/sharedStrings.xml",
            f'<sst xmlns="{main}"><si><t>ID</t></si><si><r><t>Left-</t></r><r><t>Diagnostic Keywords</t></r></si>'
            "<si><t>cataract，lens dust</t></si></sst>",
        )
        book.writestr(
            "xl/worksheets/data.xml",
            f'<worksheet xmlns="{main}"><sheetData>'
            '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="C1" t="s"><v>1</v></c></row>'
            '<row r="3"><c r="A3"><v>12</v></c><c r="B3" t="str"><f>A3*2</f><v>24</v></c>'
            '<c r="C3" t="s"><v>2</v></c><c r="D3"><v>0.5</v></c></row>'
            "</sheetData></worksheet>",
        )
    assert _sheets.read_xlsx(path) == [
        ["ID", "", "Left-Diagnostic Keywords"],
        [],
        ["12", "24", "cataract，lens dust", "0.5"],
    ]


def test_odir200x3_uses_flairs_published_subset_when_it_is_in_the_folder(tmp_path):
    """With FLAIR's `08_ODIR200x3.csv` beside the sheet, exactly its eyes with its labels are used (by base
    name; a listed eye missing from the release and an unknown category are skipped and listed)."""
    root = write_standin("odir200x3", tmp_path, per_class=4)
    drawn = get_recipe("odir200x3").load(tmp_path)
    chosen = sorted(drawn.records, key=lambda r: r.image)[:5]
    wanted = {Path(r.image).name: label for r, label in zip(chosen, ["cataract", "normal", "normal",
              "pathologic myopia", "cataract"], strict=True)}  # fmt: skip
    with open(root / "08_ODIR200x3.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "image", "atributes", "categories"])
        for i, (name, label) in enumerate(wanted.items()):
            writer.writerow([i, f"08_ODIR-5K/preprocessed_images/{name}", "[]", f"['{label}']"])
        writer.writerow([5, "08_ODIR-5K/preprocessed_images/99999_left.jpg", "[]", "['normal']"])
        writer.writerow(
            [6, f"08_ODIR-5K/preprocessed_images/{Path(chosen[0].image).name}", "[]", "['glaucoma']"]
        )
    data = get_recipe("odir200x3").load(tmp_path)
    assert {Path(r.image).name: r.labels[0] for r in data.records} == wanted
    assert all(r.group == Path(r.image).name.split("_")[0] for r in data.records)
    reasons = sorted(s.reason for s in data.skipped)
    assert len(reasons) == 2 and "99999_left.jpg is not in" in reasons[0] and "glaucoma" in reasons[1]
    assert any("08_ODIR200x3.csv" in n for n in data.notes)
