"""KeepFIT V2 model family: configuration, model, losses, processor, FLAIR / KeepFIT V1 converter.

The folder is flat so that a saved checkpoint carries runnable code: `configuration_support.py`, `contrastive.py`,
`modeling_common.py`, `modeling_support.py`, `image_processing_fundus.py`, `processing_fundus.py`,
`quantization_ibq.py` and `resnet_blocks.py` (the ResNet tower) are generated copies of
`retvlp/common/` (`python utils/check_copies.py --fix`), which `save_pretrained` writes next to the weights and
``trust_remote_code`` loading imports standalone, as siblings of `modeling_keepfit.py`.

Inside the installed package those copies are never imported: the lines below first bind the family-local names
(`retvlp.keepfit.contrastive`, ...) to the `retvlp.common` modules in ``sys.modules``, so the family's
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
    "quantization_ibq",
    "resnet_blocks",
)

from .configuration_keepfit import KeepFitConfig  # noqa: E402
from .convert_flair import convert_flair_state_dict, load_flair_checkpoint  # noqa: E402
from .image_processing_fundus import FundusImageProcessor  # noqa: E402
from .loss_keepfit import image_text_contrastive_loss, knowledge_refinement_loss, total_loss  # noqa: E402
from .modeling_keepfit import (  # noqa: E402
    KeepFitAppearanceQuantizer,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitForPreTrainingOutput,
    KeepFitKnowledgeAttention,
    KeepFitModel,
    KeepFitOutput,
    KeepFitPreTrainedModel,
    KeepFitVisionModel,
)
from .processing_keepfit import KeepFitProcessor, keepfit_image_processor  # noqa: E402

__all__ = [
    "FundusImageProcessor",
    "KeepFitAppearanceQuantizer",
    "KeepFitConfig",
    "KeepFitForImageClassification",
    "KeepFitForPreTraining",
    "KeepFitForPreTrainingOutput",
    "KeepFitKnowledgeAttention",
    "KeepFitModel",
    "KeepFitOutput",
    "KeepFitPreTrainedModel",
    "KeepFitProcessor",
    "KeepFitVisionModel",
    "convert_flair_state_dict",
    "image_text_contrastive_loss",
    "keepfit_image_processor",
    "knowledge_refinement_loss",
    "load_flair_checkpoint",
    "total_loss",
]
