"""The code that travels with every checkpoint imports only transformers' public API, never its model internals.

A checkpoint carries its own code (`trust_remote_code`) and is loaded with whatever transformers release the user
has, a year from now too; transformers' private classes and modules change between minor releases (5.25 changed
`ResNetConvLayer`; `SubConfigSpec` did not exist before 5.20). So every file a checkpoint ships — each family
folder's modules and the generated copies of `common/` — may import only:

- the standard library, torch, numpy, Pillow (`PIL`, the image processor) and safetensors;
- huggingface_hub: its top-level names, `huggingface_hub.dataclasses` (`strict`, the validation transformers'
  configs are built on) and `huggingface_hub.errors` (the documented exception classes);
- transformers' top-level names (`from transformers import X`: the package's exported API — `PreTrainedModel`,
  `PreTrainedConfig`, `AutoConfig`, `BertModel`-level models and their configs, `AttentionInterface`,
  `GradientCheckpointingLayer`, the processing base classes), and three documented modules without a top-level
  equivalent:
    * `transformers.modeling_outputs` — the output classes, documented as `transformers.modeling_outputs.*`
      ("Model outputs" in transformers' docs);
    * `transformers.utils.ModelOutput` (that name only) — the output base class, documented under that path;
    * `transformers.initialization` — the weight-init helpers transformers' docs and model linter (TRF062) require
      in `_init_weights`: unlike `torch.nn.init` they skip a tensor already loaded from a checkpoint;
- its own siblings, with a flat relative import (`from .x import y`) of a file that ships next to it.

Everything else — `transformers.models.*`, `transformers.configuration_utils`, `transformers.modeling_utils`,
`transformers.modeling_layers`, `transformers.image_processing_utils`, `transformers.utils.generic`,
`transformers.activations`, other `transformers.utils` names, retvlp itself — fails the test, which names the file,
the line and the import. Imports are read with `ast` (those inside functions and under `TYPE_CHECKING` too).
What ships is both read from the source folders and checked on the files `save_pretrained` actually writes for
every artifact kind.
"""

import ast
import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import transformers

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "retvlp"
FAMILIES = ("maskedclip", "keepfit", "ibq")
# In a family folder but never saved with a checkpoint: the package plumbing and the weight converters
# (`test_model_split.py::test_checkpoints_carry_exactly_the_code_they_import` pins what a checkpoint carries, and
# `test_saved_files_are_the_checked_ones` below requires every saved file to be among the checked ones).
NOT_SHIPPED = {"__init__.py", "convert_retfound.py", "convert_flair.py"}

THIRD_PARTY = {"torch", "numpy", "PIL", "safetensors"}
HUB_MODULES = {"huggingface_hub", "huggingface_hub.dataclasses", "huggingface_hub.errors"}
TRANSFORMERS_MODULES = {"transformers.modeling_outputs", "transformers.initialization"}
TRANSFORMERS_NAMES = {"transformers.utils": {"ModelOutput"}}


@functools.cache
def _top_level_names() -> frozenset[str]:
    return frozenset(dir(transformers))


@functools.cache
def _is_transformers_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"transformers.{name}") is not None
    except (ImportError, ValueError):
        return False


def transformers_import_problem(module: str, names: list[str]) -> str | None:
    """Why `from module import names` (or `import module` with `names` empty) breaks the rule, or None."""
    if module == "transformers":
        bad = []
        for name in names:
            if _is_transformers_submodule(name):  # `from transformers import initialization`: a module import
                if f"transformers.{name}" not in TRANSFORMERS_MODULES:
                    bad.append(f"the module transformers.{name}")
            elif name not in _top_level_names():
                bad.append(f"{name} (not a top-level name of transformers)")
        return ", ".join(bad) or None
    if module in TRANSFORMERS_MODULES:
        return None
    if module in TRANSFORMERS_NAMES:
        extra = sorted(set(names) - TRANSFORMERS_NAMES[module]) if names else ["the module itself"]
        return f"{module} beyond {sorted(TRANSFORMERS_NAMES[module])}: {extra}" if extra else None
    return f"{module} is not transformers' public API"


def import_problems(path: Path, siblings: set[str]) -> list[str]:
    """Every import of `path` that breaks the rule, as `file:line: reason`."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            imports = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = node.module or ""
                targets = [module.split(".")[0]] if module else [alias.name for alias in node.names]
                for target in targets:
                    if node.level != 1 or "." in module or target not in siblings:
                        problems.append(
                            f"{path.name}:{node.lineno}: relative import {'.' * node.level}{module} is not a "
                            "sibling file that ships with it"
                        )
                continue
            imports = [(node.module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in imports:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in THIRD_PARTY or top == "__future__":
                continue
            if top == "huggingface_hub":
                if module not in HUB_MODULES:
                    problems.append(
                        f"{path.name}:{node.lineno}: {module} is not a documented huggingface_hub module"
                    )
                continue
            if top == "transformers":
                reason = transformers_import_problem(module, names)
                if reason:
                    problems.append(f"{path.name}:{node.lineno}: {reason}")
                continue
            problems.append(
                f"{path.name}:{node.lineno}: imports {module}, which a checkpoint's environment lacks"
            )
    return problems


def shipped_source_files() -> dict[str, list[Path]]:
    """Family → the files of its folder that can ship with its checkpoints (its modules and the common copies)."""
    return {
        family: sorted(p for p in (PACKAGE / family).glob("*.py") if p.name not in NOT_SHIPPED)
        for family in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_source_files_import_only_public_api(family):
    files = shipped_source_files()[family]
    assert any(p.name.startswith("modeling_") for p in files)
    siblings = {p.stem for p in files}
    problems = [problem for path in files for problem in import_problems(path, siblings)]
    assert not problems, "\n".join(problems)


def test_the_shared_sources_import_only_public_api():
    """The single sources in common/ (what the copies are generated from) obey the rule too."""
    files = sorted(p for p in (PACKAGE / "common").glob("*.py") if p.name != "__init__.py")
    siblings = {p.stem for p in files}
    problems = [problem for path in files for problem in import_problems(path, siblings)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source, reason",
    [
        (
            "from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer",
            "not transformers' public API",
        ),
        ("from transformers.configuration_utils import SubConfigSpec", "not transformers' public API"),
        (
            "from transformers.modeling_layers import GradientCheckpointingLayer",
            "not transformers' public API",
        ),
        ("from transformers.utils.generic import can_return_tuple", "not transformers' public API"),
        ("from transformers.utils import cached_file", "transformers.utils beyond ['ModelOutput']"),
        ("import transformers.modeling_utils", "not transformers' public API"),
        ("from transformers import models", "the module transformers.models"),
        ("from transformers import configuration_utils", "the module transformers.configuration_utils"),
        ("from transformers import NoSuchThing", "not a top-level name"),
        ("def f():\n    from transformers.activations import ACT2FN", "not transformers' public API"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from retvlp import X", "imports retvlp"),
        ("from huggingface_hub.utils._http import x", "not a documented huggingface_hub module"),
        ("from ..common import contrastive", "not a sibling file"),
        ("from .missing import x", "not a sibling file"),
    ],
)
def test_the_rule_names_each_forbidden_import(tmp_path, source, reason):
    path = tmp_path / "modeling_toy.py"
    path.write_text(source + "\n")
    problems = import_problems(path, {"modeling_toy", "contrastive"})
    assert len(problems) == 1 and reason in problems[0] and problems[0].startswith("modeling_toy.py:"), (
        problems
    )


def test_the_rule_accepts_the_public_api(tmp_path):
    path = tmp_path / "modeling_toy.py"
    path.write_text(
        "import math\nimport torch.nn.functional as F\nimport numpy as np\nimport PIL.Image\n"
        "from safetensors.torch import load_file\nfrom huggingface_hub import hf_hub_download\n"
        "from huggingface_hub.dataclasses import strict\nfrom huggingface_hub.errors import EntryNotFoundError\n"
        "from transformers import AutoConfig, BertModel, PreTrainedModel, AttentionInterface\n"
        "from transformers import initialization as init\nimport transformers.initialization\n"
        "from transformers.modeling_outputs import BaseModelOutput\nfrom transformers.utils import ModelOutput\n"
        "from .contrastive import x\nfrom . import contrastive\n"
    )
    assert import_problems(path, {"modeling_toy", "contrastive"}) == []


@pytest.fixture(scope="module")
def saved_artifacts(tmp_path_factory):
    from checkpoint_artifacts import save_artifacts

    root = tmp_path_factory.mktemp("artifacts")
    return root, save_artifacts(root)


def test_saved_files_import_only_public_api(saved_artifacts):
    """What `save_pretrained` writes for every artifact kind (models, pretraining checkpoints, classifiers, the
    IBQ tokenizer, processors): each code file obeys the rule, its relative imports ship with it."""
    root, spec = saved_artifacts
    folders = {Path(entry["directory"]) for entry in spec.values()}
    checked = 0
    for folder in sorted(folders):
        files = sorted(folder.glob("*.py"))
        assert files, f"{folder.name} carries no code"
        siblings = {p.stem for p in files}
        problems = [
            f"{folder.name}/{problem}" for path in files for problem in import_problems(path, siblings)
        ]
        assert not problems, "\n".join(problems)
        checked += len(files)
    assert checked >= 30


def test_saved_files_are_the_checked_ones(saved_artifacts):
    """Every file a checkpoint carries is one the two source tests above read, with the same text: a family
    folder's module or generated copy, or a single source of `common/` (an image processor bound to the shared
    module is saved from `common/`). A converter or any other module riding along would fail here."""
    root, spec = saved_artifacts
    checked = [p for files in shipped_source_files().values() for p in files]
    checked += [p for p in (PACKAGE / "common").glob("*.py") if p.name != "__init__.py"]
    for entry in spec.values():
        for path in Path(entry["directory"]).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert any(p.name == path.name and p.read_text(encoding="utf-8") == text for p in checked), (
                f"{path} is none of the checked files of {FAMILIES} or common/ (or differs from them)"
            )
