"""Registration of every registered family's classes with transformers' Auto API (there is no plugin entry
point, so this runs when `retvlp` is imported), driven by the family registry (`retvlp.families`)."""

import transformers
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .families import FamilySpec, families

_registered: set[str] = set()


def _register_auto(spec: FamilySpec) -> None:
    for auto_name, config_field, model_field in spec.auto_classes:
        config_class = spec.load(config_field)
        if auto_name == "AutoConfig":
            transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        else:
            getattr(transformers, auto_name).register(config_class, spec.load(model_field), exist_ok=True)
    image_processor = spec.load("image_processor")
    for config_field in spec.extra.get("image_processor_configs", ()) if image_processor else ():
        config_class = spec.load(config_field)
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={"torchvision": image_processor, "pil": image_processor},
            exist_ok=True,
        )
        # Pipelines also probe for a video processor, guessing one from the image processor's auto_map; with no
        # local entry for our configs they prompt "Do you wish to run the custom code?". An empty registration
        # answers "none" locally, so the probe fails quietly as for any image model.
        AutoVideoProcessor.register(config_class, video_processor_classes={}, exist_ok=True)


def _mark_remote_code(spec: FamilySpec) -> None:
    """Mark the classes whose code `save_pretrained` copies next to the weights (`trust_remote_code`)."""
    for field_name, auto_name in spec.remote_code:
        cls = spec.load(field_name)
        if auto_name is None:
            cls.register_for_auto_class()
        else:
            cls.register_for_auto_class(auto_name)


def register_auto_classes() -> None:
    """Register configs, models and processors of every registered family with the Auto classes and mark
    their remote-code export (idempotent per family; call again after `register_family`)."""
    for spec in families():
        if spec.name in _registered:
            continue
        _register_auto(spec)
        _mark_remote_code(spec)
        _registered.add(spec.name)


__all__ = ["register_auto_classes"]
