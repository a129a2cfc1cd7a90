"""LoRA target modules that select what the user means.

PEFT matches `target_modules` against module names: a list by name suffix, a string as a full-match regex. On
our dual encoders the usual guesses go wrong without a word: `["query", "value"]` (the PEFT guide's BERT / ViT
names) adapts only the BERT text tower of a `MaskedCLIPModel` or `KeepFitModel`, and `["q_proj", "v_proj"]`
adapts MaskedCLIP's image tower *and* its bridge, which names its projections the same way. Two helpers:

- :func:`lora_targets` gives the regex selecting exactly the attention projections (q, k, v, o) of the towers
  asked for (for KeepFIT's ResNet image tower: the convolutions of its residual blocks), never the bridge unless
  asked;
- :func:`check_lora_targets` checks a target list against a model before PEFT wraps it and raises
  :class:`LoraTargetError` when it matches nothing (listing the names there are), only one tower of a dual
  encoder, or the bridge by accident. The fine-tuning path (`evaluation.finetune.lora_wrap`) runs it.

The module names come from the family registry (`families.LoraDefaults.towers`); a model is read through its
`named_modules()` and `config` only, so this module imports nothing heavy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .families import FamilySpec, family_of_model_type

TOWERS = ("vision", "text")
_ALIASES = {"image": "vision"}
# Module types PEFT's LoRA can wrap, by class name (no torch import here): what a "no match" error lists.
_ADAPTABLE = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "Conv1D")
_SHOWN = 24  # at most this many module-name patterns in a message


class LoraTargetError(ValueError):
    """LoRA target modules that do not select what was asked for; the message says what they select and what
    `retvlp.lora_targets` gives instead."""


# --------------------------------------------------------------------------- reading a model
def _is_model(obj) -> bool:
    return callable(getattr(obj, "named_modules", None))


def _family(config, what: str) -> FamilySpec | None:
    """The registered family with LoRA towers whose checkpoints carry `config.model_type` (None: another model)."""
    family = family_of_model_type(str(getattr(config, "model_type", "") or ""))
    if family is None or family.lora is None or not family.lora.towers:
        return None
    return family


def _prefix(model) -> str:
    """Where the released model sits in `model`: "" for a released model, a vision model or a classifier;
    "maskedclip." / "keepfit." inside a `...ForPreTraining` (whose decoders, momentum encoder and knowledge
    modules have q/k/v/o projections of their own, which must not match)."""
    released = getattr(model, "released_model", None)
    if released is None or released is model:
        return ""
    name = next((n for n, m in model.named_modules() if m is released), "")
    return f"{name}." if name else ""


def _present(obj, family: FamilySpec, prefix: str) -> set[str]:
    """The towers (and "bridge") `obj` holds: read from its modules for a model; from the config for a config,
    which then stands for the released model (a classifier built from it holds the vision tower only)."""
    if _is_model(obj):
        names = {name for name, _ in obj.named_modules()}
        return {t for t, tower in family.lora.towers.items() if prefix + tower.module in names}
    if obj.model_type != family.model_types[0]:  # a vision-only config (MaskedCLIPVisionConfig)
        return {"vision"}
    present = {"vision", "bridge"}
    if getattr(obj, "text_config", None) is not None and getattr(obj, "use_clip", True):
        present.add("text")
    if not getattr(obj, "use_bridge", True):
        present.discard("bridge")
    return present & set(family.lora.towers)


def _tower_names(towers: str | Iterable[str]) -> tuple[str, ...]:
    """`towers` as a tuple of "vision" / "text" ("image" is "vision"), in the order given, without repeats."""
    if isinstance(towers, str):
        towers = (towers,)
    names: list[str] = []
    for tower in towers:
        name = _ALIASES.get(tower, tower)
        if name not in TOWERS:
            hint = " (the MaskedCLIP bridge is added with include_bridge=True)" if name == "bridge" else ""
            raise LoraTargetError(
                f"unknown tower {tower!r}: choose from {', '.join(TOWERS)} ('image' means 'vision'){hint}."
            )
        if name not in names:
            names.append(name)
    if not names:
        raise LoraTargetError("towers is empty: name at least one of 'vision', 'text'.")
    return tuple(names)


def _selected(model, target_modules) -> list[str]:
    """The module names of `model` PEFT's `target_modules` select (its rules: a string is a full-match regex,
    "all-linear" every Linear layer; a list matches a name or a name suffix after a dot)."""
    names = [(name, module) for name, module in model.named_modules() if name]
    if isinstance(target_modules, str):
        if target_modules.lower() == "all-linear":
            return [name for name, module in names if type(module).__name__ == "Linear"]
        return [name for name, _ in names if re.fullmatch(target_modules, name)]
    targets = list(target_modules)
    return [name for name, _ in names if name in targets or any(name.endswith(f".{t}") for t in targets)]


def _patterns(names: Iterable[str]) -> list[str]:
    """Module names with block numbers written as N, each once, in model order."""
    return list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name) for name in names))


def _shown(names: Iterable[str]) -> str:
    patterns = _patterns(names)
    more = f", ... ({len(patterns) - _SHOWN} more)" if len(patterns) > _SHOWN else ""
    return ", ".join(patterns[:_SHOWN]) + more


def _named(towers: Iterable[str]) -> str:
    """ "text tower", "bridge", "vision tower or bridge"."""
    return " or ".join(f"{t} tower" if t in TOWERS else t for t in towers)


def _towers_call(towers: Iterable[str], include_bridge: bool = False) -> str:
    bridge = ", include_bridge=True" if include_bridge else ""
    return f"retvlp.lora_targets(model, towers={tuple(towers)!r}{bridge})"


# --------------------------------------------------------------------------- the public helpers
def lora_targets(
    model_or_config, towers: str | Iterable[str] = ("vision",), include_bridge: bool = False
) -> str:
    """PEFT `target_modules` (a full-match regex over module names) selecting exactly the LoRA layers of the
    given towers of a MaskedCLIP or KeepFIT model.

    Per tower: the ViT's attention projections `q_proj`, `k_proj`, `v_proj`, `o_proj` (MaskedCLIP's image
    tower, `vision_model.layers.N.attention.*`); the convolutions of the ResNet's residual blocks (KeepFIT's
    image tower, `vision_model.encoder.stages.N.layers.N.layer.N.convolution`: neither the stem nor the
    shortcuts); BERT's `attention.self.query` / `key` / `value` and `attention.output.dense` (both families'
    text tower, `text_model.encoder.layer.N.attention.*`). MaskedCLIP's bridge (`bridge.layers.N.attention.*`,
    the same names as the ViT's) only with `include_bridge=True`.

    Args:
        model_or_config: a released model (`MaskedCLIPModel`, `KeepFitModel`), a classifier
            (`...ForImageClassification`), a vision model, a `...ForPreTraining` (its released model's
            towers), or the config of one (a config stands for the released model; a classifier built from it
            has the vision tower only).
        towers: "vision" (also "image") and / or "text".
        include_bridge: also adapt MaskedCLIP's bridge (the image tower's path into the CLIP space).

    Returns:
        A regex for `peft.LoraConfig(target_modules=...)`, e.g. for a `MaskedCLIPModel` and `("vision",)`:
        ``(?:vision_model\\.layers\\.\\d+\\.attention\\.(?:q_proj|k_proj|v_proj|o_proj))``.

    Raises:
        LoraTargetError: an unknown tower, a tower (or bridge) the model does not have, a model that is not a
        retvlp MaskedCLIP / KeepFIT one, or a tower whose layers are not named as the family's are.
    """
    obj = model_or_config
    is_model = _is_model(obj)
    config = obj.config if is_model else obj
    what = type(obj).__name__
    family = _family(config, what)
    if family is None:
        raise LoraTargetError(
            f"{what} is not a retvlp MaskedCLIP or KeepFIT model (model_type "
            f"{getattr(config, 'model_type', None)!r}): lora_targets knows only their module names. Pass PEFT "
            "target_modules yourself (module-name suffixes, or a full-match regex)."
        )
    wanted = _tower_names(towers) + (("bridge",) if include_bridge else ())
    prefix = _prefix(obj) if is_model else ""
    present = _present(obj, family, prefix)
    missing = [tower for tower in wanted if tower not in present]
    if missing:
        has = ", ".join(t for t in (*TOWERS, "bridge") if t in present)
        only_vision = (
            " (a classifier or vision model holds the image tower only)" if present == {"vision"} else ""
        )
        raise LoraTargetError(f"{what} has no {_named(missing)}: it has {has}{only_vision}.")
    pattern = re.escape(prefix) + "(?:" + "|".join(family.lora.towers[t].targets for t in wanted) + ")"
    if is_model:
        # A tower whose layers are named otherwise (another vision backbone in a KeepFIT config) must not be
        # left out silently.
        for tower in wanted:
            if not _selected(obj, re.escape(prefix) + family.lora.towers[tower].targets):
                raise LoraTargetError(
                    f"the {tower} tower of {what} has no layer named as in a {family.title} model "
                    f"({family.lora.towers[tower].targets}); pass PEFT target_modules yourself."
                )
    return pattern


def check_lora_targets(
    model, target_modules, towers: str | Iterable[str] | None = None, include_bridge: bool = False
) -> dict[str, list[str]]:
    """Check PEFT `target_modules` against `model` before wrapping it; return the selected module names by
    tower ({"vision": [...], "text": [...], "bridge": [...], "other": [...]}, the towers of retvlp models only).

    Raises :class:`LoraTargetError` when the targets select no module (the message lists the adaptable module
    names of `model`), and, on a retvlp model, when they miss a tower of `towers` (default: every tower the
    model has, so both towers of a dual encoder), select a tower not in `towers`, or select MaskedCLIP's bridge
    without `include_bridge`. Another model (a stock ViT classifier) is checked for the first only.
    """
    what = type(model).__name__
    selected = _selected(model, target_modules)
    family = _family(getattr(model, "config", None), what)
    if not selected:
        adaptable = [n for n, m in model.named_modules() if n and type(m).__name__ in _ADAPTABLE]
        hint = ""
        if family is not None:
            present = _present(model, family, _prefix(model))
            hint = f" {_towers_call(t for t in TOWERS if t in present)} gives the attention layers of its towers."
        raise LoraTargetError(
            f"LoRA target_modules {target_modules!r} match no module of {what}. Its layers LoRA can adapt (N: "
            f"a block number): {_shown(adaptable) or 'none'}.{hint}"
        )
    if family is None:
        return {"other": selected}
    prefix = _prefix(model)
    by_tower: dict[str, list[str]] = {}
    for name in selected:
        tower = next(
            (
                t
                for t, spec in family.lora.towers.items()
                if name == prefix + spec.module or name.startswith(f"{prefix}{spec.module}.")
            ),
            "other",
        )
        by_tower.setdefault(tower, []).append(name)
    present = _present(model, family, prefix)
    wanted = _tower_names(towers) if towers is not None else tuple(t for t in TOWERS if t in present)
    missing = [t for t in wanted if t not in present]
    if missing:
        raise LoraTargetError(f"{what} has no {_named(missing)} (it has: {', '.join(sorted(present))}).")
    matched = tuple(t for t in TOWERS if t in by_tower)
    helper = _towers_call(wanted, include_bridge)
    if "bridge" in by_tower and not include_bridge:
        raise LoraTargetError(
            f"LoRA target_modules {target_modules!r} also select the bridge of {what} "
            f"({_shown(by_tower['bridge'])}): its projections are named like the image tower's. Use {helper} "
            "for the towers alone, or include_bridge=True if the bridge is meant."
        )
    if set(matched) != set(wanted):
        found = (
            f"the {' and '.join(matched)} tower{'s' if len(matched) > 1 else ''}" if matched else "no tower"
        )
        where = "; ".join(f"{t}: {_shown(by_tower[t])}" for t in (*matched, "other") if t in by_tower)
        raise LoraTargetError(
            f"LoRA target_modules {target_modules!r} adapt {found} of {what} ({where}), not the "
            f"{' and '.join(wanted)} {'tower' if len(wanted) == 1 else 'towers'} meant. A list matches name "
            "suffixes: ['query', 'value'] are BERT's (the text tower); MaskedCLIP's ViT names its projections "
            f"q_proj / v_proj, as does its bridge; KeepFIT's ResNet has convolutions. {helper} gives exactly the "
            f"{' and '.join(wanted)} layers (pass towers= to check_lora_targets when one tower is meant)."
        )
    return by_tower


__all__ = ["TOWERS", "LoraTargetError", "check_lora_targets", "lora_targets"]
