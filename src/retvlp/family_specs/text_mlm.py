"""The BERT masked-language-model text pretraining (the text tower a KeepFIT or MaskedCLIP run starts from):
the model facts (`retvlp.families`: no retvlp model class, transformers' BERT); its task is
`training/text_mlm_task.py`; no card."""

from ..families import FamilySpec, register_family

register_family(
    FamilySpec(
        name="text-mlm",
        title="BERT masked-language-model text pretraining",
        loader_hint=(
            "BertModel / BertForMaskedLM.from_pretrained loads it; use it as the model.text_pretrained of a "
            "KeepFIT or MaskedCLIP run"
        ),
    )
)
