"""The pretraining run description: one YAML file, four sections (model, data, optim, run).

Every key is checked: an unknown or misspelt key is an error naming the section, the key and the keys
that exist, never silently ignored. Defaults are the MaskedCLIP paper's where it gives them (see
`training/configs/maskedclip_vitl16.yaml` for the full paper setting).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE

MODEL_FAMILIES = ("maskedclip", "keepfit", "ibq-tokenizer", "text-mlm")
BAD_SAMPLE_POLICIES = ("error", "skip")
# The batch-size keys of `data` that each family reads (rows per process per micro-step).
FAMILY_BATCH_KEYS = {
    "maskedclip": ("paired_batch_size", "unpaired_batch_size"),
    "keepfit": ("categorical_batch_size", "paired_batch_size"),
    "ibq-tokenizer": ("image_batch_size",),
    "text-mlm": ("text_batch_size",),
}
MIXED_PRECISION = ("no", "bf16", "fp16")
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


@dataclass
class ModelSection:
    family: str = "maskedclip"
    # MaskedCLIP: exactly one way to build the model: `config` (kwargs of MaskedCLIPConfig), `pretrained` (a
    # MaskedCLIP directory or Hub id), or `vision_pretrained` + `text_pretrained` (ViT-MAE / converted RETFound +
    # BERT). KeepFIT: `pretrained`, or `config` (KeepFitConfig kwargs) with either tower optionally taken from
    # `vision_pretrained` (e.g. microsoft/resnet-50) / `text_pretrained` (Bio_ClinicalBERT or the text-mlm
    # output). IBQ tokenizer: `config` (IBQTokenizerConfig kwargs) or `pretrained`. text-mlm: `config`
    # (BertConfig kwargs) or `pretrained` (a BERT to continue from).
    config: dict[str, Any] | None = None
    pretrained: str | None = None
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # Tokenizer: a directory / Hub id, or "build" to train a WordPiece vocabulary on the run's own texts
    # (offline demo); `None` takes the tokenizer of `text_pretrained` / `pretrained`.
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 2000
    max_text_length: int = 77
    activation_checkpointing: bool = False


@dataclass
class DataSection:
    # Manifest specs: {path, role?, image_root?, image_column?, text_column?, label_column?, group_column?,
    # format?} — see `retvlp.data.manifest.read_manifest` — or {hf_dataset: dir or Hub id, split?, image_column?,
    # ...} for a `datasets` dataset. Roles come from the rows unless `role` forces one.
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
    prompt_templates: list[str] = field(default_factory=lambda: ["a fundus photograph of {}"])  # maskedclip
    # KeepFIT prompts: per-modality templates of the expert-knowledge dictionary (retvlp/data/expert_knowledge.json,
    # merged with `expert_knowledge`, a user JSON of the same layout), and label augmentation: with probability
    # `label_augmentation` a class name is replaced by / extended with one of its expert descriptions.
    modality: str = "CFP"  # CFP | FFA | OCT
    expert_knowledge: str | None = None
    label_augmentation: float = 0.5
    # Rows per process per micro-step. Each family reads its own keys:
    #   maskedclip:    paired_batch_size (pairs + categorical rows; paper 720 global), unpaired_batch_size
    #   keepfit:       categorical_batch_size (public p) and paired_batch_size (elite m), 1:1 in the paper
    #   ibq-tokenizer: image_batch_size (images of every role)
    #   text-mlm:      text_batch_size (corpus passages)
    paired_batch_size: int = 16
    unpaired_batch_size: int = 16
    categorical_batch_size: int = 16
    image_batch_size: int = 16
    text_batch_size: int = 16
    mlm_probability: float = 0.15  # text-mlm: fraction of tokens selected for prediction (BERT's 80/10/10)
    # Augmentation of the cached images, drawn from (seed, step): random-resized-crop area range and flips.
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    horizontal_flip: bool = False  # off: captions may name the eye, and a flip moves the disc
    num_workers: int = 2  # DataLoader workers assembling step batches
    preprocessing_workers: int | None = None  # processes decoding images into the cache (default: CPUs)


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
    max_grad_norm: float | None = 1.0  # None: no clipping


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
    # Evaluation during pretraining (training/periodic_eval.py): every `eval_every` optimizer steps, zero-shot
    # and a linear probe on held-out data: `run.evaluation` manifests when given, else a patient-disjoint
    # share (`eval_holdout_fraction`) of the run's own labelled rows, left out of training.
    eval_every: int | None = None
    eval_holdout_fraction: float = 0.1
    eval_max_images: int = 2000  # per split, drawn once (seeded) so every evaluation sees the same images


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = "<defaults>"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> PretrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping with model/data/optim/run sections."
            )
        sections = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; sections are {sorted(sections)}.")
        built = {}
        for name, spec in sections.items():
            section_cls = spec.default_factory
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"{source}: section '{name}' must be a mapping, got {type(values).__name__}."
                )
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(
                    f"{source}: unknown key(s) {bad} in section '{name}'; valid keys: {sorted(known)}."
                )
            built[name] = section_cls(**values)
        config = cls(**built, source=source)
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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def apply_overrides(self, overrides: list[str]) -> None:
        """Apply `section.key=value` strings (values parsed as YAML), e.g. `optim.max_steps=10`; a mapping key
        takes a dotted path into it, e.g. `model.config.text_pooling=mean` or
        `model.config.vision_config.hidden_size=256`."""
        for item in overrides:
            key, sep, value = item.partition("=")
            section_name, dot, name = key.partition(".")
            if not sep or not dot:
                raise ConfigError(
                    f"Override {item!r} must look like section.key=value (e.g. optim.max_steps=10)."
                )
            section = getattr(self, section_name, None)
            if section is None or section_name == "source" or not dataclasses.is_dataclass(section):
                raise ConfigError(f"Override {item!r}: unknown section {section_name!r}.")
            name, *path = name.split(".")
            if name not in {f.name for f in dataclasses.fields(section)}:
                raise ConfigError(f"Override {item!r}: section '{section_name}' has no key {name!r}.")
            parsed = load_yaml(value)
            if not path:
                setattr(section, name, parsed)
                continue
            target = getattr(section, name)
            if target is None:
                target = {}
                setattr(section, name, target)
            for part in path[:-1]:
                target = target.setdefault(part, {}) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                raise ConfigError(
                    f"Override {item!r}: {section_name}.{name} holds no mapping at {'.'.join(path[:-1])!r}."
                )
            target[path[-1]] = parsed
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        where = self.source
        m, d, o, r = self.model, self.data, self.optim, self.run

        def fail(message: str):
            raise ConfigError(f"{where}: {message}")

        if m.family not in MODEL_FAMILIES:
            fail(f"model.family={m.family!r} is not available; choose one of {list(MODEL_FAMILIES)}.")
        if m.family == "keepfit":
            # KeepFIT: a checkpoint, or a config whose towers may each come from a pretrained checkpoint.
            if m.pretrained is not None and (
                m.config is not None or m.vision_pretrained or m.text_pretrained
            ):
                fail(
                    "model.pretrained (a KeepFIT checkpoint) excludes model.config / vision_pretrained / text_pretrained."
                )
        else:
            ways = [m.config is not None, m.pretrained is not None, m.vision_pretrained is not None]
            if sum(ways) > 1:
                fail(
                    "set only one of model.config, model.pretrained, model.vision_pretrained (+ text_pretrained)."
                )
            if (m.vision_pretrained is None) != (m.text_pretrained is None):
                fail("model.vision_pretrained and model.text_pretrained go together.")
        if not d.train and d.synthetic is None:
            fail("data.train lists no manifests (and data.synthetic is not set): nothing to train on.")
        for i, spec in enumerate(d.train):
            if not isinstance(spec, dict) or ("path" in spec) == ("hf_dataset" in spec):
                fail(f"data.train[{i}] must be a mapping with a 'path' or an 'hf_dataset' (got {spec!r}).")
        if not isinstance(d.allowed_roots, list) or not all(
            isinstance(root, str) and root.strip() for root in d.allowed_roots
        ):
            fail(f"data.allowed_roots must be a list of folder paths, got {d.allowed_roots!r}.")
        if not isinstance(d.allow_outside_data_roots, bool):
            fail(f"data.allow_outside_data_roots must be true or false, got {d.allow_outside_data_roots!r}.")
        if d.on_bad_sample not in BAD_SAMPLE_POLICIES:
            fail(f"data.on_bad_sample={d.on_bad_sample!r}; choose one of {list(BAD_SAMPLE_POLICIES)}.")
        batch_keys = FAMILY_BATCH_KEYS[m.family]
        if d.image_size <= 0 or any(getattr(d, key) < 0 for key in batch_keys):
            fail(
                f"data.image_size must be positive and {', '.join('data.' + k for k in batch_keys)} non-negative."
            )
        if not any(getattr(d, key) for key in batch_keys):
            fail(f"{' and '.join('data.' + k for k in batch_keys)} are all 0 (model.family={m.family}).")
        if m.family == "keepfit" and not (d.categorical_batch_size and d.paired_batch_size):
            fail(
                "KeepFIT trains on categorical (public) and elite (paired) data together: set both "
                "data.categorical_batch_size and data.paired_batch_size > 0 (1:1 in the paper)."
            )
        if not 0.0 <= d.label_augmentation <= 1.0:
            fail(f"data.label_augmentation is a probability in [0, 1], got {d.label_augmentation}.")
        if not 0.0 < d.mlm_probability < 1.0:
            fail(f"data.mlm_probability must be in (0, 1), got {d.mlm_probability}.")
        if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
            fail(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {d.crop_scale}.")
        if not d.prompt_templates or any("{}" not in t for t in d.prompt_templates):
            fail("data.prompt_templates must be non-empty strings, each with one '{}' for the class name.")
        if o.max_steps is None and o.epochs is None:
            fail("set optim.max_steps or optim.epochs.")
        if o.max_steps is not None and o.max_steps <= 0:
            fail(f"optim.max_steps must be positive, got {o.max_steps}.")
        if o.gradient_accumulation_steps < 1:
            fail("optim.gradient_accumulation_steps must be >= 1.")
        for name in ("lr", "base_lr", "weight_decay", "max_grad_norm"):
            value = getattr(o, name)
            if value is not None and (
                not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            ):
                fail(f"optim.{name} must be a non-negative number, got {value!r}.")
        if len(o.betas) != 2:
            fail(f"optim.betas must have two values, got {o.betas}.")
        if r.mixed_precision not in MIXED_PRECISION:
            fail(f"run.mixed_precision={r.mixed_precision!r}; choose one of {list(MIXED_PRECISION)}.")
        if r.save_every <= 0 or r.log_every <= 0 or r.keep_checkpoints < 1:
            fail("run.save_every, run.log_every and run.keep_checkpoints must be >= 1.")
        if r.collapse_guard not in COLLAPSE_GUARD_ACTIONS:
            fail(f"run.collapse_guard={r.collapse_guard!r}; choose one of {list(COLLAPSE_GUARD_ACTIONS)}.")
        if r.collapse_window < 1 or not 0.0 < r.collapse_cosine <= 1.0 or r.collapse_loss_margin < 0:
            fail(
                "run.collapse_window must be >= 1, run.collapse_cosine in (0, 1] and "
                "run.collapse_loss_margin >= 0."
            )
        if r.eval_every is not None and r.eval_every < 1:
            fail(f"run.eval_every must be >= 1 optimizer steps (or null: off), got {r.eval_every}.")
        if not 0.0 < r.eval_holdout_fraction < 1.0 or r.eval_max_images < 1:
            fail("run.eval_holdout_fraction must be in (0, 1) and run.eval_max_images >= 1.")


__all__ = ["ConfigError", "DataSection", "ModelSection", "OptimSection", "PretrainConfig", "RunSection"]
