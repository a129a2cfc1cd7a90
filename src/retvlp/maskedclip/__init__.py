"""MaskedCLIP model family: configuration, model, losses, processor.

The folder is flat so that a saved checkpoint carries runnable code: `configuration_support.py`, `contrastive.py`,
`modeling_common.py`, `modeling_support.py`, `image_processing_fundus.py`, `processing_fundus.py` and
`vit_blocks.py` (the ViT blocks) are generated copies of `retvlp/common/`
(`python utils/check_copies.py --fix`), which `save_pretrained` writes next to the weights and
``trust_remote_code`` loading imports standalone, as siblings of `modeling_maskedclip.py`.

Inside the installed package those copies are never imported: the lines below first bind the family-local names
(`retvlp.maskedclip.contrastive`, ...) to the `retvlp.common` modules in ``sys.modules``, so the family's
``from .contrastive import ...`` gets the shared module. Otherwise each family would define its own look-alike
classes (`retvlp.keepfit.FundusImageProcessor is not retvlp.maskedclip.FundusImageProcessor`), breaking
``isinstance`` checks, Auto registration and pickling across families.
"""

from ..common import bind_shared

bind_shared(
    __name__,
    "configuration_support",
    "contrastive",
    "image_processing_fundus",
    "modeling_common",
    "modeling_support",
    "processing_fundus",
    "vit_blocks",
)

from .configuration_maskedclip import MaskedCLIPConfig, MaskedCLIPVisionConfig  # noqa: E402
from .image_processing_fundus import FundusImageProcessor  # noqa: E402
from .modeling_maskedclip import (  # noqa: E402
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPForPreTrainingOutput,
    MaskedCLIPImageClassificationLoader,
    MaskedCLIPModel,
    MaskedCLIPOutput,
    MaskedCLIPPreTrainedModel,
    MaskedCLIPVisionModel,
)
from .processing_fundus import FundusVisionTextProcessor  # noqa: E402
from .processing_maskedclip import MaskedCLIPProcessor  # noqa: E402

__all__ = [
    "FundusImageProcessor",
    "FundusVisionTextProcessor",
    "MaskedCLIPProcessor",
    "MaskedCLIPConfig",
    "MaskedCLIPForImageClassification",
    "MaskedCLIPForPreTraining",
    "MaskedCLIPForPreTrainingOutput",
    "MaskedCLIPImageClassificationLoader",
    "MaskedCLIPModel",
    "MaskedCLIPOutput",
    "MaskedCLIPPreTrainedModel",
    "MaskedCLIPVisionConfig",
    "MaskedCLIPVisionModel",
]
