"""The family registry: every built-in entry resolves, the layers read it, each layer's part of a family is
registered in that layer, and a new family is one folder plus one entry — a toy family written here from
scratch (its task file registers its training parts) trains for two steps through the one loop and its `final/`
loads with `AutoModel`."""

import importlib
import json
import sys
import textwrap

import pytest
import torch

from retvlp.families import (
    FamilySpec,
    families,
    family_of_model_type,
    get_family,
    register_family,
    unregister_family,
)
from retvlp.registration import register_auto_classes
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.config import ConfigError
from retvlp.training.family_parts import training_parts, unregister_training

TOY_FILES = {
    "__init__.py": """
        from .configuration_toy import ToyConfig
        from .modeling_toy import ToyModel
    """,
    "configuration_toy.py": """
        from transformers import PretrainedConfig


        class ToyConfig(PretrainedConfig):
            model_type = "retvlp_toy"

            def __init__(self, hidden_size=8, **kwargs):
                self.hidden_size = hidden_size
                super().__init__(**kwargs)
    """,
    "modeling_toy.py": """
        from dataclasses import dataclass

        import torch
        from torch import nn
        from transformers import PreTrainedModel
        from transformers.utils import ModelOutput

        from .configuration_toy import ToyConfig


        @dataclass
        class ToyOutput(ModelOutput):
            loss: torch.Tensor | None = None
            reconstruction: torch.Tensor | None = None


        class ToyModel(PreTrainedModel):
            config_class = ToyConfig
            main_input_name = "pixel_values"

            def __init__(self, config):
                super().__init__(config)
                self.encoder = nn.Conv2d(3, config.hidden_size, 4, stride=4)
                self.decoder = nn.ConvTranspose2d(config.hidden_size, 3, 4, stride=4)
                self.post_init()

            def forward(self, pixel_values, return_loss=True, **kwargs):
                reconstruction = self.decoder(self.encoder(pixel_values))
                loss = nn.functional.mse_loss(reconstruction, pixel_values) if return_loss else None
                return ToyOutput(loss=loss, reconstruction=reconstruction)
    """,
    # The family's task and run-config section may live in its own folder too.
    "task_toy.py": """
        from dataclasses import dataclass
        from typing import ClassVar

        from retvlp.common.image_processing_fundus import FundusImageProcessor
        from retvlp.training.config import FamilySection
        from retvlp.training.family_parts import register_training
        from retvlp.training.ibq_task import ImageStepBatches
        from retvlp.training.task import PretrainTask

        from .configuration_toy import ToyConfig
        from .modeling_toy import ToyModel


        @dataclass
        class ToySection(FamilySection):
            image_batch_size: int = 4

            batch_keys: ClassVar[tuple[str, ...]] = ("image_batch_size",)


        class ToyTask(PretrainTask):
            family = "toy"
            routing = {"paired": "images", "categorical": "images", "unpaired": "images"}
            required_streams = ("images",)
            uses_text = False
            has_image_encoder = False

            def batch_sizes(self, config):
                return {"images": config.family_settings.image_batch_size}

            def build_processor(self, config, tokenizer):
                return FundusImageProcessor(size=config.data.image_size)

            def build_model(self, config, tokenizer):
                return ToyModel(ToyConfig(**(config.model.config or {})))

            def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
                kwargs = self.common_batch_kwargs(processor, config, rank, world_size)
                return ImageStepBatches(streams, self.batch_sizes(config), **kwargs)


        register_training("toy", task=ToyTask, section=ToySection)
    """,
}

TOY_FAMILY = FamilySpec(
    name="toy",
    title="Toy autoencoder",
    model_types=("retvlp_toy",),
    config="toyfam:ToyConfig",
    model="toyfam:ToyModel",
    auto_classes=(("AutoConfig", "config", "config"), ("AutoModel", "config", "model")),
)


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    package = tmp_path / "toy_src" / "toyfam"
    package.mkdir(parents=True)
    for name, text in TOY_FILES.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(package.parent))
    for name in [n for n in sys.modules if n == "toyfam" or n.startswith("toyfam.")]:
        monkeypatch.delitem(sys.modules, name)  # this test's files, imported afresh
    register_family(TOY_FAMILY)
    register_auto_classes()
    try:
        importlib.import_module("toyfam.task_toy")  # the task file registers the training parts
        yield TOY_FAMILY
    finally:
        unregister_training("toy")
        unregister_family("toy")


def toy_run(tmp_path, synthetic) -> dict:
    return {
        "model": {"family": "toy", "config": {"hidden_size": 8}},
        "data": {
            "train": [{"path": str(synthetic.unpaired)}, {"path": str(synthetic.categorical)}],
            "image_size": 32,
            "cache_dir": str(tmp_path / "cache"),
            "num_workers": 0,
            "preprocessing_workers": 1,
        },
        "toy": {"image_batch_size": 4},
        "optim": {"lr": 1e-2, "max_steps": 2, "warmup_steps": 0},
        "run": {
            "output_dir": str(tmp_path / "toy_run"),
            "save_every": 2,
            "log_every": 1,
            "evaluate": False,
            "tensorboard": False,
            "num_threads": 1,
        },
    }


def test_a_toy_family_trains_two_steps_and_loads_with_auto_model(toy_family, tmp_path, synthetic):
    from transformers import AutoModel

    config = PretrainConfig.from_dict(toy_run(tmp_path, synthetic))
    assert type(config.family_settings).__name__ == "ToySection"
    assert config.to_dict()["toy"] == {"image_batch_size": 4}
    result = pretrain(config, show_progress=False)
    assert result.steps == 2
    logs = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2]
    assert all(entry["loss"] > 0 for entry in logs)
    loaded = AutoModel.from_pretrained(result.final_dir)
    assert type(loaded).__name__ == "ToyModel"
    torch.manual_seed(config.run.seed)  # the loop seeds the model's initialisation with run.seed
    initial = toy_family.load("model")(toy_family.load("config")(hidden_size=8))
    assert not torch.equal(loaded.encoder.weight, initial.encoder.weight)  # the two steps changed it


def test_toy_family_section_is_strict_and_typed(toy_family, tmp_path, synthetic):
    raw = toy_run(tmp_path, synthetic)
    raw["toy"]["image_batch_size"] = "four"
    with pytest.raises(ConfigError, match=r"toy\.image_batch_size expects int, got str"):
        PretrainConfig.from_dict(raw)
    raw["toy"] = {"paired_batch_size": 2}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['paired_batch_size'\] in section 'toy'"):
        PretrainConfig.from_dict(raw)


def test_unregistered_family_is_refused_with_the_registered_names(tmp_path, synthetic):
    raw = toy_run(tmp_path, synthetic)
    with pytest.raises(
        ConfigError, match=r"model.family='toy' is not available; choose one of \['ibq-tokenizer'"
    ):
        PretrainConfig.from_dict(raw)


def test_every_builtin_entry_resolves():
    names = [spec.name for spec in families()]
    # the built-in families first, in the name order of their modules (`retvlp/family_specs/`)
    assert names[:4] == ["ibq-tokenizer", "keepfit", "maskedclip", "text-mlm"]
    for spec in families():
        for field in ("config", "model", "pretraining_model", "vision_model", "classifier", "processor"):
            value = getattr(spec, field)
            if value is not None:
                assert spec.load(field) is not None, (spec.name, field)
        parts = training_parts(spec.name)  # registered by the family's task file
        assert parts is not None and parts.task is not None, spec.name
        assert hasattr(parts.section, "batch_keys"), spec.name
        for _, config_field, model_field in spec.auto_classes:
            assert spec.load(config_field) is not None and spec.load(model_field) is not None
        for field, _ in spec.remote_code:
            assert spec.load(field) is not None, (spec.name, field)


def test_model_types_map_to_their_family():
    assert family_of_model_type("maskedclip").name == "maskedclip"
    assert family_of_model_type("maskedclip_vision_model").name == "maskedclip"
    assert family_of_model_type("keepfit").name == "keepfit"
    assert family_of_model_type("ibq_tokenizer").name == "ibq-tokenizer"
    assert family_of_model_type("vit") is None
    assert family_of_model_type("maskedclipper") is None


def test_the_auto_classes_follow_the_registry():
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    for spec in families():
        for auto_name, config_field, _ in spec.auto_classes:
            config_class = spec.load(config_field)
            if auto_name == "AutoConfig":
                assert type(AutoConfig.for_model(config_class.model_type)) is config_class
    maskedclip, keepfit = get_family("maskedclip"), get_family("keepfit")
    mapping = AutoModelForImageClassification._model_mapping
    assert mapping[keepfit.load("config")] is keepfit.load("classifier")
    assert mapping[maskedclip.load("vision_config")] is maskedclip.load("classifier")
    assert PROCESSOR_MAPPING[keepfit.load("config")] is keepfit.load("processor")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("maskedclip"))
    with pytest.raises(ValueError, match="'nope' is not registered; registered families"):
        get_family("nope")


def test_each_layer_registers_its_part_of_the_builtin_families():
    from retvlp.model_card.architecture import card_families, card_parts
    from retvlp.training.config import family_section_class
    from retvlp.training.keepfit_task import KEEPFIT_ROUTING, KeepFitSection, KeepFitTask
    from retvlp.training.maskedclip_task import MASKEDCLIP_ROUTING, MaskedCLIPSection, MaskedCLIPTask

    assert (
        training_parts("maskedclip").task is MaskedCLIPTask and MaskedCLIPTask.routing is MASKEDCLIP_ROUTING
    )
    assert training_parts("keepfit").task is KeepFitTask and KeepFitTask.routing is KEEPFIT_ROUTING
    assert family_section_class("maskedclip") is MaskedCLIPSection
    assert family_section_class("keepfit") is KeepFitSection
    assert card_families() == ("keepfit", "maskedclip")
    assert card_parts("keepfit").template == "keepfit.md"
    with pytest.raises(ValueError, match="has no model card template"):
        card_parts("ibq-tokenizer")
