"""The IBQ visual tokenizer (KeepFIT's appearance codebook): the model facts (`retvlp.families`); its task is
`training/ibq_task.py`; no card."""

from ..families import FamilySpec, register_family

register_family(
    FamilySpec(
        name="ibq-tokenizer",
        title="IBQ visual tokenizer",
        model_types=("ibq_tokenizer",),
        config="retvlp.ibq:IBQTokenizerConfig",
        model="retvlp.ibq:IBQTokenizerModel",
        loader_hint="AutoModel.from_pretrained loads it; use it as KeepFIT's ibq_tokenizer_path",
        auto_classes=(("AutoConfig", "config", "config"), ("AutoModel", "config", "model")),
        remote_code=(("config", None), ("model", "AutoModel")),
    )
)
