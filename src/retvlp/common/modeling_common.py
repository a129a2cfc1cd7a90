"""Model code both families share: the released dual encoders' scoring, output-flag handling, and the
checkpoint layout of a `...ForPreTraining` class (its released model under `base_model_prefix`), with the
reading of checkpoints written before the released / pretraining split.

The single source lives in `retvlp/common/`; both family folders hold a generated copy (`utils/check_copies.py`)
so a saved checkpoint's code stays flat and self-contained. Imports only torch, safetensors and its sibling
files.
"""

import os

import torch

from .contrastive import label_guided_contrastive_loss


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
    labels: torch.Tensor | None = None,
    return_loss: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A released dual encoder's `(loss, logits_per_image, logits_per_text)` for L2-normalised embeddings
    `(images, dim)` / `(texts, dim)`: scaled similarities, and with `return_loss` the (label-guided) contrastive
    loss of one text per image. Embeddings of one modality only give no scores."""
    if image_embeds is None or text_embeds is None:
        if return_loss:
            raise ValueError("return_loss needs both pixel_values and input_ids.")
        return None, None, None
    if not return_loss:
        logits_per_image = logit_scale * image_embeds @ text_embeds.t()
        return None, logits_per_image, logits_per_image.t()
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"return_loss needs one text per image: got {image_embeds.shape[0]} images (pixel_values) and "
            f"{text_embeds.shape[0]} texts (input_ids)."
        )
    return label_guided_contrastive_loss(
        image_embeds,
        text_embeds,
        logit_scale,
        labels=None if labels is None else labels.to(image_embeds.device),
        gather_distributed=False,
    )


class CheckpointLayout:
    """Where a pretraining model keeps its released model: under `prefix.`; the pretraining-only modules at
    the top level. Before the split, the released modules sat at the top level too (the "pre-split" layout).

    Args:
        prefix: the pretraining class's `base_model_prefix`.
        released_prefixes: the released model's module prefixes (`"vision_model."`, ...); its bare
            `logit_scale` parameter is handled as well.
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
        return key.startswith(self.released_prefixes) or key == "logit_scale"

    def key_mapping(self) -> dict[str, str]:
        """`from_pretrained(key_mapping=...)` entries that read a pre-split checkpoint: released parts move under
        `prefix.`, pretraining-only parts stay where they are."""
        released = "|".join(p.rstrip(".") for p in self.released_prefixes)
        # transformers' renaming substitutes one group only: the module prefixes and the bare parameter apart.
        return {rf"^({released})\.": rf"{self.prefix}.\1.", r"^logit_scale$": f"{self.prefix}.logit_scale"}

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


__all__ = [
    "CheckpointLayout",
    "dual_encoder_scores",
    "resolve_output_flags",
    "select_hidden_states",
]
