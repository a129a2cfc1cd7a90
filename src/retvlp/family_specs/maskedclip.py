"""MaskedCLIP: the model facts (`retvlp.families`); its task is `training/maskedclip_task.py`, its card
`model_card/families/maskedclip.py`."""

from ..families import (
    BERT_ATTENTION,
    BRIDGE_ATTENTION,
    VIT_ATTENTION,
    FamilySpec,
    LoraDefaults,
    LoraTower,
    register_family,
)

register_family(
    FamilySpec(
        name="maskedclip",
        title="MaskedCLIP",
        model_types=("maskedclip", "maskedclip_vision_model"),
        config="retvlp.maskedclip:MaskedCLIPConfig",
        model="retvlp.maskedclip:MaskedCLIPModel",
        pretraining_model="retvlp.maskedclip:MaskedCLIPForPreTraining",
        vision_model="retvlp.maskedclip:MaskedCLIPVisionModel",
        classifier="retvlp.maskedclip:MaskedCLIPForImageClassification",
        processor="retvlp.maskedclip:MaskedCLIPProcessor",
        lora=LoraDefaults(
            target_modules=r".*vision_model\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj|o_proj)",
            modules_to_save=("classifier", "fc_norm"),
            towers={
                "vision": LoraTower("vision_model", VIT_ATTENTION),
                "text": LoraTower("text_model", BERT_ATTENTION),
                "bridge": LoraTower("bridge", BRIDGE_ATTENTION),
            },
        ),
        auto_classes=(
            ("AutoConfig", "config", "config"),
            ("AutoConfig", "vision_config", "vision_config"),
            ("AutoModel", "config", "model"),
            ("AutoModel", "vision_config", "vision_model"),
            ("AutoModelForPreTraining", "config", "pretraining_model"),
            ("AutoModelForZeroShotImageClassification", "config", "model"),
            ("AutoModelForImageClassification", "vision_config", "classifier"),
            # A MaskedCLIP checkpoint's config is the dual-encoder one; the loader class declares it and builds
            # the classifier from its vision part (also what its remote-code auto_map names).
            ("AutoModelForImageClassification", "config", "classifier_loader"),
            ("AutoProcessor", "config", "processor"),
        ),
        remote_code=(
            ("config", None),
            ("vision_config", None),
            ("model", "AutoModel"),
            ("pretraining_model", "AutoModelForPreTraining"),
            ("vision_model", "AutoModel"),
            ("classifier", "AutoModelForImageClassification"),
            ("image_processor", "AutoImageProcessor"),
            ("processor", "AutoProcessor"),
        ),
        extra={
            "vision_config": "retvlp.maskedclip:MaskedCLIPVisionConfig",
            "classifier_loader": "retvlp.maskedclip:MaskedCLIPImageClassificationLoader",
            "image_processor": "retvlp.maskedclip:FundusImageProcessor",
            "image_processor_configs": ("config", "vision_config"),
            "classifier_settings": ("drop_path_rate",),  # FinetuneSettings fields the classifier takes
        },
    )
)
