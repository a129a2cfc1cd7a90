"""Sub-configurations of a composite configuration (`vision_config`, `text_config`), on transformers' public API.

transformers 5.20 added `transformers.configuration_utils.SubConfigSpec` and the `sub_configs_defaults` class
attribute that builds a composite config's sub-configs; configuration files that import it fail to load, with
``trust_remote_code``, on every earlier release, and the module is not public API. A composite configuration
instead declares its sub-configs the way every 5.x release reads them, the `sub_configs` class attribute (which
transformers reads to hand the attention implementation and dtype to each sub-config), and builds them in its
`__post_init__` with `build_sub_config`:

    sub_configs = {"vision_config": MaskedCLIPVisionConfig, "text_config": AutoConfig}

    def __post_init__(self, **kwargs):
        self.vision_config = build_sub_config(self.vision_config, MaskedCLIPVisionConfig)
        self.text_config = build_sub_config(self.text_config, "bert", BIO_CLINICAL_BERT_KWARGS)
        super().__post_init__(**kwargs)

    def to_diff_dict(self):
        return diff_sub_configs(self, super().to_diff_dict())

`diff_sub_configs` writes each sub-config as transformers writes the sub-configs it builds itself: every field of
the sub-config's class, and the generic `PreTrainedConfig` fields only where they differ from the class's defaults.

The single source lives in `retvlp/common/`; each family folder holds a generated copy (`utils/check_copies.py`).
Imports only transformers' public API.
"""

from transformers import AutoConfig, PreTrainedConfig


def build_sub_config(value, default: type | str, defaults: dict | None = None) -> PreTrainedConfig:
    """The sub-config for `value`, as `SubConfigSpec.create_subconfig` builds it.

    value: a config (returned as it is), a dict of its fields (a saved config's entry), or None (the defaults).
    default: the config class, or the `model_type` to build with `AutoConfig.for_model` when the dict names none.
    defaults: the fields a None value is built from (the class's own defaults when not given).
    """
    if isinstance(value, PreTrainedConfig):
        return value
    if value is None:
        fields = dict(defaults or {})
    elif isinstance(value, dict):
        fields = dict(value)
    else:
        raise TypeError(
            f"A sub-config must be a dict, a PreTrainedConfig or None, got {type(value).__name__}."
        )
    if isinstance(default, str):
        # the class registered for the dict's `model_type` (the name is the class's, not a field)
        model_type = fields.pop("model_type", None) or default
        return AutoConfig.for_model(model_type, **fields)
    return default(**fields)


def diff_sub_configs(config: PreTrainedConfig, serialized: dict) -> dict:
    """`serialized` (the composite config's `to_diff_dict()`) with each sub-config entry reduced as transformers'
    nested diff does it (`recursive_diff_dict`): a key stays when it is not a generic `PreTrainedConfig` field or
    differs from the sub-config class's default; `model_type` always stays."""
    generic = PreTrainedConfig().to_dict()
    for key in config.sub_configs:
        sub_config, entry = getattr(config, key, None), serialized.get(key)
        if isinstance(sub_config, PreTrainedConfig) and isinstance(entry, dict):
            defaults = type(sub_config)().to_dict()
            serialized[key] = {
                name: value
                for name, value in entry.items()
                if name == "model_type" or name not in generic or value != defaults.get(name)
            }
    return serialized


__all__ = ["build_sub_config", "diff_sub_configs"]
