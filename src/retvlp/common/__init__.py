"""Code the model families share, each file the single source of its copies.

`contrastive.py`, `modeling_common.py`, `quantization_ibq.py`, `image_processing_fundus.py`,
`processing_fundus.py`, and the code that replaces transformers' private classes — `configuration_support.py`
(sub-configs), `modeling_support.py` (output tuples, attention dispatch, activations), `vit_blocks.py` (the
ViT-MAE layout) and `resnet_blocks.py` (the ResNet layout) — are written here once. A saved checkpoint must carry
flat, self-contained code (``save_pretrained`` copies a class's file and its ``from .x import y`` siblings from the
class's folder; ``from ..common import`` would break both saving and ``trust_remote_code`` loading), so every
family folder that needs one of these files holds a GENERATED copy of it (``utils/check_copies.py --fix`` writes
them, ``tests/test_copies.py`` fails when one drifts). The sources therefore import only each other (flat relative
imports), the standard library, torch, numpy, Pillow, safetensors, huggingface_hub and transformers' public API
(``tests/test_checkpoint_code_imports.py``).

Inside the installed package the copies are never imported: each family's ``__init__`` first binds its
family-local module names to the modules here (:func:`bind_shared`), so ``retvlp.keepfit.FundusImageProcessor
is retvlp.maskedclip.FundusImageProcessor`` — one class object per name, not look-alikes that fail
``isinstance`` checks and pickling across families.
"""

from __future__ import annotations

import sys
from types import ModuleType

from . import (
    configuration_support,
    contrastive,
    image_processing_fundus,
    modeling_common,
    modeling_support,
    processing_fundus,
    quantization_ibq,
    resnet_blocks,
    vit_blocks,
)

SHARED_MODULES: dict[str, ModuleType] = {
    module.__name__.rsplit(".", 1)[-1]: module
    for module in (
        configuration_support,
        contrastive,
        image_processing_fundus,
        modeling_common,
        modeling_support,
        processing_fundus,
        quantization_ibq,
        resnet_blocks,
        vit_blocks,
    )
}


def bind_shared(package: str, *names: str) -> None:
    """Make ``{package}.{name}`` BE ``retvlp.common.{name}`` for each of `names` (in ``sys.modules`` and as an
    attribute of the package), so the family's ``from .name import X`` gets the shared module, not its copy.
    Call it from the family's ``__init__`` before anything imports those names."""
    parent = sys.modules[package]
    for name in names:
        if name not in SHARED_MODULES:
            raise ValueError(f"{name!r} is not a shared module; known: {sorted(SHARED_MODULES)}")
        module = SHARED_MODULES[name]
        sys.modules[f"{package}.{name}"] = module
        setattr(parent, name, module)


__all__ = ["SHARED_MODULES", "bind_shared"]
