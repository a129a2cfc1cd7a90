"""KeepFIT V2's preliminary textual pretraining: masked-language modelling (MLM) of a BERT text encoder on an
ophthalmic text corpus, before the image-text stage.

The output directory (`<output_dir>/final`) holds a `BertForMaskedLM` checkpoint and its tokenizer; the
KeepFIT text encoder starts from it with `BertModel.from_pretrained(final_dir)` (the `bert.*` weights; the MLM
head is dropped and BERT's pooler, which MLM does not train, is freshly initialised there).

Corpus (`data.train` entries, read by `read_text_corpus`): `{path, text_column?, format?}` with

* `.txt`: one passage per non-blank line;
* `.jsonl`: one JSON object per line, the passage in `text_column` (default "text");
* `.csv` / `.tsv`: a header line, the passage in column `text_column`.

Every bad passage (a line that is not UTF-8, not JSON, an empty / missing / non-string text field, broken CSV
quoting) becomes a `DataProblem` naming `file:line`; `data.on_bad_sample` decides: "error" stops with the full
report (`DataValidationError`), "skip" trains on the rest and lists the skipped lines in
`<output_dir>/skipped_samples.jsonl`. A missing file is always an error (`FileNotFoundError`).

Training (`pretrain_text_mlm`):

* micro-step `i` reads the global batch of `data.text_batch_size × processes` passages drawn by `StepSampler`
  from `(seed, i)`; passages are truncated to `model.max_text_length` tokens (KeepFIT: 256) and padded to the
  longest passage of the global batch;
* 15 % (`data.mlm_probability`) of the non-special, non-padding tokens are selected and replaced 80/10/10 by
  `[MASK]` / a random token / themselves (transformers' `DataCollatorForLanguageModeling`), with a torch
  Generator seeded from `(seed, i)` over the GLOBAL batch; each process then takes its slice of rows;
* the loss is the cross-entropy summed over the selected tokens of the process divided by the number selected in
  the whole global batch (× processes, since DDP averages gradients): the mean over the global batch's selected
  tokens, exactly as one process on the global batch computes it;
* dropout is re-seeded from `(seed, i, rank)`; a run is a pure function of the config and the step counter, so a
  resumed run is bit-identical to a straight one and 2 processes match 1 (up to float summation order, and with
  dropout off, since dropout masks are per process);
* AdamW (no weight decay on biases and LayerNorm weights), `optim.lr` — or `optim.base_lr` UNSCALED when
  `optim.lr` is None (no batch-size scaling rule for MLM) —, transformers' scheduler `optim.schedule` with
  warm-up, gradient accumulation, clipping, bf16 autocast via `run.mixed_precision`, NaN stop, `logs.jsonl`,
  atomic `checkpoint-{step}` directories and `--resume latest`, exactly as the MaskedCLIP trainer.
* Length: `optim.max_steps`, else `optim.epochs × ceil(passages / global batch)` micro-steps
  (÷ `gradient_accumulation_steps`, rounded up).

`run.evaluate`, `data.synthetic` and the image keys of `data` do not apply to this family.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.manifest import _readable, _split_lines, _utf8_problem_message
from ..data.sampler import StepSampler
from ..data.validation import DataProblem, DataValidationError, ValidationReport, make_problem
from .checkpointing import check_resume_length, load_checkpoint, resolve_resume, save_checkpoint
from .config import PretrainConfig
from .maskedclip_task import load_or_build_tokenizer
from .progress import StepProgress, phase
from .trainer import (
    JsonlLog,
    PretrainResult,
    _seed_from,
    _stop_if_nonfinite,
    _to_yaml,
    _warmup_steps,
    configure_threads,
)

logger = logging.getLogger(__name__)

SPEC_KEYS = ("path", "text_column", "format")
CORPUS_FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIX_FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}
# Seed-stream tags, so the masking draws never coincide with the dropout seeds (seed, micro, rank).
_MASK_STREAM = 0x4D4C4D  # "MLM"
_EVAL_STREAM = 0x4556414C  # "EVAL"
EVAL_SLICE_PASSAGES = 256  # corpus passages of the fixed end-of-training accuracy check


# ------------------------------------------------------------------------------------------------------------
# Corpus


@dataclass
class TextCorpus:
    """The good passages of a text corpus, where each came from, and every problem found while reading.

    Attributes:
        texts: the passages (stripped of surrounding whitespace), in file order.
        origins: `(source, line)` of each passage (1-based line number; for CSV the line the record starts on).
        report: the problems (bad lines) found; `report.num_records` counts good and bad passages.
        files: the files read, as given in the specs.
    """

    texts: list[str]
    origins: list[tuple[str, int]]
    report: ValidationReport
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _corpus_format(spec: dict[str, Any], path: str) -> str:
    fmt = spec.get("format")
    if fmt is None:
        fmt = _SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise ValueError(
                f"{path}: cannot tell the corpus format from the file name; set format to one of "
                f"{list(CORPUS_FORMATS)} in its data.train entry."
            )
    if fmt not in CORPUS_FORMATS:
        raise ValueError(f"{path}: format={fmt!r}; choose one of {list(CORPUS_FORMATS)}.")
    return fmt


def _read_txt(data: bytes, source: str) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    lines, offsets = _split_lines(data)
    passages, problems, count = [], [], 0
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        count += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", _utf8_problem_message(line, offsets[index], exc, number)
                )
            )
            continue
        text = text.strip()
        if not text:  # e.g. only a form feed or a non-breaking space
            problems.append(
                make_problem(source, number, "", "empty-caption", "the line holds only whitespace")
            )
            continue
        passages.append((number, text))
    return passages, problems, count


def _text_field(source: str, number: int, values: dict, column: str) -> tuple[str | None, DataProblem | None]:
    if column not in values:
        keys = ", ".join(repr(k) for k in list(values)[:10])
        return None, make_problem(
            source,
            number,
            "",
            "empty-caption",
            f"no {column!r} field (fields: {keys or 'none'}); add the text or set text_column in the "
            "data.train entry",
        )
    value = values[column]
    if value is None:
        return None, make_problem(source, number, "", "empty-caption", f"the {column!r} field is null")
    if not isinstance(value, str):
        return None, make_problem(
            source,
            number,
            "",
            "unparseable-row",
            f"the {column!r} field is {type(value).__name__} {value!r:.60}, not a string",
        )
    text = value.strip()
    if not text:
        return None, make_problem(source, number, "", "empty-caption", f"the {column!r} field is empty")
    return text, None


def _read_jsonl(
    data: bytes, source: str, column: str
) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    lines, offsets = _split_lines(data)
    passages, problems, count = [], [], 0
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        count += 1
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", _utf8_problem_message(line, offsets[index], exc, number)
                )
            )
            continue
        try:
            item = json.loads(decoded)
        except ValueError as exc:
            message = getattr(exc, "msg", str(exc))
            column_number = getattr(exc, "colno", None)
            where = f" at column {column_number}" if column_number else ""
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"not valid JSON ({message}{where}); fix the line (one JSON object per line)",
                )
            )
            continue
        if not isinstance(item, dict):
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"a JSON object was expected, got {type(item).__name__}",
                )
            )
            continue
        text, problem = _text_field(source, number, item, column)
        if problem is not None:
            problems.append(problem)
        else:
            passages.append((number, text))
    return passages, problems, count


def _read_delimited(
    data: bytes, source: str, column: str, delimiter: str
) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    lines, offsets = _split_lines(data)
    bad_lines: dict[int, tuple[bytes, int, UnicodeDecodeError]] = {}
    decoded = []
    for index, line in enumerate(lines):
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad_lines[index] = (line, offsets[index], exc)
            decoded.append(line.decode("utf-8", "surrogateescape"))
    consumed = 0

    def feed():
        nonlocal consumed
        for index, text in enumerate(decoded):
            consumed = index + 1
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    passages: list[tuple[int, str]] = []
    problems: list[DataProblem] = []
    header: list[str] | None = None
    position = -1
    count = 0
    while True:
        start = consumed
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise ValueError(f"{source}: cannot parse the header line ({exc}); fix its quoting") from None
            count += 1
            end = max(consumed, start + 1)
            span = f"line {start + 1}" if end == start + 1 else f"lines {start + 1}-{end}"
            problems.append(
                make_problem(
                    source,
                    start + 1,
                    "",
                    "unparseable-row",
                    f"broken CSV quoting on {span} ({exc}); quote fields that contain {delimiter!r}, quotes or "
                    'line breaks ("..." with inner quotes doubled) and check for an unclosed quote',
                )
            )
            continue
        if not any(f.strip() for f in fields):
            continue  # blank line (or only delimiters)
        number = start + 1
        bad = [i for i in range(start, consumed) if i in bad_lines]
        if header is None:
            header = [_readable(f).strip() for f in fields]
            header[0] = header[0].lstrip("\ufeff")
            if column not in header:
                folded = [h for h in header if h.lower() == column.lower()]
                if len(folded) != 1:
                    raise ValueError(
                        f"{source}: no column {column!r} in the header (columns: {header}); set text_column "
                        "in its data.train entry."
                    )
                column = folded[0]
            position = header.index(column)
            if bad:
                line, offset, exc = bad_lines[bad[0]]
                raise ValueError(
                    f"{source}: the header " + _utf8_problem_message(line, offset, exc, bad[0] + 1)
                )
            continue
        count += 1
        if bad:
            line, offset, exc = bad_lines[bad[0]]
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", _utf8_problem_message(line, offset, exc, bad[0] + 1)
                )
            )
            continue
        if len(fields) > len(header):
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"the row has {len(fields)} fields but the header has {len(header)} (an unquoted "
                    f"{delimiter!r} inside the text?); quote that field",
                )
            )
            continue
        text = fields[position].strip() if position < len(fields) else ""
        if not text:
            problems.append(
                make_problem(source, number, "", "empty-caption", f"the {column!r} field is empty")
            )
            continue
        passages.append((number, text))
    return passages, problems, count


def read_text_corpus(specs: list[dict[str, Any]]) -> TextCorpus:
    """Read the passages of every corpus file in `specs` (the `data.train` entries of a text-mlm run).

    Each spec is `{path, text_column?: "text", format?: "txt" | "jsonl" | "csv" | "tsv"}` (format from the
    suffix when not given). Bad lines are never dropped silently: each becomes a problem in `corpus.report`
    (kinds `not-utf8`, `unparseable-row`, `empty-caption`) naming `file:line`; apply `data.on_bad_sample` to
    them with `apply_bad_sample_policy`.

    Raises:
        FileNotFoundError: a file does not exist (named in the message).
        ValueError: an unknown spec key or format, or a CSV without the text column.
    """
    texts: list[str] = []
    origins: list[tuple[str, int]] = []
    problems: list[DataProblem] = []
    files: list[str] = []
    num_records = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "path" not in spec:
            raise ValueError(
                f"data.train[{i}] must be a mapping with a 'path' to a text corpus file (got {spec!r}); "
                "text-mlm reads .txt / .jsonl / .csv files."
            )
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(
                f"data.train[{i}] ({spec.get('path')}): key(s) {unknown} do not apply to a text corpus; "
                f"valid keys: {list(SPEC_KEYS)}."
            )
        path = os.fspath(spec["path"])
        source = str(path)
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(f"Text corpus file {path} {what} (data.train[{i}]).")
        fmt = _corpus_format(spec, path)
        column = spec.get("text_column") or "text"
        with open(path, "rb") as handle:
            data = handle.read()
        if fmt == "txt":
            passages, found, count = _read_txt(data, source)
        elif fmt == "jsonl":
            passages, found, count = _read_jsonl(data, source, column)
        else:
            passages, found, count = _read_delimited(data, source, column, "," if fmt == "csv" else "\t")
        files.append(source)
        num_records += count
        problems.extend(found)
        for number, text in passages:
            texts.append(text)
            origins.append((source, number))
    order = {source: k for k, source in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.source, len(order)), p.row))
    return TextCorpus(texts, origins, ValidationReport(problems=problems, num_records=num_records), files)


def apply_bad_sample_policy(
    corpus: TextCorpus, on_bad_sample: str, output_dir: str | os.PathLike, *, is_main_process: bool = True
) -> TextCorpus:
    """Apply `data.on_bad_sample` to the corpus' problems and return the corpus to train on.

    "error": any problem raises `DataValidationError` with the full report. "skip": the good passages are kept,
    every skipped line is written to `<output_dir>/skipped_samples.jsonl` (`{source, row, problems}`) and the
    count is logged. In both cases the problems are also written to `<output_dir>/data_problems.jsonl`.

    Raises:
        ValueError: no passage is left to train on (the message names the files).
    """
    output_dir = Path(output_dir)
    report = corpus.report
    if is_main_process and report.problems:
        output_dir.mkdir(parents=True, exist_ok=True)
        report.write_jsonl(output_dir / "data_problems.jsonl")
    if report.errors and on_bad_sample == "error":
        raise DataValidationError(report, context="text-mlm corpus")
    if report.errors:
        reasons: dict[tuple[str, int], list[str]] = {}
        for problem in report.errors:
            reasons.setdefault((problem.source, problem.row), []).append(f"{problem.kind}: {problem.message}")
        if is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            with open(output_dir / "skipped_samples.jsonl", "w", encoding="utf-8") as handle:
                for (source, row), found in reasons.items():
                    handle.write(json.dumps({"source": source, "row": row, "problems": found}) + "\n")
        logger.warning(
            "Skipped %d of %d corpus passages with errors (on_bad_sample=skip); listed in %s",
            len(reasons),
            report.num_records,
            output_dir / "skipped_samples.jsonl",
        )
    if not corpus.texts:
        skipped = len(report.bad_records)
        raise ValueError(
            f"The text corpus is empty: no passage to train on in {corpus.files}"
            + (
                f" ({skipped} bad line(s) skipped, see {output_dir / 'skipped_samples.jsonl'})"
                if skipped
                else ""
            )
            + "; check the files and their text_column."
        )
    return corpus


# ------------------------------------------------------------------------------------------------------------
# Batches


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
            _seed_from(self.seed, micro_step, _MASK_STREAM)
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


# ------------------------------------------------------------------------------------------------------------
# Model


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


def _total_steps(config: PretrainConfig, num_passages: int, global_batch: int) -> int:
    o = config.optim
    if o.max_steps is not None:
        return int(o.max_steps)
    micro_per_epoch = math.ceil(num_passages / global_batch)
    return max(1, math.ceil(o.epochs * micro_per_epoch / o.gradient_accumulation_steps))


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
        collator.generator = torch.Generator().manual_seed(_seed_from(batches.seed, start, _EVAL_STREAM))
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


# ------------------------------------------------------------------------------------------------------------
# Loop


def pretrain_text_mlm(
    config: PretrainConfig,
    *,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    extend: bool = False,
) -> PretrainResult:
    """Masked-LM pretraining of a BERT text encoder on the corpus of `config.data.train` (family "text-mlm").

    Args:
        resume: "latest" (newest complete checkpoint in `run.output_dir`, or a fresh start when none) or a
            checkpoint directory.
        extend: allow resuming into a longer run than the checkpoint's (see `check_resume_length`).
        stop_after: stop (without the final save) after this many optimizer steps — for tests of resume.

    Returns:
        A `PretrainResult`; `final_dir` (written when the run completes) holds `BertForMaskedLM` weights, the
        tokenizer and `training_summary.json`, and loads with `BertModel.from_pretrained(final_dir)`.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import is_tensorboard_available
    from transformers import get_scheduler

    if config.model.family != "text-mlm":
        raise ValueError(
            f"{config.source}: pretrain_text_mlm needs model.family=text-mlm, got {config.model.family}."
        )
    run, data, optim = config.run, config.data, config.optim
    if data.synthetic is not None:
        raise ValueError(
            f"{config.source}: data.synthetic generates fundus images; text-mlm reads text corpora listed in "
            "data.train (.txt / .jsonl / .csv)."
        )
    output_dir = Path(run.output_dir)
    trackers = ["tensorboard"] if run.tensorboard and is_tensorboard_available() else None
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision, log_with=trackers, project_dir=str(output_dir)
    )
    configure_threads(run.num_threads)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes

    # ---------------------------------------------------------------- data
    corpus = apply_bad_sample_policy(
        read_text_corpus(list(data.train)), data.on_bad_sample, output_dir, is_main_process=main
    )
    skipped = len(corpus.report.bad_records)

    # ---------------------------------------------------------------- model
    tokenizer = load_or_build_tokenizer(config, corpus.texts, output_dir, accelerator)
    if main and lowercases_cased_vocabulary(tokenizer):
        logger.warning(
            "The tokenizer lower-cases its input but its vocabulary is cased (e.g. Bio_ClinicalBERT): "
            "capitalised words will not use their own tokens. Save the tokenizer with do_lower_case=False "
            "and set model.tokenizer to it."
        )
    torch.manual_seed(run.seed)
    model = build_mlm_model(config, tokenizer)
    batches = MLMStepBatches(
        corpus.texts,
        tokenizer,
        data.text_batch_size,
        rank=rank,
        world_size=world,
        seed=run.seed,
        max_length=config.model.max_text_length,
        mlm_probability=data.mlm_probability,
    )
    global_batch = data.text_batch_size * world
    total_steps = _total_steps(config, len(corpus), global_batch)
    accumulation = optim.gradient_accumulation_steps
    batches.length = total_steps * accumulation
    passages_per_step = global_batch * accumulation
    lr = optim.lr if optim.lr is not None else optim.base_lr  # unscaled: no batch-size rule for MLM

    optimizer = torch.optim.AdamW(
        mlm_parameter_groups(model, optim.weight_decay), lr=lr, betas=tuple(optim.betas), eps=optim.eps
    )
    scheduler = get_scheduler(
        optim.schedule,
        optimizer,
        num_warmup_steps=_warmup_steps(config, total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    # ---------------------------------------------------------------- resume
    start_step = 0
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        if state.get("num_passages") != len(corpus):
            raise ValueError(
                f"{checkpoint} was written by a run on {state.get('num_passages')} passages; this corpus has "
                f"{len(corpus)}. Resume with the same corpus (or start a new output_dir)."
            )
        check_resume_length(checkpoint, state, total_steps, extend=extend)
        start_step = int(state["step"])
        scheduler.load_state_dict(state["scheduler"])
        if main:
            logger.info("Resumed from %s at step %d", checkpoint, start_step)
    log = JsonlLog(output_dir / "logs.jsonl", start_step if checkpoint else None, main)
    if trackers:
        accelerator.init_trackers(
            "text_mlm", config={"total_steps": total_steps, "lr": lr, "world_size": world}
        )
    if main:
        (output_dir / "run_config.yaml").write_text(_to_yaml(config))

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(batches, range(start_step * accumulation, total_steps * accumulation)),
        batch_size=None,
        num_workers=data.num_workers,
        persistent_workers=False,
        prefetch_factor=2 if data.num_workers else None,
    )
    phase(
        "Training the MLM text encoder, steps %d-%d of %d, on %d passages.",
        start_step + 1,
        total_steps,
        total_steps,
        len(corpus),
        enabled=main,
    )
    progress = StepProgress(total_steps, start_step, "text-mlm", show_bar=show_progress, enabled=main)

    model.train()
    device = accelerator.device
    last_metrics: dict[str, Any] = {}
    sums: dict[str, torch.Tensor] = {}
    window_start, window_passages, counted = time.perf_counter(), 0, 0
    step = start_step
    micro = start_step * accumulation
    batch_iter = iter(loader)
    while step < total_steps:
        for k in range(accumulation):
            batch = next(batch_iter)
            scale = world / max(int(batch.pop("num_selected_global")), 1)
            labels = batch.pop("labels").to(device)
            batch = {key: value.to(device) for key, value in batch.items()}
            torch.manual_seed(_seed_from(run.seed, micro, rank))
            sync = k == accumulation - 1
            with accelerator.no_sync(model) if not sync else nullcontext():
                logits = model(**batch).logits
                terms = _mlm_terms(logits, labels, scale)
                _stop_if_nonfinite(accelerator, terms["loss"], step, terms, output_dir)
                accelerator.backward(terms["loss"] / accumulation)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            counted += 1
            micro += 1
        grad_norm = None
        if optim.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            _stop_if_nonfinite(accelerator, grad_norm, step, {"grad_norm": grad_norm}, output_dir)
        else:
            # Without clipping the gradients are still checked before the update: an infinite max_norm gives the
            # total norm and scales by exactly 1 (nothing changes), so a NaN / Inf gradient stops the run before
            # optimizer.step() applies it.
            unclipped = accelerator.clip_grad_norm_(model.parameters(), float("inf"))
            _stop_if_nonfinite(accelerator, unclipped, step, {"grad_norm": unclipped}, output_dir)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_passages += passages_per_step
        progress.update(1)

        if step % run.log_every == 0 or step == total_steps:
            means = {name: accelerator.reduce(total / counted, "mean").item() for name, total in sums.items()}
            elapsed = time.perf_counter() - window_start
            entry = {
                "step": step,
                "epoch": round(batches.epoch(micro), 4),
                **{name: round(v, 6) for name, v in means.items()},
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": round(window_passages / elapsed, 2),
            }
            if grad_norm is not None:
                entry["grad_norm"] = round(float(grad_norm), 6)
            log.write(entry)
            if trackers:
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
            progress.log_step(entry)
            last_metrics = entry
            sums, counted, window_passages, window_start = {}, 0, 0, time.perf_counter()

        if step % run.save_every == 0 or step == total_steps:
            state = {
                "step": step,
                "micro_step": micro,
                "total_steps": total_steps,
                "epoch": batches.epoch(micro),
                "num_passages": len(corpus),
                "scheduler": scheduler.state_dict(),
                "world_size": world,
                "skipped_samples": skipped,
                "config": config.to_dict(),
            }
            save_checkpoint(
                accelerator,
                output_dir,
                step,
                state,
                keep=run.keep_checkpoints,
                models=[unwrapped],
                optimizers=[optimizer],
            )
        if stop_after is not None and step >= stop_after:
            break
    progress.close()

    final_dir = output_dir / "final"
    if step == total_steps:
        accelerator.wait_for_everyone()
        full_state = accelerator.get_state_dict(model)  # collective: gathers FSDP / DeepSpeed shards
        if main:
            unwrapped.save_pretrained(final_dir, state_dict=full_state)
            tokenizer.save_pretrained(final_dir)
            summary = {
                "family": "text-mlm",
                "steps": step,
                "last_loss": last_metrics.get("loss"),
                "last_metrics": last_metrics,
                "corpus_files": corpus.files,
                "corpus_passages": len(corpus),
                "skipped_samples": skipped,
                "max_text_length": config.model.max_text_length,
                "mlm_probability": data.mlm_probability,
                "world_size": world,
                "fixed_slice": fixed_slice_metrics(unwrapped, batches),
                "load_text_encoder_with": "transformers.BertModel.from_pretrained(this directory)",
            }
            (final_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainResult(output_dir, final_dir, step, last_metrics, None)


__all__ = [
    "MLMStepBatches",
    "TextCorpus",
    "apply_bad_sample_policy",
    "build_mlm_model",
    "fixed_slice_metrics",
    "lowercases_cased_vocabulary",
    "mlm_parameter_groups",
    "pretrain_text_mlm",
    "read_text_corpus",
]
