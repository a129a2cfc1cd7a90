"""The family registry: the model facts of each model family, read by every layer that used to branch on a
family name.

An entry holds the family's name (the `model.family` value of run configs), title, `model_types`, its classes
(config, released model, `...ForPreTraining`, vision model, classifier, processor), the LoRA defaults, the
Auto-class registrations and the remote-code export marks. Classes are named by ``"module:attribute"`` strings
into the family's own folder (`retvlp.maskedclip`, ...), a module of this layer, resolved on use
(`FamilySpec.load`) so that reading the registry imports no model code; objects may be given instead (a
test's toy family does that).

The built-in entries are found, not listed: each lives in its own module of `retvlp.family_specs`
(`family_specs/maskedclip.py`, ...), which calls `register_family`; the first read of the registry imports
every module of that package (`pkgutil.iter_modules`, once). A family defined outside the package calls
`register_family` from its own code.

No entry names anything of a higher layer: each higher layer registers its own part of a family where that
part lives, looked up by the family name, and finds its built-in parts the same way, by a file-name
convention:

- training: the pretraining task and its run-config section, registered by the task file
  (`retvlp.training.family_parts.register_training`, e.g. at the end of `training/maskedclip_task.py`; every
  `training/*_task.py` module is imported on the first look-up);
- cards: the template, citation, prompt and architecture rows (`retvlp.model_card.architecture.register_card`,
  called by `model_card/families/<name>.py`; every module of that package is imported on the first look-up).

Who reads this registry:

- `retvlp.registration`: the Auto-class registrations and the remote-code export marks (`auto_classes`,
  `remote_code`), and the modules whose import triggers them (`FamilySpec.modules`);
- `retvlp.training.config`: the accepted `model.family` values;
- `training/pretrain.py`: the loader hint printed with `final/`;
- `retvlp.evaluation.finetune`: the classifier class, the LoRA defaults and the head modules;
- `retvlp.lora`: the LoRA towers (`lora_targets`, `check_lora_targets`);
- `retvlp.evaluation.features`, `retvlp.export`: whether a model is one of our dual encoders (`model_types`);
- cards and the push: the title and the released / classifier class.

Adding a family (files only, nothing else edited): docs/architecture.md, "Adding a family".
"""

from __future__ import annotations

import importlib
import pkgutil
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


# Regexes of LoRA towers (`LoraTower.targets`) that several families share. The attention projections of the
# towers (query, key, value, output), PEFT names relative to the model. A ViT block of ours names them
# q/k/v/o_proj, and so does the MaskedCLIP bridge: the towers' regexes start at the tower's module so that
# neither picks up the other.
VIT_ATTENTION = r"vision_model\.layers\.\d+\.attention\.(?:q_proj|k_proj|v_proj|o_proj)"
BRIDGE_ATTENTION = r"bridge\.layers\.\d+\.attention\.(?:q_proj|k_proj|v_proj|o_proj)"
BERT_ATTENTION = r"text_model\.encoder\.layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)"
# The ResNet (transformers' module layout): the convolutions inside each residual block (a bottleneck's
# 1x1-3x3-1x1, a basic block's two 3x3), not the stem or the shortcut projections.
RESNET_BLOCKS = r"vision_model\.encoder\.stages\.\d+\.layers\.\d+\.layer\.\d+\.convolution"


# The fields of `FamilySpec` that name a class (a "module:attribute" string, or the object).
_CLASS_FIELDS = ("config", "model", "pretraining_model", "vision_model", "classifier", "processor")


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

    def modules(self) -> tuple[str, ...]:
        """The modules its ``"module:attribute"`` strings name (class fields and `extra`), once each, in order."""
        values = [getattr(self, name) for name in _CLASS_FIELDS] + list(self.extra.values())
        named = (v.partition(":")[0] for v in values if isinstance(v, str) and ":" in v)
        return tuple(dict.fromkeys(m for m in named if all(p.isidentifier() for p in m.split("."))))

    def owns_model_type(self, model_type: str) -> bool:
        return any(str(model_type) == t or str(model_type).startswith(t + "_") for t in self.model_types)


_FAMILIES: dict[str, FamilySpec] = {}

# The package of the built-in families' model facts: one module per family, each calling `register_family`.
BUILTIN_SPECS = "retvlp.family_specs"
_builtins_loaded = False


def _load_builtin_families() -> None:
    """Import every module of `retvlp.family_specs` (in name order; each registers its family), once: on the
    first read or change of the registry. The package is named by a string, not imported statically: this
    module still imports nothing of retvlp (tests/test_import_graph.py), and nothing lists the families."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: the spec modules call `register_family`, which comes back here
    try:
        package = importlib.import_module(BUILTIN_SPECS)
        found = pkgutil.iter_modules(package.__path__, BUILTIN_SPECS + ".")
        for module in sorted(found, key=lambda m: m.name):
            importlib.import_module(module.name)
    except BaseException:
        _builtins_loaded = False  # the next read tries again (and raises again), never a partial registry
        raise


def register_family(spec: FamilySpec, *, exist_ok: bool = False) -> FamilySpec:
    """Add a family; a second registration of a name (a built-in one included) is an error unless `exist_ok`."""
    _load_builtin_families()
    if spec.name in _FAMILIES and not exist_ok:
        raise ValueError(f"model family {spec.name!r} is already registered.")
    _FAMILIES[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    _load_builtin_families()
    _FAMILIES.pop(name, None)


def families() -> tuple[FamilySpec, ...]:
    """Every registered family: the built-in ones (in the name order of their modules), then the others in the
    order they were registered."""
    _load_builtin_families()
    return tuple(_FAMILIES.values())


def family_names() -> tuple[str, ...]:
    _load_builtin_families()
    return tuple(_FAMILIES)


def get_family(name: str) -> FamilySpec:
    _load_builtin_families()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"model family {name!r} is not registered; registered families: {list(_FAMILIES)}."
        ) from None


def family_of_model_type(model_type: str) -> FamilySpec | None:
    """The family whose checkpoints carry `model_type` (e.g. "maskedclip_vision_model" → MaskedCLIP)."""
    _load_builtin_families()
    return next((spec for spec in _FAMILIES.values() if spec.owns_model_type(model_type)), None)


__all__ = [
    "BERT_ATTENTION",
    "BRIDGE_ATTENTION",
    "BUILTIN_SPECS",
    "FamilySpec",
    "LoraDefaults",
    "LoraTower",
    "RESNET_BLOCKS",
    "VIT_ATTENTION",
    "families",
    "family_names",
    "family_of_model_type",
    "get_family",
    "register_family",
    "unregister_family",
]
