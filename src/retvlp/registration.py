"""Registration of every registered family's classes with transformers' Auto API (there is no plugin entry
point, so `import retvlp` arranges it), driven by the family registry (`retvlp.families`).

`import retvlp` calls :func:`register_auto_classes_when_used`, not :func:`register_auto_classes`. Registering
needs the config and model classes, and each of them needs torch and transformers' modelling code (seconds of
imports): transformers' public registration API (`AutoConfig.register`, `AutoModel.register`, ...) takes
classes, not names, and already importing `transformers.models.auto` loads `configuration_utils`, which
imports torch. So the registration runs when it is first needed: as soon as transformers' Auto API or one of
our families is imported (`retvlp.lazy.call_when_imported`), i.e. before any `AutoConfig` / `AutoModel` /
`AutoProcessor` / `pipeline` call can look a model type up and before any of our classes can be saved. After
``import retvlp``, ``AutoModel.from_pretrained(dir)`` works exactly as when everything was registered eagerly.
"""

from .families import FamilySpec, families
from .lazy import call_when_imported

_registered: set[str] = set()

# transformers' Auto API: every Auto class's module imports this one.
AUTO_API = "transformers.models.auto.configuration_auto"


def registration_triggers() -> tuple[str, ...]:
    """What triggers the registration: transformers' Auto API or one of the modules the registered families
    name classes in (`FamilySpec.modules`: `retvlp.maskedclip`, ...; the classes carrying remote-code marks)."""
    return tuple(dict.fromkeys([AUTO_API, *(module for spec in families() for module in spec.modules())]))


def _register_auto(spec: FamilySpec) -> None:
    import transformers
    from transformers.models.auto.image_processing_auto import AutoImageProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

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


def register_auto_classes_when_used() -> None:
    """Run :func:`register_auto_classes` as soon as transformers' Auto API or one of our model families is
    imported (at once if one already is): what `import retvlp` calls."""
    triggers = registration_triggers()
    watch = dict.fromkeys(module.partition(".")[0] for module in triggers)
    call_when_imported(register_auto_classes, any_of=triggers, watch=watch)


__all__ = ["AUTO_API", "register_auto_classes", "register_auto_classes_when_used", "registration_triggers"]
