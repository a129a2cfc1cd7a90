"""The pretraining run description: one YAML file with the common sections (model, data, optim, run) and
one section named after the model family (`maskedclip:`, `keepfit:`, `ibq-tokenizer:`, `text-mlm:`) holding
what only that family reads (its batch sizes, prompt settings, MLM probability, ...).

Every key is checked: an unknown or misspelt key is an error naming the section, the key and the keys
that exist, never silently ignored, and every value is checked against its field's annotation (an error
names the section, the key, the expected and the given type). Each section validates its own values.
Defaults are the MaskedCLIP paper's where it gives them (see `training/configs/maskedclip_vitl16.yaml` for
the full paper setting). Configs of the earlier layout, with the family keys under `data`, still load: each
such key is moved to the family section with a warning that names the new place.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..data.limits import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, parse_size
from ..families import families, family_names
from .family_parts import section_of

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("error", "skip")
MIXED_PRECISION = ("no", "bf16", "fp16")
OPTIMIZER_IMPLEMENTATIONS = ("fused", "foreach", "for-loop")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COLLAPSE_GUARD_ACTIONS = ("warn", "stop", "off")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-4` (no dot) as a string; users write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the file, section and key."""


Fail = Callable[[str], typing.NoReturn]


# --------------------------------------------------------------------------- type checks
def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as YAML gives it) fits the annotation `hint`; an int is a valid float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
        )
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if hint is type(None):
        return "null"
    if hint is float:
        return "a number"
    if origin is list:
        plural = {str: "strings", int: "integers", float: "numbers", dict: "mappings"}
        inner = args[0] if args else None
        return (
            f"a list of {plural.get(typing.get_origin(inner) or inner, _describe(inner))}"
            if args
            else "a list"
        )
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _yaml_type(value: Any) -> str:
    return {type(None): "null", dict: "mapping", list: "list"}.get(type(value), type(value).__name__)


def check_types(section_name: str, section: Any, fail: Fail) -> None:
    """Check every field of a section dataclass against its annotation."""
    hints = typing.get_type_hints(type(section))
    for spec in dataclasses.fields(section):
        value, hint = getattr(section, spec.name), hints[spec.name]
        if not _matches(value, hint):
            fail(
                f"{section_name}.{spec.name} expects {_describe(hint)}, got {_yaml_type(value)} ({value!r})."
            )


def _positive_batch(section_name: str, section: Any, keys: tuple[str, ...], fail: Fail) -> None:
    names = [f"{section_name}.{key}" for key in keys]
    if any(getattr(section, key) < 0 for key in keys):
        fail(f"{', '.join(names)} must be non-negative.")
    if not any(getattr(section, key) for key in keys):
        fail(f"{' and '.join(names)} are all 0: no rows per step.")


# --------------------------------------------------------------------------- common sections
@dataclass
class ModelSection:
    family: str = "maskedclip"
    # How the model is built: `pretrained` (a directory or Hub id of the family, to continue from), or
    # `config` (kwargs of the family's config class: what is built fresh) with, for the dual encoders
    # (MaskedCLIP, KeepFIT: `FamilySection.pretrained_towers`), each tower optionally from its own checkpoint —
    # `vision_pretrained` (ViT-MAE / converted RETFound for MaskedCLIP, an image backbone such as a ResNet for
    # KeepFIT) and `text_pretrained` (a BERT: Bio_ClinicalBERT or a `text-mlm` output), alone, both or
    # neither; a pretrained tower's size comes from its checkpoint (`model.config` may not contradict it).
    # IBQ tokenizer: `config` (IBQTokenizerConfig kwargs) or `pretrained`. text-mlm: `config` (BertConfig
    # kwargs) or `pretrained` (a BERT to continue from).
    config: dict[str, Any] | None = None
    pretrained: str | None = None
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # Tokenizer: a directory / Hub id, or "build" to train a WordPiece vocabulary on the run's own texts
    # (offline demo); `None` takes the tokenizer of `text_pretrained` / `pretrained`.
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 2000
    max_text_length: int = 77  # tokens
    activation_checkpointing: bool = False

    def validate(self, fail: Fail) -> None:
        if self.family not in family_names():
            fail(
                f"model.family={self.family!r} is not available{did_you_mean([self.family], family_names())}; "
                f"choose one of {list(family_names())}."
            )
        if self.tokenizer_vocab_size < 1 or self.max_text_length < 1:
            fail("model.tokenizer_vocab_size and model.max_text_length must be >= 1.")


@dataclass
class DataSection:
    """What every family reads: the rows, how images are checked and cached, and the augmentation."""

    # Manifest specs: {path, role?, image_root?, image_column?, text_column?, label_column?, group_column?,
    # format?} — see `retvlp.data.manifest.read_manifest` — or {hf_dataset: dir or Hub id, split?, image_column?,
    # ...} for a `datasets` dataset. Roles come from the rows unless `role` forces one. Or shard sets written by
    # `retvlp prepare-data`: {shards: directory or fsspec URL (file://, s3://, gs://, hf://, memory://),
    # storage_options?: {...}} — read as a stream (docs/scale-out.md); all specs are shards, or none.
    train: list[dict[str, Any]] = field(default_factory=list)
    # Generate the procedural demo data instead of reading manifests: kwargs of `generate_synthetic_dataset`.
    synthetic: dict[str, Any] | None = None
    classes: list[str] | None = None  # class list (default: labels found in the data, sorted)
    image_size: int = 224  # px, square; the paper's 224
    pad_to_square: bool = False
    crop_to_fov: bool = False
    cache_dir: str | None = None  # default $RETVLP_CACHE/images or ~/.cache/retvlp/images
    on_bad_sample: str = "error"  # "error": stop with the report; "skip": drop, count, log and list them
    min_image_size: int = DEFAULT_MIN_SIZE  # px, shorter side (32, also the image processor's min_size)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit (Pillow's own 2× default)
    # Data roots (retvlp/data/roots.py): an image path that resolves (symlinks, `..`) outside its manifest's
    # folder, the spec's image_root and these extra folders is an `outside-data-root` problem and never read.
    allowed_roots: list[str] = field(default_factory=list)
    allow_outside_data_roots: bool = False  # true: manifests may point anywhere (no containment check)
    # Augmentation of the cached images, drawn from (seed, step): random-resized-crop area range and flips.
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    horizontal_flip: bool = False  # off: captions may name the eye, and a flip moves the disc
    # Streams drawn in class-balanced epochs (every label set equally often, rows without a label as one more
    # set; rows of rare classes repeat): e.g. [paired] (MaskedCLIP) or [categorical] (KeepFIT). Beyond both
    # papers, whose loaders draw rows uniformly ([]); docs/real_data.md §1 measures it on both small CPU recipes.
    balance_classes: list[str] = field(default_factory=list)
    num_workers: int = 2  # DataLoader workers assembling step batches
    preprocessing_workers: int | None = None  # processes decoding images into the cache (default: CPUs)
    # Size limit of the shared image cache (e.g. "200GB", "500GiB"): after a build, least recently used shards
    # of the pool that this run does not use are evicted down to it (None: no limit; `retvlp cache prune`).
    cache_max_size: str | None = None
    # Shard streams (data.train with `shards` specs): readers per stream (a multiple of the process count that
    # divides the stream's global batch; None: the largest such number up to 8, see ShardedStepSampler), rows
    # per shuffle window of a reader, and how shards are checked when opened ("size": every shard exists with
    # its recorded size; "full": read them all and check every member's checksum).
    stream_readers: int | dict[str, int] | None = None  # e.g. 8, or {paired: 8, unpaired: 4}
    shuffle_buffer: int = 1024  # rows
    verify_shards: str = "size"

    def validate(self, fail: Fail) -> None:
        if not self.train and self.synthetic is None:
            fail("data.train lists no manifests (and data.synthetic is not set): nothing to train on.")
        for i, spec in enumerate(self.train):
            if (
                not isinstance(spec, dict)
                or sum(key in spec for key in ("path", "hf_dataset", "shards")) != 1
            ):
                fail(
                    f"data.train[{i}] must be a mapping with one of 'path', 'hf_dataset' or 'shards' (got {spec!r})."
                )
        kinds = {"shards" in spec for spec in self.train if isinstance(spec, dict)}
        if len(kinds) > 1 or (kinds == {True} and self.synthetic is not None):
            fail(
                "data.train mixes shard sets ('shards') with manifests (or data.synthetic): prepare the manifests "
                "as shards too (`retvlp prepare-data`), or train every source from manifests."
            )
        counts = (
            self.stream_readers.values() if isinstance(self.stream_readers, dict) else [self.stream_readers]
        )
        if any(count is not None and (not isinstance(count, int) or count < 1) for count in counts):
            fail(
                f"data.stream_readers must be a positive number of readers (or one per stream), got {self.stream_readers}."
            )
        if self.shuffle_buffer < 0:
            fail(f"data.shuffle_buffer must be a number of rows >= 0, got {self.shuffle_buffer}.")
        if self.verify_shards not in ("size", "full"):
            fail(f"data.verify_shards={self.verify_shards!r}; choose 'size' or 'full'.")
        if self.cache_max_size is not None:
            try:
                parse_size(self.cache_max_size)
            except ValueError as error:
                fail(f"data.cache_max_size: {error}.")
        if not all(root.strip() for root in self.allowed_roots):
            fail(f"data.allowed_roots must be a list of folder paths, got {self.allowed_roots!r}.")
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            fail(f"data.on_bad_sample={self.on_bad_sample!r}; choose one of {list(BAD_SAMPLE_POLICIES)}.")
        if self.image_size <= 0:
            fail("data.image_size must be positive.")
        if not all(name.strip() for name in self.balance_classes):
            fail(
                f"data.balance_classes must list stream names (e.g. [paired]), got {self.balance_classes!r}."
            )
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            fail(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}.")


@dataclass
class OptimSection:
    lr: float | None = None  # absolute learning rate; when None, lr = base_lr × images per step / 256
    base_lr: float = 1.5e-4  # MAE convention; the paper's 1.5e-4 may be either (METHODS.md §1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05  # not applied to biases, norms, position tables, tokens, logit scale
    eps: float = 1e-8
    max_steps: int | None = None  # optimizer steps; or
    epochs: float | None = 200  # epochs: every row of every stream seen once per epoch
    warmup_steps: int | None = None
    warmup_epochs: float = 40
    schedule: str = "cosine"  # a transformers scheduler name: cosine, linear, constant_with_warmup, ...
    gradient_accumulation_steps: int = 1
    # With accumulation, compute every image-text contrastive term over the whole accumulated batch (GradCache:
    # embed without a graph, the term's embedding gradients, then each micro-batch again with a graph) instead
    # of per micro-batch; one extra forward per micro-batch (training/contrastive_accumulation.py).
    contrastive_accumulation: bool = False
    max_grad_norm: float | None = 1.0  # None: no clipping
    # Learning rate of the contrastive temperature (logit_scale; a sigmoid loss's logit_bias too) as a multiple of
    # lr. 1 = one rate for everything (both papers). A run that starts the scale low (model.config.
    # logit_scale_init_value: 0, i.e. exp(τ) = 1) needs it > 1 for the scale to grow within a short run
    # (docs/real_data.md §1 measures 30).
    logit_scale_lr_multiplier: float = 1.0
    # AdamW's kernel: "fused" (one kernel over all parameters, CPU and CUDA), "foreach" (batched tensor ops) or
    # "for-loop" (torch's reference per-parameter loop, the default before 0.3).
    implementation: str = "fused"

    def validate(self, fail: Fail) -> None:
        if self.implementation not in OPTIMIZER_IMPLEMENTATIONS:
            fail(
                f"optim.implementation={self.implementation!r}; choose one of {list(OPTIMIZER_IMPLEMENTATIONS)}."
            )
        if self.max_steps is None and self.epochs is None:
            fail("set optim.max_steps or optim.epochs.")
        if self.max_steps is not None and self.max_steps <= 0:
            fail(f"optim.max_steps must be positive, got {self.max_steps}.")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            fail(f"optim.warmup_steps must be >= 0 (or null: optim.warmup_epochs), got {self.warmup_steps}.")
        if (
            self.warmup_steps is not None
            and self.max_steps is not None
            and self.warmup_steps >= self.max_steps
        ):
            # Refused, not clipped: a run that is all warm-up ends at the peak learning rate and never decays.
            fail(
                warmup_too_long_message(
                    "optim.warmup_steps", self.warmup_steps, "optim.max_steps", self.max_steps
                )
            )
        if self.gradient_accumulation_steps < 1:
            fail("optim.gradient_accumulation_steps must be >= 1.")
        if not math.isfinite(self.logit_scale_lr_multiplier) or self.logit_scale_lr_multiplier <= 0:
            fail(
                f"optim.logit_scale_lr_multiplier must be a positive number, got {self.logit_scale_lr_multiplier!r}."
            )
        for name in ("lr", "base_lr", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                fail(f"optim.{name} must be a non-negative number, got {value!r}.")
        if len(self.betas) != 2:
            fail(f"optim.betas must have two values, got {self.betas}.")


@dataclass
class RunSection:
    output_dir: str = "outputs/pretrain"
    seed: int = 0
    mixed_precision: str = "no"  # "bf16" on CPUs with AMX / recent GPUs
    save_every: int = 1000  # optimizer steps between checkpoints
    keep_checkpoints: int = 2  # most recent `checkpoint-*` directories kept
    log_every: int = 10
    tensorboard: bool = True  # when the tensorboard package is installed
    evaluate: bool = True  # zero-shot + linear probe on `evaluation` data after training
    evaluation: dict[str, Any] = field(default_factory=dict)  # {test: manifest spec, probe_train: ...}
    num_threads: int | None = None  # torch intra-op threads per process
    # Collapse guard (training/collapse.py): at every log step the spread of the gathered image and text
    # embeddings is logged; when the embeddings of one side stay collapsed (mean pairwise cosine above
    # `collapse_cosine`, or the contrastive term within `collapse_loss_margin` of ln(global batch)) for
    # `collapse_window` consecutive log steps, "warn" warns once, "stop" ends the run, "off" only logs.
    collapse_guard: str = "warn"
    collapse_window: int = 5  # log steps
    collapse_cosine: float = 0.99
    collapse_loss_margin: float = 0.01  # nats
    collapse_grace_steps: int = 0  # optimizer steps before the guard may fire (0: one window)
    # Evaluation during pretraining (retvlp/evaluation/periodic.py): every `eval_every` optimizer steps,
    # zero-shot and a linear probe on held-out data: `run.evaluation` manifests when given, else a
    # patient-disjoint share (`eval_holdout_fraction`) of the run's own labelled rows, left out of training.
    eval_every: int | None = None
    eval_holdout_fraction: float = 0.1
    eval_max_images: int = 2000  # per split, drawn once (seeded) so every evaluation sees the same images
    # torch.compile of the training model's forward (and so its backward) with `compile_backend` (inductor:
    # generated C++ on CPU, Triton on CUDA); the first steps pay the compilation. Off by default: see
    # docs/benchmarks.md for when it pays. Weights, checkpoints and resume are the same either way.
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = "default"

    def validate(self, fail: Fail) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            fail(f"run.mixed_precision={self.mixed_precision!r}; choose one of {list(MIXED_PRECISION)}.")
        if self.save_every <= 0 or self.log_every <= 0 or self.keep_checkpoints < 1:
            fail("run.save_every, run.log_every and run.keep_checkpoints must be >= 1.")
        if self.collapse_guard not in COLLAPSE_GUARD_ACTIONS:
            fail(f"run.collapse_guard={self.collapse_guard!r}; choose one of {list(COLLAPSE_GUARD_ACTIONS)}.")
        if self.collapse_window < 1 or not 0.0 < self.collapse_cosine <= 1.0 or self.collapse_loss_margin < 0:
            fail(
                "run.collapse_window must be >= 1, run.collapse_cosine in (0, 1] and "
                "run.collapse_loss_margin >= 0."
            )
        if self.compile_mode not in COMPILE_MODES:
            fail(f"run.compile_mode={self.compile_mode!r}; choose one of {list(COMPILE_MODES)}.")
        if self.eval_every is not None and self.eval_every < 1:
            fail(f"run.eval_every must be >= 1 optimizer steps (or null: off), got {self.eval_every}.")
        if not 0.0 < self.eval_holdout_fraction < 1.0 or self.eval_max_images < 1:
            fail("run.eval_holdout_fraction must be in (0, 1) and run.eval_max_images >= 1.")


# --------------------------------------------------------------------------- family sections
class FamilySection:
    """Base of the per-family sections: the batch-size keys (rows per process per micro-step) and the rule
    on how `model` may be built. A subclass is a dataclass defined and registered by the family's task file
    (`training.family_parts.register_training(family, task=..., section=...)`)."""

    batch_keys: ClassVar[tuple[str, ...]] = ()
    # The towers `model.vision_pretrained` / `model.text_pretrained` may supply ("vision", "text"): each
    # alone, both or neither, next to `model.config`. Empty: a family without towers.
    pretrained_towers: ClassVar[tuple[str, ...]] = ()

    def validate(self, section_name: str, fail: Fail) -> None:
        _positive_batch(section_name, self, self.batch_keys, fail)

    @classmethod
    def validate_model(cls, model: ModelSection, fail: Fail) -> None:
        towers = {"vision": model.vision_pretrained, "text": model.text_pretrained}
        given = [f"model.{tower}_pretrained" for tower, source in towers.items() if source is not None]
        for tower, source in towers.items():
            if source is not None and tower not in cls.pretrained_towers:
                fail(
                    f"model.{tower}_pretrained: model.family={model.family} has no {tower} tower to take from "
                    "a checkpoint; use model.config (a fresh model) or model.pretrained (one to continue from)."
                )
        if model.pretrained is not None and (model.config is not None or given):
            others = " / ".join((["model.config"] if model.config is not None else []) + given)
            fail(
                f"model.pretrained (a whole {model.family} checkpoint to continue from) excludes {others}: "
                "model.config and the per-tower checkpoints describe a new model."
            )
        if model.tokenizer == "build" and model.text_pretrained is not None:
            fail(
                "model.tokenizer: build trains a new vocabulary, but the text tower of model.text_pretrained="
                f"{model.text_pretrained!r} reads the token ids of its own tokenizer; leave model.tokenizer unset "
                "(the checkpoint's tokenizer) or name the tokenizer it was trained with."
            )


def family_section_class(family: str) -> type:
    """The dataclass of `family`'s run-config section (registered by its `<name>_section.py` or its task file:
    `training.family_parts.section_of`)."""
    return section_of(family) or _EmptySection


@dataclass
class _EmptySection(FamilySection):
    """A family that reads nothing beyond the common sections."""

    def validate(self, section_name: str, fail: Fail) -> None:
        pass


COMMON_SECTIONS = ("model", "data", "optim", "run")

# Stages a run may depend on (`stages:`, retvlp/training/stages.py): name → the family it trains.
STAGE_FAMILIES = {"ibq_tokenizer": "ibq-tokenizer", "text_mlm": "text-mlm"}
STAGE_KEYS = ("config", "overrides", "output_dir", "data")
STAGE_DATA = ("run", "config")


def _validate_stages(stages: Any, family: str, fail: Fail) -> None:
    """The `stages:` mapping: stage name → {config, overrides?, output_dir?, data?}."""
    if not isinstance(stages, dict):
        fail(f"stages must be a mapping of stage name to settings, got {_yaml_type(stages)}.")
    for name, entry in stages.items():
        if name not in STAGE_FAMILIES:
            fail(
                f"stages.{name}: unknown stage{did_you_mean([name], STAGE_FAMILIES)}; stages are "
                f"{list(STAGE_FAMILIES)}."
            )
        if not isinstance(entry, dict):
            fail(
                f"stages.{name} must be a mapping with at least 'config' (a run YAML), got {_yaml_type(entry)}."
            )
        unknown = sorted(set(entry) - set(STAGE_KEYS))
        if unknown:
            fail(
                f"unknown key(s) {unknown} in stages.{name}{did_you_mean(unknown, STAGE_KEYS)}; valid keys: "
                f"{list(STAGE_KEYS)}."
            )
        if not isinstance(entry.get("config"), str):
            fail(f"stages.{name}.config must name the stage's run YAML, got {entry.get('config')!r}.")
        if not isinstance(entry.get("overrides") or {}, dict):
            fail(
                f"stages.{name}.overrides must be a mapping of section.key to value, e.g. {{optim.max_steps: 100}}."
            )
        if not isinstance(entry.get("output_dir") or "", str):
            fail(f"stages.{name}.output_dir must be a folder path.")
        if (entry.get("data") or "run") not in STAGE_DATA:
            fail(f"stages.{name}.data={entry.get('data')!r}; choose one of {list(STAGE_DATA)}.")
    if "ibq_tokenizer" in stages and family != "keepfit":
        fail(
            f"stages.ibq_tokenizer trains the codebook of KeepFIT's appearance knowledge; model.family={family} "
            "reads no codebook. Remove the stage."
        )
    if "text_mlm" in stages and family not in ("keepfit", "maskedclip"):
        fail(f"stages.text_mlm supplies a text tower; model.family={family} has none. Remove the stage.")


def _keys_of(section_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(section_class)}


def _owner_of(key: str, exclude: str) -> str | None:
    """The other family whose section has `key` (for an error that points at the right section)."""
    for spec in families():
        if spec.name != exclude and key in _keys_of(family_section_class(spec.name)):
            return spec.name
    return None


def _legacy_family_keys(data: dict, family: str, family_values: dict, fail: Fail) -> dict:
    """Move the family keys an earlier-layout config put under `data` into the family section (warning)."""
    own = _keys_of(family_section_class(family))
    moved = {}
    for key in [k for k in data if k not in _keys_of(DataSection)]:
        if key in own:
            if key in family_values:
                fail(f"{key} is given twice, as data.{key} and {family}.{key}; keep {family}.{key}.")
            moved[key] = data.pop(key)
            logger.warning(
                "data.%s is a %s setting and moved to the '%s:' section; write it there (%s.%s).",
                key,
                family,
                family,
                family,
                key,
            )
        elif (owner := _owner_of(key, family)) is not None:
            fail(
                f"data.{key} is a setting of model.family={owner} (section '{owner}:'), but this run's "
                f"family is {family}; remove it."
            )
    return moved


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    # The `<model.family>:` section; None builds the family's defaults.
    family_settings: Any = None
    source: str = "<defaults>"
    # The stages this run depends on (`stages:`; retvlp/training/stages.py): name → {config, overrides?,
    # output_dir?, data?}; run (or reused) before this run, their `final/` wired into its model keys.
    stages: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family_settings is None and self.model.family in family_names():
            self.family_settings = family_section_class(self.model.family)()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> PretrainConfig:
        def fail(message: str):
            raise ConfigError(f"{source}: {message}")

        if not isinstance(raw, dict):
            fail("the top level must be a mapping with model/data/optim/run sections.")
        raw = {name: dict(values) if isinstance(values, dict) else values for name, values in raw.items()}
        for name, values in raw.items():
            if values is not None and not isinstance(values, dict):
                fail(f"section '{name}' must be a mapping, got {_yaml_type(values)}.")
        model = _build_section(ModelSection, "model", raw.get("model") or {}, fail)
        model.validate(fail)
        family = model.family
        unknown = sorted(set(raw) - set(COMMON_SECTIONS) - {family, "stages"})
        for name in unknown:
            if name in family_names():
                fail(f"section '{name}:' belongs to model.family={name}, but this run's family is {family}.")
            fail(
                f"unknown section {name!r}{did_you_mean([name], [*COMMON_SECTIONS, family, 'stages'])}; sections "
                f"are {list(COMMON_SECTIONS)}, the family's own '{family}:' and 'stages:'."
            )
        data = raw.get("data") or {}
        family_values = raw.get(family) or {}
        family_values.update(_legacy_family_keys(data, family, family_values, fail))
        config = cls(
            model=model,
            data=_build_section(DataSection, "data", data, fail),
            optim=_build_section(OptimSection, "optim", raw.get("optim") or {}, fail),
            run=_build_section(RunSection, "run", raw.get("run") or {}, fail),
            family_settings=_build_section(family_section_class(family), family, family_values, fail),
            source=source,
            stages=copy.deepcopy(raw.get("stages") or {}),
        )
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> PretrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist (pass --config path/to/run.yaml).")
        try:
            raw = load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        return cls.from_dict(raw, source=str(path))

    def sections(self) -> dict[str, Any]:
        """Section name → section object, the family's own last."""
        return {
            "model": self.model,
            "data": self.data,
            "optim": self.optim,
            "run": self.run,
            self.model.family: self.family_settings,
        }

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(section) for name, section in self.sections().items()}
        if self.stages:
            out["stages"] = {name: dict(entry) for name, entry in self.stages.items()}
        return out

    def apply_overrides(self, overrides: list[str]) -> None:
        """Apply `section.key=value` strings (values parsed as YAML), e.g. `optim.max_steps=10` or
        `maskedclip.paired_batch_size=8`; a mapping key takes a dotted path into it, e.g.
        `model.config.text_pooling=mean` or `model.config.vision_config.hidden_size=256`."""
        for item in overrides:
            self._apply_override(item)
        self.validate()

    def _apply_override(self, item: str) -> None:
        def fail(message: str):
            raise ConfigError(f"Override {item!r}: {message}")

        key, sep, value = item.partition("=")
        section_name, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(
                f"Override {item!r} must look like section.key=value (e.g. optim.max_steps=10)."
            )
        if section_name == "stages":
            self._apply_stage_override(name, load_yaml(value), fail)
            return
        name, *path = name.split(".")
        family = self.model.family
        if section_name == "data" and name not in _keys_of(DataSection):
            if name in _keys_of(type(self.family_settings)):
                logger.warning(
                    "Override data.%s: a %s setting, applied as %s.%s.", name, family, family, name
                )
                section_name = family
            elif (owner := _owner_of(name, family)) is not None:
                fail(f"{name} is a setting of model.family={owner} ('{owner}.{name}'), not of {family}.")
        section = self.sections().get(section_name)
        if section is None:
            fail(
                f"unknown section {section_name!r}{did_you_mean([section_name], [*self.sections(), 'stages'])}; "
                f"sections are {list(self.sections())}."
            )
        keys = _keys_of(type(section))
        if name not in keys:
            fail(
                f"section '{section_name}' has no key {name!r}{did_you_mean([name], keys, self._sections_by_key())}; "
                f"valid keys: {sorted(keys)}."
            )
        parsed = load_yaml(value)
        if not path:
            setattr(section, name, parsed)
            if section is self.model and name == "family" and parsed in family_names() and parsed != family:
                self.family_settings = family_section_class(parsed)()  # the new family's defaults
            return
        target = getattr(section, name)
        if target is None:
            target = {}
            setattr(section, name, target)
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            fail(f"{section_name}.{name} holds no mapping at {'.'.join(path[:-1])!r}.")
        target[path[-1]] = parsed

    def _sections_by_key(self) -> dict[str, str]:
        """Key → the section that has it, for a key given under the wrong section."""
        return {key: name for name, section in self.sections().items() for key in _keys_of(type(section))}

    def _apply_stage_override(self, path: str, value: Any, fail: Fail) -> None:
        """`stages.NAME=null` drops a stage; `stages.NAME.KEY=value` sets one of its keys; the keys of
        `stages.NAME.overrides` are dotted themselves: `stages.text_mlm.overrides.optim.max_steps=100`."""
        name, _, key = path.partition(".")
        if not key:
            if value is None:
                self.stages.pop(name, None)
            else:
                self.stages[name] = value
            return
        entry = self.stages.setdefault(name, {})
        if not isinstance(entry, dict):
            fail(f"stages.{name} holds no mapping.")
        head, _, rest = key.partition(".")
        if head == "overrides" and rest:
            entry["overrides"] = {**(entry.get("overrides") or {}), rest: value}
        elif rest:
            fail(f"stages.{name}.{head} takes a value, not a dotted path (only 'overrides' does).")
        else:
            entry[head] = value

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def fail(message: str):
            raise ConfigError(f"{self.source}: {message}")

        check_types("model", self.model, fail)
        self.model.validate(fail)
        expected = family_section_class(self.model.family)
        if not isinstance(self.family_settings, expected):
            fail(
                f"the family section is a {type(self.family_settings).__name__}, but model.family="
                f"{self.model.family} reads a {expected.__name__}."
            )
        for name, section in self.sections().items():
            check_types(name, section, fail)
        for name, section in self.sections().items():
            if isinstance(section, FamilySection):
                section.validate(name, fail)
                type(section).validate_model(self.model, fail)
            elif name != "model":
                section.validate(fail)
        _validate_stages(self.stages, self.model.family, fail)


def _build_section(section_class: type, name: str, values: dict, fail: Fail):
    keys = _keys_of(section_class)
    unknown = sorted(set(values) - keys)
    if unknown:
        elsewhere = {
            key: other
            for other, other_class in zip(COMMON_SECTIONS, COMMON_SECTION_CLASSES, strict=True)
            if other_class is not section_class
            for key in _keys_of(other_class)
        }
        fail(
            f"unknown key(s) {unknown} in section '{name}'{did_you_mean(unknown, keys, elsewhere)}; valid keys: "
            f"{sorted(keys)}."
        )
    return section_class(**values)


COMMON_SECTION_CLASSES = (ModelSection, DataSection, OptimSection, RunSection)


def warmup_too_long_message(
    warmup_key: str, warmup: float, length_key: str, length: float, length_text: str | None = None
) -> str:
    """The error for a warm-up at least as long as the run it belongs to (never clipped silently: the whole run
    would be warm-up and the learning rate would end at its peak). `length_text` says what the run's length
    is when it is not simply `length_key=length`."""
    tenth = math.floor(length / 10)
    example = (
        f"{warmup_key}={tenth:g} (a tenth of the run) or 0 for none" if tenth else f"{warmup_key}=0 (none)"
    )
    return (
        f"{warmup_key}={warmup:g} is not shorter than {length_text or f'{length_key}={length:g}'}: the whole run "
        f"would be warm-up (the learning rate would end at its peak, never decaying). Set {warmup_key} below "
        f"{length_key}, e.g. {example}, or lengthen the run."
    )


def did_you_mean(
    names: Iterable[str], candidates: Iterable[str], elsewhere: dict[str, str] | None = None
) -> str:
    """The hint an error adds after misspelt `names`, e.g. `(did you mean 'max_steps'?)`: for each name, the
    closest of `candidates` (difflib), or else the section `elsewhere` ({key: section}) that has the name; ""
    when there is neither."""
    names, candidates = list(names), sorted(set(candidates))
    hints = []
    for name in names:
        close = difflib.get_close_matches(str(name), candidates, n=1)
        if close:
            hint = repr(close[0])
        elif elsewhere and name in elsewhere:
            hint = f"{elsewhere[name]}.{name}"
        else:
            continue
        hints.append(hint if len(names) == 1 else f"{hint} for {name!r}")
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


__all__ = [
    "ConfigError",
    "DataSection",
    "FamilySection",
    "ModelSection",
    "OptimSection",
    "PretrainConfig",
    "RunSection",
    "STAGE_FAMILIES",
    "check_types",
    "family_section_class",
]
