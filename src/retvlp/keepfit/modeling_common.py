# Generated from src/retvlp/common/modeling_common.py by utils/check_copies.py — do not edit;
# edit the source and run `python utils/check_copies.py --fix`.
"""Model code both families share: the released dual encoders' scoring and logit parameters, output-flag
handling and the remote-code `auto_map` of a saved checkpoint (`PreTrainedModelMixin`), the `return_loss` guard
of a `...ForPreTraining` forward, the checkpoint layout of a `...ForPreTraining` class (its released model under
`base_model_prefix`), with the reading of checkpoints written before the released / pretraining split, and the
config of towers loaded from their own checkpoints (`pretrained_tower_config`, `config_from_pretrained_towers`).

The single source lives in `retvlp/common/`; both family folders hold a generated copy (`utils/check_copies.py`)
so a saved checkpoint's code stays flat and self-contained. Imports only torch, safetensors, transformers and
its sibling files.
"""

import os
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init

from .contrastive import contrastive_loss


def resolve_output_flags(config, output_hidden_states, output_attentions) -> tuple:
    """The flags from the arguments, else from the config. `output_hidden_states` may also be a list of layer
    indices (transformers v5's way of asking for some layers): it is returned as given."""
    hidden = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    attentions = config.output_attentions if output_attentions is None else output_attentions
    return hidden, bool(attentions)


def select_hidden_states(hidden_states, requested):
    """`output_hidden_states` as transformers v5 reads it: True keeps every entry, a list of indices keeps
    those (negative ones count from the end) and leaves None in the other places, False keeps none."""
    if hidden_states is None or not requested:
        return None
    if not isinstance(requested, (list, tuple)):
        return tuple(hidden_states)
    kept = {index % len(hidden_states) for index in requested}
    return tuple(state if index in kept else None for index, state in enumerate(hidden_states))


class PreTrainedModelMixin:
    """What both families' `...PreTrainedModel` base classes add to transformers' `PreTrainedModel` (list it
    first: `class MaskedCLIPPreTrainedModel(PreTrainedModelMixin, PreTrainedModel)`):

    - `_output_flags(output_hidden_states, output_attentions)`: the forward's flags, else the config's
      (`resolve_output_flags`);
    - `save_pretrained` completing the config's `auto_map` with `_remote_auto_map` (the Auto classes a
      checkpoint of the class's config resolves with `trust_remote_code`) when the class was registered for an
      Auto class: each class writes its own entry, the map adds the others.
    """

    # Auto class name → "modeling_<family>.<Class>"; a class with an empty map writes only its own entry.
    _remote_auto_map: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, "_auto_class", None) is not None and self._remote_auto_map:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _output_flags(self, output_hidden_states, output_attentions) -> tuple:
        return resolve_output_flags(self.config, output_hidden_states, output_attentions)


def reject_return_loss(model, kwargs: dict) -> None:
    """The `return_loss` guard of a `...ForPreTraining` forward (`kwargs` its extra keyword arguments): it always
    computes its losses, and `return_loss` belongs to the released model's forward."""
    if "return_loss" in kwargs:
        raise TypeError(
            f"{type(model).__name__} always computes the pretraining losses; return_loss belongs to the released "
            "model's forward (model.released_model)."
        )


def logit_parameters(config) -> tuple[nn.Parameter, nn.Parameter | None]:
    """A released dual encoder's `(logit_scale, logit_bias)`: τ at `config.logit_scale_init_value`, and SigLIP's
    learnable bias only for the sigmoid loss (`None` otherwise, so softmax checkpoints keep their keys)."""
    logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
    logit_bias = (
        nn.Parameter(torch.tensor(config.logit_bias_init_value))
        if config.contrastive_loss == "sigmoid"
        else None
    )
    return logit_scale, logit_bias


def init_logit_parameters(module: nn.Module, config) -> None:
    """`_init_weights` for a released dual encoder's `logit_scale` / `logit_bias` (see `logit_parameters`)."""
    init.constant_(module.logit_scale, config.logit_scale_init_value)
    if module.logit_bias is not None:
        init.constant_(module.logit_bias, config.logit_bias_init_value)


def dual_encoder_scores(
    image_embeds: torch.Tensor | None,
    text_embeds: torch.Tensor | None,
    logit_scale: torch.Tensor,
    *,
    logit_bias: torch.Tensor | None = None,
    kind: str = "softmax",
    labels: torch.Tensor | None = None,
    return_loss: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A released dual encoder's `(loss, logits_per_image, logits_per_text)` for L2-normalised embeddings
    `(images, dim)` / `(texts, dim)`: scaled similarities (plus `logit_bias` with the sigmoid loss: SigLIP's
    pairwise logits; a softmax over the texts, as the zero-shot pipeline takes, is blind to it), and with
    `return_loss` the (label-guided) contrastive loss of `kind` (`config.contrastive_loss`) of one text per
    image. Embeddings of one modality only give no scores."""
    if image_embeds is None or text_embeds is None:
        if return_loss:
            raise ValueError("return_loss needs both pixel_values and input_ids.")
        return None, None, None
    if not return_loss:
        logits_per_image = logit_scale * image_embeds @ text_embeds.t()
        if kind == "sigmoid":
            logits_per_image = logits_per_image + logit_bias
        return None, logits_per_image, logits_per_image.t()
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"return_loss needs one text per image: got {image_embeds.shape[0]} images (pixel_values) and "
            f"{text_embeds.shape[0]} texts (input_ids)."
        )
    return contrastive_loss(
        kind,
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        labels=None if labels is None else labels.to(image_embeds.device),
        gather_distributed=False,
    )


# The released models' parameters that sit outside any module.
RELEASED_PARAMETERS = ("logit_scale", "logit_bias")


class CheckpointLayout:
    """Where a pretraining model keeps its released model: under `prefix.`; the pretraining-only modules at
    the top level. Before the split, the released modules sat at the top level too (the "pre-split" layout).

    Args:
        prefix: the pretraining class's `base_model_prefix`.
        released_prefixes: the released model's module prefixes (`"vision_model."`, ...); its bare
            `logit_scale` (and, with the sigmoid loss, `logit_bias`) parameters are handled as well.
        pretraining_only_prefixes: the modules only the pretraining model has (they tell a pre-split checkpoint
            from a released one).
    """

    def __init__(
        self, prefix: str, released_prefixes: tuple[str, ...], pretraining_only_prefixes: tuple[str, ...]
    ):
        self.prefix = prefix
        self.released_prefixes = released_prefixes
        self.pretraining_only_prefixes = pretraining_only_prefixes

    def _is_released_key(self, key: str) -> bool:
        return key.startswith(self.released_prefixes) or key in RELEASED_PARAMETERS

    def key_mapping(self) -> dict[str, str]:
        """`from_pretrained(key_mapping=...)` entries that read a pre-split checkpoint: released parts move under
        `prefix.`, pretraining-only parts stay where they are."""
        released = "|".join(p.rstrip(".") for p in self.released_prefixes)
        # transformers' renaming substitutes one group only: the module prefixes and the bare parameter apart.
        parameters = "|".join(RELEASED_PARAMETERS)
        return {rf"^({released})\.": rf"{self.prefix}.\1.", rf"^({parameters})$": rf"{self.prefix}.\1"}

    def upgrade(self, state_dict: dict) -> dict:
        """A pre-split state dict in today's layout; one already in it is returned unchanged."""
        if any(key.startswith(self.prefix + ".") for key in state_dict):
            return state_dict
        return {(f"{self.prefix}.{k}" if self._is_released_key(k) else k): v for k, v in state_dict.items()}

    def load_state_dict_pre_hook(self, module, state_dict, prefix, *args) -> None:
        """`register_load_state_dict_pre_hook` target: renames a pre-split state dict in place (accelerate's
        `load_state` reads plain state dicts)."""
        if prefix:
            return
        upgraded = self.upgrade(dict(state_dict))
        if upgraded is not state_dict:
            state_dict.clear()
            state_dict.update(upgraded)

    def from_pretrained_kwargs(self, args: tuple, kwargs: dict) -> dict:
        """`kwargs` of a `from_pretrained(*args, **kwargs)` call, with the `key_mapping` that reads a pre-split
        checkpoint added when the source is one and the caller gave no mapping of its own."""
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if "key_mapping" not in kwargs and self.is_pre_split(source, kwargs):
            kwargs["key_mapping"] = self.key_mapping()
        return kwargs

    def is_pre_split(self, source, kwargs: dict) -> bool:
        """Whether `from_pretrained(source, **kwargs)` reads a pre-split checkpoint (a local directory with one
        `model.safetensors`, or `state_dict=`): pretraining-only modules at the top level and no `prefix.`."""
        if kwargs.get("state_dict") is not None:
            keys = list(kwargs["state_dict"])
        elif isinstance(source, (str, os.PathLike)) and os.path.isfile(
            os.path.join(source, "model.safetensors")
        ):
            from safetensors import safe_open

            with safe_open(os.path.join(source, "model.safetensors"), framework="pt") as handle:
                keys = list(handle.keys())
        else:
            return False
        has_prefix = any(key.startswith(self.prefix + ".") for key in keys)
        return not has_prefix and any(key.startswith(self.pretraining_only_prefixes) for key in keys)


# ------------------------------------------------------------------------------------------------------------
# Towers from pretrained checkpoints: `...ForPreTraining.from_vision_text_pretrained`


class PretrainedTowerError(ValueError):
    """A tower to be loaded from a checkpoint that cannot be: its config is unreadable or of the wrong kind
    (`reason`), or settings given for it (`mismatches`: `(key, given, checkpoint's)`) disagree with the
    checkpoint's config, whose values decide a pretrained tower's size.

    `describe(config_name, source_name)` words the message in the caller's names (a run file says
    `model.config` and `model.text_pretrained`); `str(error)` uses the classmethod's (`config`,
    `text_model_name_or_path`)."""

    def __init__(self, tower: str, source: str, *, mismatches=(), reason: str = ""):
        self.tower = tower  # "vision" | "text"
        self.source = source
        self.mismatches = list(mismatches)
        self.reason = reason
        super().__init__(self.describe())

    def describe(self, config_name: str = "config", source_name: str | None = None) -> str:
        source_name = source_name or f"{self.tower}_model_name_or_path"
        where = f"{source_name}={self.source!r}"
        if not self.mismatches:
            return f"{where}: {self.reason}"
        section = f"{config_name}.{self.tower}_config"
        keys = ", ".join(f"{section}.{key}" for key, _, _ in self.mismatches)
        values = "; ".join(
            f"{section}.{key} is {given!r}, the checkpoint has {value!r}"
            for key, given, value in self.mismatches
        )
        return (
            f"{where} supplies the {self.tower} tower, and {section} disagrees with its checkpoint's config: "
            f"{values}. A pretrained tower's size comes from its checkpoint: remove {keys} (or set "
            f"{'it' if len(self.mismatches) == 1 else 'them'} to the checkpoint's value), or leave out "
            f"{source_name} to build a fresh {self.tower} tower of the size given."
        )


def tower_checkpoint_config(tower: str, source: str, model_types: tuple[str, ...] = ()) -> dict:
    """The config (as a dict) of the checkpoint `source` (a directory or Hub id) that supplies `tower`; with
    `model_types`, one of those kinds only. Raises `PretrainedTowerError` naming the source."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:  # noqa: BLE001 - OSError (missing), ValueError (no model_type): one message
        raise PretrainedTowerError(tower, source, reason=f"cannot read its config.json ({error})") from error
    if model_types and config.model_type not in model_types:
        raise PretrainedTowerError(
            tower,
            source,
            reason=f"is a {config.model_type!r} checkpoint; the {tower} tower takes {' or '.join(model_types)}.",
        )
    return config.to_dict()


def tower_settings(value) -> dict:
    """A sub-config as the settings its author gave: a dict as is (None: none), a config object's values that
    differ from its class defaults."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    defaults = type(value)().to_dict()
    return {
        key: setting
        for key, setting in value.to_dict().items()
        if key != "transformers_version" and (key not in defaults or setting != defaults[key])
    }


def _same_setting(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def pretrained_tower_config(
    tower: str, source: str, checkpoint: dict, given, free: tuple[str, ...] = ()
) -> dict:
    """The config of a tower loaded from `source`: the checkpoint's config (`checkpoint`, a dict) with the
    settings `given` for the tower (a dict or a config object: `tower_settings`) applied. A given key the checkpoint also has must hold the checkpoint's value
    (it shapes the weights: width, depth, vocabulary, image and patch size, activation, ...) unless it is
    regularisation or describes something built fresh around the tower: `initializer_range`, any key naming a
    dropout or drop path, and the keys in `free`. Raises `PretrainedTowerError` listing every disagreement."""
    given = tower_settings(given)
    mismatches = [
        (key, value, checkpoint[key])
        for key, value in given.items()
        if key in checkpoint
        and key not in free
        and key != "initializer_range"
        and "dropout" not in key
        and "drop_path" not in key
        and not _same_setting(value, checkpoint[key])
    ]
    if mismatches:
        raise PretrainedTowerError(tower, source, mismatches=mismatches)
    return {**checkpoint, **given}


def config_from_pretrained_towers(
    config_class: type,
    vision_source: str | None,
    text_source: str | None,
    config_kwargs: dict,
    vision_tower_config: Callable[[str, object], dict] | None = None,
):
    """The body of `...ForPreTraining.config_from_pretrained_towers`: a `config_class` built from
    `config_kwargs`, with each tower that has a checkpoint (`vision_source`, `text_source`) sized by it.

    `config_kwargs["vision_config"]` / `["text_config"]` (dicts, config objects or absent) are the settings
    given for the towers; a tower without a checkpoint is built from them as they are. A text checkpoint must
    be a BERT (`bert`). A vision checkpoint is read by `vision_tower_config(source, settings)` (which returns
    the tower's config as a dict), by default any checkpoint's config with the settings applied
    (`pretrained_tower_config`). Raises `PretrainedTowerError` (vision first, then text)."""
    vision = config_kwargs.pop("vision_config", None)
    text = config_kwargs.pop("text_config", None)
    if vision_source is not None:
        if vision_tower_config is None:
            checkpoint = tower_checkpoint_config("vision", vision_source)
            vision = pretrained_tower_config("vision", vision_source, checkpoint, vision)
        else:
            vision = vision_tower_config(vision_source, vision)
    if text_source is not None:
        checkpoint = tower_checkpoint_config("text", text_source, ("bert",))
        text = pretrained_tower_config("text", text_source, checkpoint, text)
    if vision is not None:
        config_kwargs["vision_config"] = vision
    if text is not None:
        config_kwargs["text_config"] = text
    return config_class(**config_kwargs)


def reject_settings_beside_config(config, *settings) -> None:
    """`from_vision_text_pretrained(config=...)` takes the config whole: any config settings passed beside it
    (`settings`: the keyword arguments, overrides; empty ones are fine) are a TypeError."""
    if config is not None and any(settings):
        raise TypeError(
            "from_vision_text_pretrained: pass either config= or the config keyword arguments, not both."
        )


__all__ = [
    "CheckpointLayout",
    "PreTrainedModelMixin",
    "PretrainedTowerError",
    "config_from_pretrained_towers",
    "dual_encoder_scores",
    "init_logit_parameters",
    "logit_parameters",
    "pretrained_tower_config",
    "reject_return_loss",
    "reject_settings_beside_config",
    "resolve_output_flags",
    "select_hidden_states",
    "tower_checkpoint_config",
    "tower_settings",
]
