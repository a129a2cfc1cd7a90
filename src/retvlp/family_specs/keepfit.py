"""KeepFIT V2: the model facts (`retvlp.families`); its task is `training/keepfit_task.py`, its card
`model_card/families/keepfit.py`."""

from ..families import BERT_ATTENTION, RESNET_BLOCKS, FamilySpec, LoraDefaults, LoraTower, register_family

register_family(
    FamilySpec(
        name="keepfit",
        title="KeepFIT V2",
        model_types=("keepfit",),
        config="retvlp.keepfit:KeepFitConfig",
        model="retvlp.keepfit:KeepFitModel",
        pretraining_model="retvlp.keepfit:KeepFitForPreTraining",
        vision_model="retvlp.keepfit:KeepFitVisionModel",
        classifier="retvlp.keepfit:KeepFitForImageClassification",
        processor="retvlp.keepfit:KeepFitProcessor",
        lora=LoraDefaults(
            target_modules=r".*vision_model\.encoder\.stages\.\d+\.layers\.\d+\.layer\.\d+\.convolution",
            towers={
                "vision": LoraTower("vision_model", RESNET_BLOCKS),
                "text": LoraTower("text_model", BERT_ATTENTION),
            },
        ),
        auto_classes=(
            ("AutoConfig", "config", "config"),
            ("AutoModel", "config", "model"),
            ("AutoModelForPreTraining", "config", "pretraining_model"),
            ("AutoModelForZeroShotImageClassification", "config", "model"),
            ("AutoModelForImageClassification", "config", "classifier"),
            ("AutoProcessor", "config", "processor"),
        ),
        remote_code=(
            ("config", None),
            ("model", "AutoModel"),
            ("pretraining_model", "AutoModelForPreTraining"),
            # A fine-tuned classifier saved with save_pretrained carries its code too.
            ("classifier", "AutoModelForImageClassification"),
            ("processor", "AutoProcessor"),
        ),
        extra={
            "image_processor": "retvlp.keepfit.image_processing_fundus:FundusImageProcessor",
            "image_processor_configs": ("config",),
        },
    )
)
