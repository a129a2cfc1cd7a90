"""Shared code as checked copies: `src/retvlp/common/` holds the single sources, each family folder a generated
copy of every shared file it imports; `utils/check_copies.py` finds drifted, missing, extra and symlinked
copies; inside the installed package there is one module (and one class object) per shared name."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "retvlp"


def _load_check_copies():
    spec = importlib.util.spec_from_file_location("check_copies", REPO / "utils" / "check_copies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


check_copies = _load_check_copies()

EXPECTED_COPIES = {
    "maskedclip": {
        "configuration_support",
        "contrastive",
        "image_processing_fundus",
        "modeling_common",
        "modeling_support",
        "processing_fundus",
        "vit_blocks",
    },
    "keepfit": {
        "configuration_support",
        "contrastive",
        "image_processing_fundus",
        "modeling_common",
        "modeling_support",
        "processing_fundus",
        "quantization_ibq",
        "resnet_blocks",
    },
    "ibq": {"modeling_support", "quantization_ibq"},
}


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of src/retvlp to break."""
    target = tmp_path / "src" / "retvlp"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    return target


def test_the_repository_copies_are_up_to_date():
    assert check_copies.check_copies(PACKAGE) == []
    result = subprocess.run(
        [sys.executable, str(REPO / "utils" / "check_copies.py")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_each_family_holds_the_copies_its_modules_import():
    needed = {
        folder.name: check_copies.needed_copies(PACKAGE, folder)
        for folder in check_copies.family_dirs(PACKAGE)
        if check_copies.needed_copies(PACKAGE, folder)
    }
    assert needed == EXPECTED_COPIES
    for family, names in EXPECTED_COPIES.items():
        for name in names:
            path = PACKAGE / family / f"{name}.py"
            text = path.read_text(encoding="utf-8")
            assert text.startswith(f"# Generated from src/retvlp/common/{name}.py by utils/check_copies.py")
            assert "python utils/check_copies.py --fix" in text.splitlines()[1]
            assert text.endswith((PACKAGE / "common" / f"{name}.py").read_text(encoding="utf-8"))


def test_no_symlinks_anywhere_under_the_package():
    links = [os.path.join(root, name) for root, dirs, files in os.walk(PACKAGE) for name in dirs + files]
    assert [path for path in links if os.path.islink(path)] == []


def test_shared_sources_import_only_each_other_and_third_party_libraries():
    shared = check_copies.shared_names(PACKAGE)
    for name in shared:
        path = PACKAGE / "common" / f"{name}.py"
        assert check_copies.flat_imports(path) <= shared, name
        assert "retvlp" not in {
            line.split()[1].split(".")[0]
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith(("import ", "from ")) and not line.startswith("from .")
        }, name


def test_a_drifted_copy_is_named_with_a_diff(tree, capsys):
    copy = tree / "keepfit" / "image_processing_fundus.py"
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("DEFAULT_MIN_SIZE = 32", "DEFAULT_MIN_SIZE = 16")
    )
    problems = check_copies.check_copies(tree)
    assert [(p.path, p.kind) for p in problems] == [(copy, "drifted")]
    assert "-DEFAULT_MIN_SIZE = 32" in problems[0].detail and "+DEFAULT_MIN_SIZE = 16" in problems[0].detail
    assert check_copies.main(["--package-dir", str(tree)]) == 1
    err = capsys.readouterr().err
    assert "retvlp/keepfit/image_processing_fundus.py: drifted" in err and "--fix" in err
    # --fix regenerates it
    assert check_copies.main(["--package-dir", str(tree), "--fix"]) == 0
    assert check_copies.check_copies(tree) == []
    assert "DEFAULT_MIN_SIZE = 32" in copy.read_text(encoding="utf-8")


def test_an_edited_source_leaves_every_copy_drifted(tree):
    source = tree / "common" / "contrastive.py"
    source.write_text(source.read_text(encoding="utf-8") + "\n# a new line\n")
    drifted = {
        (p.path.parent.name, p.path.name) for p in check_copies.check_copies(tree) if p.kind == "drifted"
    }
    assert drifted == {("maskedclip", "contrastive.py"), ("keepfit", "contrastive.py")}


def test_missing_extra_and_symlinked_copies_are_named(tree):
    (tree / "ibq" / "quantization_ibq.py").unlink()
    extra = tree / "ibq" / "contrastive.py"  # a generated copy nothing in ibq/ imports
    extra.write_text(check_copies.expected_copy(tree, "contrastive"), encoding="utf-8")
    link = tree / "maskedclip" / "modeling_common.py"
    link.unlink()
    link.symlink_to(tree / "common" / "modeling_common.py")
    problems = {(p.path.relative_to(tree).as_posix(), p.kind) for p in check_copies.check_copies(tree)}
    assert problems == {
        ("ibq/quantization_ibq.py", "missing"),
        ("ibq/contrastive.py", "extra"),
        ("maskedclip/modeling_common.py", "symlink"),
    }
    check_copies.fix_copies(tree)
    assert check_copies.check_copies(tree) == []
    assert not extra.exists() and not link.is_symlink() and link.is_file()


def test_a_family_import_of_a_shared_name_requires_its_copy(tree):
    loss = tree / "ibq" / "modeling_ibq.py"
    loss.write_text("from .contrastive import gather_with_grad\n" + loss.read_text(encoding="utf-8"))
    problems = [(p.path.relative_to(tree).as_posix(), p.kind) for p in check_copies.check_copies(tree)]
    assert problems == [("ibq/contrastive.py", "missing")]


def test_one_module_and_one_class_object_per_shared_name():
    import retvlp.common
    import retvlp.ibq
    import retvlp.keepfit
    import retvlp.maskedclip

    for family, names in EXPECTED_COPIES.items():
        package = sys.modules[f"retvlp.{family}"]
        for name in names:
            shared = getattr(retvlp.common, name)
            assert sys.modules[f"retvlp.{family}.{name}"] is shared, (family, name)
            assert getattr(package, name) is shared, (family, name)
            assert importlib.import_module(f"retvlp.{family}.{name}") is shared
    assert retvlp.keepfit.FundusImageProcessor is retvlp.maskedclip.FundusImageProcessor
    assert retvlp.FundusImageProcessor is retvlp.common.image_processing_fundus.FundusImageProcessor
    from retvlp.keepfit.modeling_keepfit import ibq_quantize
    from retvlp.keepfit.processing_keepfit import KeepFitProcessor
    from retvlp.maskedclip.loss_maskedclip import label_guided_contrastive_loss

    assert ibq_quantize is retvlp.ibq.ibq_quantize is retvlp.common.quantization_ibq.ibq_quantize
    assert label_guided_contrastive_loss is retvlp.common.contrastive.label_guided_contrastive_loss
    base = retvlp.common.processing_fundus.FundusVisionTextProcessor
    assert issubclass(KeepFitProcessor, base) and issubclass(retvlp.maskedclip.MaskedCLIPProcessor, base)
