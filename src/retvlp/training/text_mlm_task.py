"""KeepFIT V2's preliminary textual pretraining as a `PretrainTask` (`model.family: text-mlm`): masked-language
modelling (MLM) of a BERT text encoder on an ophthalmic text corpus, before the image-text stage.

The output directory (`<output_dir>/final`) holds a `BertForMaskedLM` checkpoint and its tokenizer; the
KeepFIT text encoder starts from it with `BertModel.from_pretrained(final_dir)` (the `bert.*` weights; the MLM
head is dropped and BERT's pooler, which MLM does not train, is freshly initialised there).

The corpus is the `data.train` entries read by `retvlp.data.text_corpus.read_text_corpus` (.txt / .jsonl /
.csv / .tsv; bad lines follow `data.on_bad_sample`). The shared loop (`trainer.py`) trains it:

* micro-step `i` reads the global batch of `text-mlm.text_batch_size × processes` passages drawn by `StepSampler`
  from `(seed, i)`; passages are truncated to `model.max_text_length` tokens (KeepFIT: 256) and padded to the
  longest passage of the global batch;
* 15 % (`text-mlm.mlm_probability`) of the non-special, non-padding tokens are selected and replaced 80/10/10 by
  `[MASK]` / a random token / themselves (transformers' `DataCollatorForLanguageModeling`), with a torch
  Generator seeded from `(seed, i)` over the GLOBAL batch; each process then takes its slice of rows;
* the loss (`TextMLMTask.training_forward`) is the cross-entropy summed over the selected tokens of the process
  divided by the number selected in the whole global batch (× processes, since DDP averages gradients): the
  mean over the global batch's selected tokens, exactly as one process on the global batch computes it;
* dropout is re-seeded from `(seed, i, rank)` by the loop; a run is a pure function of the config and the step
  counter, so a resumed run is bit-identical to a straight one and 2 processes match 1 (up to float summation
  order, and with dropout off, since dropout masks are per process);
* AdamW (no weight decay on biases and LayerNorm weights), `optim.lr` — or `optim.base_lr` UNSCALED when
  `optim.lr` is None (no batch-size scaling rule for MLM) —, and everything else of the shared loop.
* Length: `optim.max_steps`, else `optim.epochs × ceil(passages / global batch)` micro-steps
  (÷ `gradient_accumulation_steps`, rounded up).

`run.evaluate`, `data.synthetic` and the image keys of `data` do not apply to this family.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..data.sampler import StepSampler
from ..data.text_corpus import TextCorpus, apply_bad_sample_policy, read_text_corpus
from .config import PretrainConfig
from .family_parts import register_training
from .run_data import RunData
from .task import PretrainTask, load_or_build_tokenizer, seed_from
from .text_mlm_section import TextMLMSection  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


# Seed-stream tags, so the masking draws never coincide with the dropout seeds (seed, micro, rank).
_MASK_STREAM = 0x4D4C4D  # "MLM"
_EVAL_STREAM = 0x4556414C  # "EVAL"
EVAL_SLICE_PASSAGES = 256  # corpus passages of the fixed end-of-training accuracy check


class MLMStepBatches(torch.utils.data.Dataset):
    """Masked-LM batches as a pure function of the micro-step: `batches[i]` is this process' slice of the global
    batch of micro-step `i`.

    The global batch (`batch_size × world_size` passages from `StepSampler(seed)`) is tokenized (truncated to
    `max_length`, padded to its longest passage) and masked by `DataCollatorForLanguageModeling` with a torch
    Generator seeded from `(seed, i)`; then rows `[rank·b, (rank+1)·b)` are taken.
    """

    def __init__(
        self,
        texts: list[str],
        tokenizer,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        max_length: int = 256,
        mlm_probability: float = 0.15,
        length: int = 0,
    ):
        from transformers import DataCollatorForLanguageModeling

        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.max_length = batch_size, max_length
        self.sampler = StepSampler(len(self.texts), batch_size, world_size=world_size, seed=seed)
        # seed=None: the collator draws from `self.collator.generator`, which is set per micro-step below.
        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability, seed=None, return_tensors="pt"
        )
        self.length = length

    def __len__(self) -> int:
        return self.length

    def epoch(self, micro_step: int) -> float:
        return self.sampler.epoch(micro_step)

    # What the loop asks of any step batches (as `StepBatches` answers it for images).
    def samples_per_micro_step(self) -> int:
        return self.sampler.global_batch_size

    def micro_steps_per_epoch(self) -> int:
        return math.ceil(len(self.texts) / self.sampler.global_batch_size)

    def log_epochs(self, micro_step: int) -> dict[str, float]:
        return {"epoch": round(self.epoch(micro_step), 4)}

    def state_epochs(self, micro_step: int) -> dict:
        return {"epoch": self.epoch(micro_step)}

    def check_resume_state(self, checkpoint, state: dict) -> None:
        """Nothing beyond the step: a corpus in memory resumes from the step alone."""

    def global_batch(self, micro_step: int) -> dict[str, Any]:
        """The whole global batch of `micro_step`: input_ids (masked), attention_mask, token_type_ids, labels
        (-100 except at selected tokens) and `rows` (corpus indices of the passages)."""
        rows = self.sampler.global_indices(micro_step)
        encoded = self.tokenizer(
            [self.texts[i] for i in rows],
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
        )
        examples = [{key: values[j] for key, values in encoded.items()} for j in range(len(rows))]
        self.collator.generator = torch.Generator().manual_seed(
            seed_from(self.seed, micro_step, _MASK_STREAM)
        )
        batch = dict(self.collator(examples))
        batch["rows"] = rows
        return batch

    def __getitem__(self, micro_step: int) -> dict[str, Any]:
        batch = self.global_batch(int(micro_step))
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        out = {key: value[lo:hi] for key, value in batch.items() if isinstance(value, torch.Tensor)}
        out["num_selected_global"] = int((batch["labels"] != -100).sum())
        return out


def build_mlm_model(config: PretrainConfig, tokenizer):
    """`BertForMaskedLM` from `model.pretrained` (a directory / Hub id; `model.config_overrides` are passed to
    `from_pretrained`) or, else, a fresh one from `model.config` (BertConfig kwargs; `vocab_size` and
    `pad_token_id` come from the tokenizer)."""
    from transformers import BertConfig, BertForMaskedLM

    m = config.model
    overrides = dict(m.config_overrides)
    if m.vision_pretrained is not None or m.text_pretrained is not None:
        raise ValueError(
            f"{config.source}: text-mlm trains a text encoder only: use model.pretrained (a BERT directory or "
            "Hub id) or model.config, not model.vision_pretrained / model.text_pretrained."
        )
    if m.pretrained is not None:
        model = BertForMaskedLM.from_pretrained(m.pretrained, **overrides)
    else:
        kwargs = {k: v for k, v in dict(m.config or {}).items() if k != "model_type"}
        kwargs.update(overrides)
        kwargs["vocab_size"] = len(tokenizer)
        if tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        model = BertForMaskedLM(BertConfig(**kwargs))
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {model.config.vocab_size}: "
            "use the tokenizer the model was trained with (leave model.tokenizer unset to take the model's)."
        )
    if config.model.max_text_length > model.config.max_position_embeddings:
        raise ValueError(
            f"model.max_text_length={config.model.max_text_length} exceeds the model's "
            f"max_position_embeddings={model.config.max_position_embeddings}."
        )
    if m.activation_checkpointing:
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()
    return model


def lowercases_cased_vocabulary(tokenizer) -> bool:
    """True when `tokenizer` lower-cases its input although its vocabulary is cased (holds both "A" and "a"):
    the usual symptom of a cased checkpoint such as Bio_ClinicalBERT loaded with a default `BertTokenizer`
    (which lower-cases); capitalised words then never reach their own embeddings."""
    vocab = tokenizer.get_vocab()
    return "A" in vocab and "a" in vocab and tokenizer.tokenize("A") == tokenizer.tokenize("a")


def mlm_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """BERT practice: weight decay on the weight matrices, none on biases and LayerNorm weights (ndim < 2)."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _mlm_terms(logits: torch.Tensor, labels: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """Cross-entropy and accuracy summed over this process' selected tokens, times `scale`
    (= processes / tokens selected in the global batch)."""
    selected = labels != -100
    chosen = logits[selected].float()
    targets = labels[selected]
    loss = torch.nn.functional.cross_entropy(chosen, targets, reduction="sum") * scale
    correct = (chosen.detach().argmax(-1) == targets).sum().float() * scale
    return {"loss": loss, "masked_accuracy": correct}


@torch.no_grad()
def fixed_slice_metrics(model, batches: MLMStepBatches, num_passages: int = EVAL_SLICE_PASSAGES) -> dict:
    """Masked-LM loss and accuracy (eval mode) on the first `num_passages` corpus passages with a fixed mask.

    These passages are part of the training corpus (there is no held-out split): a sanity check that the
    checkpoint predicts masked tokens, comparable between runs on the same corpus, not a generalisation score.
    """
    texts = batches.texts[:num_passages]
    was_training = model.training
    model.eval()
    collator = batches.collator
    loss_sum, correct, selected = 0.0, 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), max(1, batches.batch_size)):
        chunk = texts[start : start + max(1, batches.batch_size)]
        encoded = batches.tokenizer(
            chunk, truncation=True, max_length=batches.max_length, return_special_tokens_mask=True
        )
        examples = [{key: values[j] for key, values in encoded.items()} for j in range(len(chunk))]
        collator.generator = torch.Generator().manual_seed(seed_from(batches.seed, start, _EVAL_STREAM))
        batch = {k: v.to(device) for k, v in collator(examples).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits
        terms = _mlm_terms(logits, labels, 1.0)
        loss_sum += float(terms["loss"])
        correct += float(terms["masked_accuracy"])
        selected += int((labels != -100).sum())
    model.train(was_training)
    return {
        "passages": len(texts),
        "masked_tokens": selected,
        "loss": round(loss_sum / max(selected, 1), 6),
        "masked_accuracy": round(correct / max(selected, 1), 6),
    }


class TextMLMTask(PretrainTask):
    """Masked-LM pretraining of a BERT text encoder on the corpus of `data.train` (family "text-mlm")."""

    family = "text-mlm"
    loss_terms = ("loss", "masked_accuracy")
    has_image_encoder = False
    tracker_project = "text_mlm"
    progress_label = "text-mlm"

    def __init__(self) -> None:
        self.corpus: TextCorpus | None = None  # set by prepare_data
        self.world_size = 1  # set by make_batches

    def prepare_data(
        self, config: PretrainConfig, accelerator, output_dir: Path, *, show_progress: bool
    ) -> RunData:
        if config.data.synthetic is not None:
            raise ValueError(
                f"{config.source}: data.synthetic generates fundus images; text-mlm reads text corpora listed in "
                "data.train (.txt / .jsonl / .csv)."
            )
        self.corpus = apply_bad_sample_policy(
            read_text_corpus(list(config.data.train)),
            config.data.on_bad_sample,
            output_dir,
            is_main_process=accelerator.is_main_process,
        )
        return RunData(self.corpus.report)

    def text_corpus(self, streams, class_names, config):
        return self.corpus.texts

    def load_tokenizer(self, config, corpus, output_dir, accelerator):
        tokenizer = load_or_build_tokenizer(config, corpus, output_dir, accelerator)
        if accelerator.is_main_process and lowercases_cased_vocabulary(tokenizer):
            logger.warning(
                "The tokenizer lower-cases its input but its vocabulary is cased (e.g. Bio_ClinicalBERT): "
                "capitalised words will not use their own tokens. Save the tokenizer with do_lower_case=False "
                "and set model.tokenizer to it."
            )
        return tokenizer

    def build_processor(self, config, tokenizer):
        return tokenizer  # what final/ saves next to the weights

    def build_model(self, config, tokenizer):
        return build_mlm_model(config, tokenizer)

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        settings = config.family_settings
        self.world_size = world_size
        return MLMStepBatches(
            self.corpus.texts,
            tokenizer,
            settings.text_batch_size,
            rank=rank,
            world_size=world_size,
            seed=config.run.seed,
            max_length=config.model.max_text_length,
            mlm_probability=settings.mlm_probability,
        )

    def learning_rate(self, optim, samples_per_step):
        return optim.lr if optim.lr is not None else optim.base_lr  # unscaled: no batch-size rule for MLM

    def parameter_groups(self, model, weight_decay):
        return mlm_parameter_groups(model, weight_decay)

    def training_forward(self, model, batch, device):
        """The MLM terms normalised by the global batch's selected tokens (× processes: DDP averages)."""
        scale = self.world_size / max(int(batch.pop("num_selected_global")), 1)
        labels = batch.pop("labels").to(device)
        batch = {key: value.to(device) for key, value in batch.items()}
        outputs = model(**batch)
        return _mlm_terms(outputs.logits, labels, scale), outputs

    def describe_training(self, start_step, total_steps, samples_per_step, world, lr):
        return (
            f"Training the MLM text encoder, steps {start_step + 1}-{total_steps} of {total_steps}, on "
            f"{len(self.corpus)} passages."
        )

    def check_resume(self, checkpoint, state):
        if state.get("num_passages") != len(self.corpus):
            raise ValueError(
                f"{checkpoint} was written by a run on {state.get('num_passages')} passages; this corpus has "
                f"{len(self.corpus)}. Resume with the same corpus (or start a new output_dir)."
            )

    def checkpoint_fields(self):
        return {"num_passages": len(self.corpus)}

    def training_summary(self, *, steps, last_metrics, data, world_size, model, batches, config):
        return {
            "family": "text-mlm",
            "steps": steps,
            "last_loss": last_metrics.get("loss"),
            "last_metrics": last_metrics,
            "corpus_files": self.corpus.files,
            "corpus_passages": len(self.corpus),
            "skipped_samples": len(data.report.bad_records),
            "max_text_length": config.model.max_text_length,
            "mlm_probability": config.family_settings.mlm_probability,
            "world_size": world_size,
            "fixed_slice": fixed_slice_metrics(model, batches),
            "load_text_encoder_with": "transformers.BertModel.from_pretrained(this directory)",
        }

    def zero_shot_prompts(self, config, class_names):
        return None


register_training("text-mlm", task=TextMLMTask, section=TextMLMSection)


__all__ = [
    "TextMLMSection",
    "MLMStepBatches",
    "TextMLMTask",
    "build_mlm_model",
    "fixed_slice_metrics",
    "lowercases_cased_vocabulary",
    "mlm_parameter_groups",
]
