"""A built-in family is found by its files, never listed: its model facts in `retvlp/family_specs/<name>.py`, its
task in `retvlp/training/<name>_task.py`, its card in `retvlp/model_card/families/<name>.py`, and the Auto-class
registration is triggered by the packages its spec names (docs/architecture.md, "Adding a family").

The last test proves it on a copy of the package: a new family added there as files only (no shared file
edited) is registered, trained by its task, carded, and registered with transformers' Auto classes."""

import json
import os
import pkgutil
import shutil
import sys
import textwrap
from pathlib import Path

import prewarmed

import retvlp.family_specs
import retvlp.model_card.families
import retvlp.training
from retvlp.families import families, family_names, get_family
from retvlp.model_card.architecture import card_families, card_parts
from retvlp.registration import AUTO_API, registration_triggers
from retvlp.training.family_parts import training_parts

PACKAGE = Path(retvlp.family_specs.__file__).resolve().parents[1]


def module_names(package) -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def expected_builtins() -> list[str]:
    """One module per built-in family, named after it (`-` written `_`)."""
    return [name.replace("_", "-") for name in module_names(retvlp.family_specs)]


def test_the_builtin_families_are_the_modules_of_family_specs():
    # the built-in families come first, in the name order of their modules
    expected = expected_builtins()
    assert expected == ["ibq-tokenizer", "keepfit", "maskedclip", "text-mlm"]
    assert list(family_names()[: len(expected)]) == expected


def test_the_registration_triggers_are_derived_from_the_families():
    triggers = registration_triggers()
    assert triggers[0] == AUTO_API
    for spec in families():
        assert set(spec.modules()) <= set(triggers), spec.name
    # what the hand-written list used to hold
    assert {"retvlp.maskedclip", "retvlp.keepfit", "retvlp.ibq"} <= set(triggers)
    assert get_family("text-mlm").modules() == ()  # no retvlp model class: nothing to trigger


def test_every_task_module_registers_the_training_parts_of_a_family():
    tasks = [name for name in module_names(retvlp.training) if name.endswith("_task")]
    assert tasks == ["ibq_task", "keepfit_task", "maskedclip_task", "text_mlm_task"]
    registered = {
        training_parts(name).task.__module__: name
        for name in family_names()
        if training_parts(name) is not None
    }
    for task in tasks:
        assert f"retvlp.training.{task}" in registered, task
    assert set(registered.values()) >= set(expected_builtins())


def test_every_family_with_a_card_template_has_its_card_module():
    templates = {path.stem for path in (PACKAGE / "model_cards").glob("*.md")}
    with_template = sorted(templates & set(family_names()))
    assert with_template == ["keepfit", "maskedclip"]
    assert module_names(retvlp.model_card.families) == with_template
    assert set(with_template) <= set(card_families())
    for family in with_template:
        parts = card_parts(family)
        assert parts.template == f"{family}.md" and (PACKAGE / "model_cards" / parts.citation).is_file()
        assert parts.architecture.__module__ == f"retvlp.model_card.families.{family}"


# --------------------------------------------------------------------------- a new family, files only
NEW_FILES = {
    # the family folder
    "toyfam/__init__.py": """
        from torch import nn
        from transformers import PretrainedConfig, PreTrainedModel


        class ToyFamConfig(PretrainedConfig):
            model_type = "retvlp_toyfam"


        class ToyFamModel(PreTrainedModel):
            config_class = ToyFamConfig

            def __init__(self, config):
                super().__init__(config)
                self.layer = nn.Linear(2, 2)
                self.post_init()
    """,
    # the model facts
    "family_specs/toyfam.py": """
        from ..families import FamilySpec, register_family

        register_family(
            FamilySpec(
                name="toyfam",
                title="Toy family",
                model_types=("retvlp_toyfam",),
                config="retvlp.toyfam:ToyFamConfig",
                model="retvlp.toyfam:ToyFamModel",
                auto_classes=(("AutoConfig", "config", "config"), ("AutoModel", "config", "model")),
            )
        )
    """,
    # the training parts
    "training/toyfam_task.py": """
        from .family_parts import register_training
        from .task import PretrainTask


        class ToyFamTask(PretrainTask):
            family = "toyfam"


        register_training("toyfam", task=ToyFamTask)
    """,
    # the card
    "model_card/families/toyfam.py": """
        from ..architecture import register_card

        register_card(
            "toyfam",
            template="toyfam.md",
            citation="toyfam.bib",
            prompt="a fundus photograph of {}",
            architecture=lambda config: [("Encoder", "a linear layer")],
        )
    """,
}

PROBE = """
    import json, sys
    import retvlp

    after_import = sorted(
        m for m in ("transformers", "retvlp.toyfam", "retvlp.maskedclip", "retvlp.training", "retvlp.model_card")
        if m in sys.modules
    )
    from retvlp.families import family_names
    from retvlp.registration import registration_triggers
    from retvlp.model_card.architecture import card_families
    from retvlp.training.family_parts import training_parts

    task = training_parts("toyfam").task  # imports every task module, and so our model families
    from transformers import AutoConfig, AutoModel
    from retvlp.toyfam import ToyFamConfig, ToyFamModel

    print(json.dumps({
        "after_import": after_import,
        "families": list(family_names()),
        "triggers": list(registration_triggers()),
        "task": task.__name__,
        "cards": list(card_families()),
        "auto_config": type(AutoConfig.for_model("retvlp_toyfam")) is ToyFamConfig,
        "auto_model": AutoModel._model_mapping[ToyFamConfig] is ToyFamModel,
    }))
"""


def test_a_new_family_is_added_by_adding_files_only(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "retvlp", ignore=shutil.ignore_patterns("__pycache__"))
    before = {p: p.read_bytes() for p in (source / "retvlp").rglob("*.py")}
    for relative, text in NEW_FILES.items():
        path = source / "retvlp" / relative
        assert not path.exists(), relative  # added, never edited
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    assert all(path.read_bytes() == data for path, data in before.items())

    environment = {
        **os.environ,
        "PYTHONPATH": str(source),
        "HF_HUB_OFFLINE": "1",
        "RETVLP_MALLOC_TUNED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # Forked from the pre-warmed server (tests/prewarmed.py): torch is already imported there, so whether
    # `import retvlp` loads torch is test_import_footprint's question (a bare interpreter); here, whether it
    # loads a family — the new one included — or transformers.
    done = prewarmed.run([sys.executable, "-c", textwrap.dedent(PROBE)], env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["after_import"] == []  # `import retvlp` still loads no family and no transformers
    assert found["families"] == ["ibq-tokenizer", "keepfit", "maskedclip", "text-mlm", "toyfam"]
    assert "retvlp.toyfam" in found["triggers"]
    assert found["task"] == "ToyFamTask"
    assert found["cards"] == ["keepfit", "maskedclip", "toyfam"]
    assert found["auto_config"] and found["auto_model"]
