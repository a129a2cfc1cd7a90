# Generated from src/retvlp/common/modeling_common.py by utils/check_copies.py — do not edit;
# edit the source and run `python utils/check_copies.py --fix`.
"""Model code both families share: the released dual encoders' scoring, output-flag handling, and the
checkpoint layout of a `...ForPreTraining` class (its released model under `base_model_prefix`), with the
reading of checkpoints written before the released / pretraining split, and the config of a tower loaded from
its own checkpoint (`pretrained_tower_config`).

The single source lives in `retvlp/common/`; both family folders hold a generated copy (`utils/check_copies.py`)
so a saved checkpoint's code stays flat and self-contained. Imports only torch, safetensors, transformers and
its sibling files.
"""

import os

import torch

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


__all__ = [
    "CheckpointLayout",
    "PretrainedTowerError",
    "dual_encoder_scores",
    "pretrained_tower_config",
    "resolve_output_flags",
    "select_hidden_states",
    "tower_checkpoint_config",
    "tower_settings",
]
