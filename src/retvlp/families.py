"""The family registry: the model facts of each model family, read by every layer that used to branch on a
family name.

An entry holds the family's name (the `model.family` value of run configs), title, `model_types`, its classes
(config, released model, `...ForPreTraining`, vision model, classifier, processor), the LoRA defaults, the
Auto-class registrations and the remote-code export marks. Classes are named by ``"module:attribute"`` strings
into the family's own folder (`retvlp.maskedclip`, ...), a module of this layer, resolved on use
(`FamilySpec.load`) so that reading the registry imports no model code; objects may be given instead (a
test's toy family does that). No entry names anything of a higher layer: each higher layer registers its own
part of a family where that part lives, looked up by the family name:

- training: the pretraining task and its run-config section, registered by the task file
  (`retvlp.training.family_parts.register_training`, e.g. at the end of `training/maskedclip_task.py`);
- cards: the template, citation, prompt and architecture rows (`retvlp.model_card.architecture.register_card`).

Who reads this registry:

- `retvlp.registration`: the Auto-class registrations and the remote-code export marks (`auto_classes`,
  `remote_code`);
- `retvlp.training.config`: the accepted `model.family` values;
- `training/pretrain.py`: the loader hint printed with `final/`;
- `retvlp.evaluation.finetune`: the classifier class, the LoRA defaults and the head modules;
- `retvlp.lora`: the LoRA towers (`lora_targets`, `check_lora_targets`);
- `retvlp.evaluation.features`, `retvlp.export`: whether a model is one of our dual encoders (`model_types`);
- cards and the push: the title and the released / classifier class.

Adding a family: docs/architecture.md, "Adding a family".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class LoraTower:
    """One tower of a family's models for LoRA (`retvlp.lora_targets`): the module holding it in the released
    model and the classifier (`"vision_model"`), and a regex over module names, relative to that model, of the
    layers LoRA adapts in it."""

    module: str
    targets: str


@dataclass(frozen=True)
class LoraDefaults:
    """What LoRA adapts in the family's classifier and which modules are trained fully (PEFT names), and, for
    `retvlp.lora_targets`, the family's towers (`"vision"`, `"text"`, and `"bridge"` where the family has one)."""

    target_modules: str  # regex over module names (PEFT `target_modules` as a string)
    modules_to_save: tuple[str, ...] = ("classifier",)
    towers: Mapping[str, LoraTower] = field(default_factory=dict)


# The attention projections of the towers (query, key, value, output), PEFT names relative to the model. A ViT
# block of ours names them q/k/v/o_proj, and so does the MaskedCLIP bridge: the towers' regexes start at the
# tower's module so that neither picks up the other.
_VIT_ATTENTION = r"vision_model\.layers\.\d+\.attention\.(?:q_proj|k_proj|v_proj|o_proj)"
_BRIDGE_ATTENTION = r"bridge\.layers\.\d+\.attention\.(?:q_proj|k_proj|v_proj|o_proj)"
_BERT_ATTENTION = r"text_model\.encoder\.layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)"
# The ResNet (transformers' module layout): the convolutions inside each residual block (a bottleneck's
# 1x1-3x3-1x1, a basic block's two 3x3), not the stem or the shortcut projections.
_RESNET_BLOCKS = r"vision_model\.encoder\.stages\.\d+\.layers\.\d+\.layer\.\d+\.convolution"


@dataclass(frozen=True)
class FamilySpec:
    """One model family.

    `name` is the `model.family` value of run configs. `model_types` are the `config.model_type` values its
    checkpoints carry (the first is the main config's). Class fields hold ``"module:attribute"`` strings
    (or the objects); None where the family has no such class (the IBQ tokenizer has no classifier, the text
    MLM no retvlp model class at all).
    """

    name: str
    title: str  # how cards and messages name it
    model_types: tuple[str, ...] = ()
    config: Any = None
    model: Any = None  # the released model (AutoModel)
    pretraining_model: Any = None  # `...ForPreTraining`
    vision_model: Any = None
    classifier: Any = None  # `...ForImageClassification`
    processor: Any = None
    lora: LoraDefaults | None = None
    # The final model's loader hint printed at the end of a run.
    loader_hint: str = "AutoModel / AutoProcessor.from_pretrained load it"
    # (Auto class name in transformers, config field, model field): `AutoModel.register(config, model)`.
    auto_classes: tuple[tuple[str, str, str], ...] = ()
    # (field, Auto class name or None for a config): classes whose code `save_pretrained` exports.
    remote_code: tuple[tuple[str, str | None], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def load(self, attribute: str) -> Any:
        """The object a field (or an `extra` key) names, importing its module; None when the family has none."""
        names = {f.name for f in fields(self)}
        value = getattr(self, attribute) if attribute in names else self.extra.get(attribute)
        if not isinstance(value, str):
            return value
        module_name, _, name = value.partition(":")
        if not name:
            raise ValueError(f"family {self.name!r}: {attribute}={value!r} is not 'module:attribute'.")
        return getattr(importlib.import_module(module_name), name)

    def owns_model_type(self, model_type: str) -> bool:
        return any(str(model_type) == t or str(model_type).startswith(t + "_") for t in self.model_types)


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec, *, exist_ok: bool = False) -> FamilySpec:
    """Add a family; a second registration of a name is an error unless `exist_ok`."""
    if spec.name in _FAMILIES and not exist_ok:
        raise ValueError(f"model family {spec.name!r} is already registered.")
    _FAMILIES[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def families() -> tuple[FamilySpec, ...]:
    return tuple(_FAMILIES.values())


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get_family(name: str) -> FamilySpec:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"model family {name!r} is not registered; registered families: {list(_FAMILIES)}."
        ) from None


def family_of_model_type(model_type: str) -> FamilySpec | None:
    """The family whose checkpoints carry `model_type` (e.g. "maskedclip_vision_model" → MaskedCLIP)."""
    return next((spec for spec in _FAMILIES.values() if spec.owns_model_type(model_type)), None)


# --------------------------------------------------------------------------- the built-in families
register_family(
    FamilySpec(
        name="maskedclip",
        title="MaskedCLIP",
        model_types=("maskedclip", "maskedclip_vision_model"),
        config="retvlp.maskedclip:MaskedCLIPConfig",
        model="retvlp.maskedclip:MaskedCLIPModel",
        pretraining_model="retvlp.maskedclip:MaskedCLIPForPreTraining",
        vision_model="retvlp.maskedclip:MaskedCLIPVisionModel",
        classifier="retvlp.maskedclip:MaskedCLIPForImageClassification",
        processor="retvlp.maskedclip:MaskedCLIPProcessor",
        lora=LoraDefaults(
            target_modules=r".*vision_model\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj|o_proj)",
            modules_to_save=("classifier", "fc_norm"),
            towers={
                "vision": LoraTower("vision_model", _VIT_ATTENTION),
                "text": LoraTower("text_model", _BERT_ATTENTION),
                "bridge": LoraTower("bridge", _BRIDGE_ATTENTION),
            },
        ),
        auto_classes=(
            ("AutoConfig", "config", "config"),
            ("AutoConfig", "vision_config", "vision_config"),
            ("AutoModel", "config", "model"),
            ("AutoModel", "vision_config", "vision_model"),
            ("AutoModelForPreTraining", "config", "pretraining_model"),
            ("AutoModelForZeroShotImageClassification", "config", "model"),
            ("AutoModelForImageClassification", "vision_config", "classifier"),
            # A MaskedCLIP checkpoint's config is the dual-encoder one; the loader class declares it and builds
            # the classifier from its vision part (also what its remote-code auto_map names).
            ("AutoModelForImageClassification", "config", "classifier_loader"),
            ("AutoProcessor", "config", "processor"),
        ),
        remote_code=(
            ("config", None),
            ("vision_config", None),
            ("model", "AutoModel"),
            ("pretraining_model", "AutoModelForPreTraining"),
            ("vision_model", "AutoModel"),
            ("classifier", "AutoModelForImageClassification"),
            ("image_processor", "AutoImageProcessor"),
            ("processor", "AutoProcessor"),
        ),
        extra={
            "vision_config": "retvlp.maskedclip:MaskedCLIPVisionConfig",
            "classifier_loader": "retvlp.maskedclip:MaskedCLIPImageClassificationLoader",
            "image_processor": "retvlp.maskedclip:FundusImageProcessor",
            "image_processor_configs": ("config", "vision_config"),
            "classifier_settings": ("drop_path_rate",),  # FinetuneSettings fields the classifier takes
        },
    )
)
register_family(
    FamilySpec(
        name="keepfit",
        title="KeepFIT V2",
        model_types=("keepfit",),
        config="retvlp.keepfit:KeepFitConfig",
        model="retvlp.keepfit:KeepFitModel",
        pretraining_model="retvlp.keepfit:KeepFitForPreTraining",
        vision_model="retvlp.keepfit:KeepFitVisionModel",
        classifier="retvlp.keepfit:KeepFitForImageClassification",
        processor="retvlp.keepfit:KeepFitProcessor",
        lora=LoraDefaults(
            target_modules=r".*vision_model\.encoder\.stages\.\d+\.layers\.\d+\.layer\.\d+\.convolution",
            towers={
                "vision": LoraTower("vision_model", _RESNET_BLOCKS),
                "text": LoraTower("text_model", _BERT_ATTENTION),
            },
        ),
        auto_classes=(
            ("AutoConfig", "config", "config"),
            ("AutoModel", "config", "model"),
            ("AutoModelForPreTraining", "config", "pretraining_model"),
            ("AutoModelForZeroShotImageClassification", "config", "model"),
            ("AutoModelForImageClassification", "config", "classifier"),
            ("AutoProcessor", "config", "processor"),
        ),
        remote_code=(
            ("config", None),
            ("model", "AutoModel"),
            ("pretraining_model", "AutoModelForPreTraining"),
            # A fine-tuned classifier saved with save_pretrained carries its code too.
            ("classifier", "AutoModelForImageClassification"),
            ("processor", "AutoProcessor"),
        ),
        extra={
            "image_processor": "retvlp.keepfit.image_processing_fundus:FundusImageProcessor",
            "image_processor_configs": ("config",),
        },
    )
)
register_family(
    FamilySpec(
        name="ibq-tokenizer",
        title="IBQ visual tokenizer",
        model_types=("ibq_tokenizer",),
        config="retvlp.ibq:IBQTokenizerConfig",
        model="retvlp.ibq:IBQTokenizerModel",
        loader_hint="AutoModel.from_pretrained loads it; use it as KeepFIT's ibq_tokenizer_path",
        auto_classes=(("AutoConfig", "config", "config"), ("AutoModel", "config", "model")),
        remote_code=(("config", None), ("model", "AutoModel")),
    )
)
register_family(
    FamilySpec(
        name="text-mlm",
        title="BERT masked-language-model text pretraining",
        loader_hint=(
            "BertModel / BertForMaskedLM.from_pretrained loads it; use it as the model.text_pretrained of a "
            "KeepFIT or MaskedCLIP run"
        ),
    )
)


__all__ = [
    "FamilySpec",
    "LoraDefaults",
    "LoraTower",
    "families",
    "family_names",
    "family_of_model_type",
    "get_family",
    "register_family",
    "unregister_family",
]
