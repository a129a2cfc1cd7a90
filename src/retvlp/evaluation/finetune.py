"""Fine-tuning the image encoder with a classification head: full fine-tuning or LoRA (PEFT), on Accelerate
(one process, or `accelerate launch` on many GPUs).

The classifier per family:

- MaskedCLIP → `MaskedCLIPForImageClassification`: E_I, mean-pooled patch tokens → LayerNorm → linear (MAE's
  global-pool head), drop-path `drop_path_rate` (linear over the blocks), layer-wise lr decay `layer_decay`
  (block i of L gets lr·decay^(L+1−(i+1)); patch embedding decay^(L+1); head 1);
- KeepFIT → `KeepFitForImageClassification`: the ResNet, globally pooled last feature map → linear; the layer
  decay runs over the stem and the four stages;
- a `ViTMAEModel` (a converted RETFound) → `ViTForImageClassification` on its weights (`vit_classifier_from_mae`);
- anything else → `AutoModelForImageClassification` (the head re-initialised for the new classes).

Defaults follow METHODS.md §1 "Downstream": AdamW, lr 5e-4 (absolute), batch 16, 50 epochs with 10 warm-up,
cosine; weight decay 0.05 and no decay on biases, norms, position tables and tokens; drop-path 0.1, layer decay
0.75. LoRA adapts the ViT's attention projections (q, k, v, o; the ResNet's bottleneck convolutions for KeepFIT)
with rank 8, α 16, dropout 0.1; the head (and MaskedCLIP's fc_norm) is trained fully (`modules_to_save`).
Training images get a random crop (side 80–100 %) and a horizontal flip, drawn from (seed, step, process).

Saved artifacts (:func:`save_finetuned`) are portable: a classifier folder (`model/`) and an adapter folder
(`adapter/`) both hold the classifier's `config.json` (real class names in `id2label` / `label2id`, `auto_map`
and exactly the code files the classes import, for `trust_remote_code`), the image processor
(`preprocessor_config.json`), `training_summary.json` (what produced it), `eval_results.json` once the evaluation
harness has scored it, and a model card (README.md). An adapter additionally holds the PEFT files, with
`base_model_name_or_path` a Hub id or an absolute path; when the LoRA base exists only in memory (random init, a
model instance), that base is saved next to the adapter (`base/`) and the adapter points at it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# The card and portability hooks the package root installs (re-exported here, where they were first defined).
from ..artifact_hooks import ARTIFACT_HOOKS, ArtifactHooks, install_artifact_hooks  # noqa: F401
from ..data.transforms import augment_and_normalize
from ..families import FamilySpec, family_of_model_type
from ..lora import check_lora_targets
from .data import ImageStore, LabelledRecords, to_model_input

METHODS = ("full", "lora")

TRAINING_SUMMARY_NAME = "training_summary.json"
EVAL_RESULTS_NAME = "eval_results.json"
# Keys an image processor inherits from the processor it was loaded with (e.g. an `AutoProcessor` entry naming
# processing_maskedclip.py): saved alone, they would point `auto_map` at files that are not in the folder.
_INHERITED_PROCESSOR_KEYS = ("auto_map", "processor_class", "image_processor_type")

logger = logging.getLogger(__name__)


@dataclass
class FinetuneSettings:
    """Hyper-parameters of one fine-tuning run (per-process batch size; `max_steps` overrides `epochs`)."""

    method: str = "full"
    epochs: float = 50
    warmup_epochs: float = 10
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    drop_path_rate: float = 0.1
    max_grad_norm: float | None = None
    augment: bool = True
    min_crop: float = 0.8
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: str | list[str] | None = None
    mixed_precision: str = "no"
    init: str = "pretrained"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"finetune method must be one of {METHODS}, got {self.method!r}.")
        if self.init not in ("pretrained", "random"):
            raise ValueError(f'init must be "pretrained" or "random", got {self.init!r}.')
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be at least 1.")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}.")
        if not 0 < self.min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {self.min_crop}.")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")


@dataclass
class FinetuneResult:
    """Test-set `probabilities` `(M, C)` (softmax, or sigmoid for multi-label), the training loss per step,
    the trained (unwrapped) model and where it was saved (`model/` for full fine-tuning, `adapter/` for LoRA)."""

    probabilities: np.ndarray
    losses: list[float]
    model: torch.nn.Module
    saved_to: Path | None = None


def family_of(config) -> FamilySpec | None:
    """The registered family of a checkpoint's config (None for any other model, e.g. a stock ViT)."""
    return family_of_model_type(getattr(config, "model_type", ""))


def build_classifier(source, class_names: list[str], *, multi_label: bool, settings: FinetuneSettings):
    """The classification model for `source` (a checkpoint directory or Hub id; a model instance is saved to a
    temporary directory first) with a fresh head for `class_names`."""
    from transformers import AutoConfig, AutoModelForImageClassification

    if isinstance(source, torch.nn.Module):
        with tempfile.TemporaryDirectory() as staging:
            source.save_pretrained(staging)
            return build_classifier(staging, class_names, multi_label=multi_label, settings=settings)
    # `name_or_path` becomes the adapter's `base_model_name_or_path`: a relative path would only resolve from the
    # directory the evaluation ran in.
    source = persistent_source(source)
    config = AutoConfig.from_pretrained(source)
    family = family_of(config)
    kwargs = dict(
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    classifier = family.load("classifier") if family is not None else None
    if classifier is not None:
        # The fine-tuning settings the family's classifier config reads (MaskedCLIP: drop_path_rate).
        options = family.extra.get("classifier_settings", ())
        cls, kwargs = classifier, {**kwargs, **{name: getattr(settings, name) for name in options}}
    elif getattr(config, "model_type", "") == "vit_mae":
        cls, kwargs = vit_classifier_from_mae(config, kwargs)
    else:
        cls, kwargs = AutoModelForImageClassification, {**kwargs, "ignore_mismatched_sizes": True}
    model = cls.from_pretrained(source, **kwargs)
    if settings.init == "random":  # the same architecture at seeded random weights: the baseline
        torch.manual_seed(settings.seed)
        model = type(model)(model.config)
    return model


_VIT_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias", "initializer_range",
)  # fmt: skip


def vit_classifier_from_mae(config, label_kwargs: dict):
    """A `ViTMAEModel` checkpoint (a converted RETFound: transformers has no ViTMAE classifier) fine-tunes as
    `ViTForImageClassification`: the encoders share every weight name under `vit.`, so the MAE weights load
    unchanged and only the head is new. The saved classifier is then a stock ViT. Deviation from RETFound's
    head, stated in docs/benchmarks_public.md: the [CLS] token after the final LayerNorm, not the mean patch
    token through `fc_norm`."""
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTConfig(
        **{name: getattr(config, name) for name in _VIT_FIELDS if hasattr(config, name)}, **label_kwargs
    )
    return ViTForImageClassification, {"config": vit}


def persistent_source(source) -> str | None:
    """`source` as something a saved artifact can name: an existing directory as an absolute path, a Hub id
    unchanged; None for a model instance (it exists only in memory)."""
    if isinstance(source, torch.nn.Module):
        return None
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def lora_wrap(model, settings: FinetuneSettings):
    """`model` with LoRA adapters on its attention projections (convolutions for KeepFIT); the head trains fully."""
    from peft import LoraConfig, get_peft_model

    family = family_of(model.config)
    defaults = family.lora if family is not None else None
    targets = settings.lora_target_modules or (defaults.target_modules if defaults else None)
    if targets is None:
        raise ValueError(
            f"No default LoRA target modules for model_type {model.config.model_type!r}: pass "
            "lora_target_modules (a regex or a list of module-name suffixes, e.g. ['q_proj', 'v_proj'])."
        )
    # Targets matching nothing (or the text tower's names, which a classifier lacks) fail here with the names
    # the classifier has, instead of PEFT's bare "not found".
    check_lora_targets(model, targets, towers=("vision",))
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        modules_to_save=list(defaults.modules_to_save) if defaults else ["classifier"],
        task_type=None,
    )
    wrapped = get_peft_model(model, config)
    if not any(n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" in n):
        raise ValueError(f"LoRA target modules {targets!r} matched no module of {type(model).__name__}.")
    return wrapped


# The first numbered block in a parameter name: MaskedCLIP `vision_model.layers.N.`, ResNet `encoder.stages.N.`,
# CLIP / ViT / BERT-style `encoder.layers.N.` / `encoder.layer.N.`.
_NUMBERED_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|stages)\.(\d+)\.")


def _depth_of(name: str, num_blocks: int) -> int:
    """0 for the stem (patch embedding / ResNet embedder), i + 1 for block / stage i, num_blocks + 1 otherwise."""
    if ".embeddings." in f".{name}" or ".embedder." in f".{name}":
        return 0
    match = _NUMBERED_BLOCK.search(name)
    return int(match.group(1)) + 1 if match else num_blocks + 1


def _no_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    return parameter.ndim <= 1 or any(
        key in name for key in ("position_embeddings", "cls_token", "logit_scale")
    )


def parameter_groups(model, settings: FinetuneSettings) -> list[dict]:
    """AdamW groups with layer-wise lr decay and no weight decay on biases, norms, position tables, tokens."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None) or config
    num_blocks = (
        len(vision.hidden_sizes)
        if hasattr(vision, "hidden_sizes")
        else int(getattr(vision, "num_hidden_layers", 0))
    )
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = _depth_of(name, num_blocks)
        decay = not _no_weight_decay(name, parameter)
        scale = settings.layer_decay ** (num_blocks + 1 - depth)
        group = groups.setdefault(
            (depth, decay),
            {
                "params": [],
                "names": [],
                "lr": settings.lr * scale,
                "lr_scale": scale,
                "weight_decay": settings.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())


def _random_crops(rng: np.random.Generator, count: int, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    side = rng.uniform(min_side, 1.0, count)
    centre = rng.uniform(-1.0, 1.0, (count, 2)) * (1.0 - side)[:, None]
    return np.column_stack([side, centre]).astype(np.float32), rng.random(count) < 0.5


class _Rows(torch.utils.data.Dataset):
    def __init__(self, indices: np.ndarray):
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> int:
        return int(self.indices[item])


def _collate(store: ImageStore, labelled: LabelledRecords):
    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        return {
            "pixels": torch.from_numpy(np.array(store.pixels(indices))),  # writable copy of the Arrow rows
            "labels": torch.from_numpy(labelled.targets[indices]),
        }

    return collate


def finetune(
    source,
    labelled: LabelledRecords,
    store: ImageStore,
    mean: torch.Tensor,
    std: torch.Tensor,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    settings: FinetuneSettings | None = None,
    *,
    output_dir: str | Path | None = None,
    image_processor=None,
    run_info: dict | None = None,
    show_progress: bool = True,
) -> FinetuneResult:
    """Fine-tune `source` on the records `train_indices` and predict `test_indices`.

    Args:
        source: checkpoint directory, Hub id or model instance (MaskedCLIP, KeepFIT or any image classifier).
        store / mean / std: the cached pixels of `labelled` at the model's geometry and its normalisation.
        output_dir: where to save the fine-tuned model (`model/`) or the LoRA adapter (`adapter/`), with
            :func:`save_finetuned`.
        image_processor: saved with the model (default: the one of `source`, when it is a path or Hub id).
        run_info: what the saved `training_summary.json` cannot know from here, e.g. `{"model": "pretrained",
            "fraction": 0.1}` (the result-row name and label fraction of the run).
    """
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from ..runtime import fresh_accelerator

    settings = settings or FinetuneSettings()
    if len(train_indices) == 0 or len(test_indices) == 0:
        raise ValueError("Fine-tuning needs non-empty training and test indices.")
    accelerator = fresh_accelerator(mixed_precision=settings.mixed_precision)
    # Seeded before the model is built: the new head's (and LoRA's) initial weights come from this seed.
    set_seed(settings.seed)
    model, base_model, image_processor = _model_to_train(
        source,
        labelled,
        train_indices,
        settings,
        accelerator,
        output_dir=output_dir,
        image_processor=image_processor,
        run_info=run_info,
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, settings), lr=settings.lr, betas=settings.betas)
    train_loader, test_loader = _data_loaders(
        store, labelled, train_indices, test_indices, settings, accelerator.num_processes
    )
    model, optimizer, train_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, test_loader
    )
    total, warmup = _schedule_lengths(settings, max(1, len(train_loader)))
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(0, warmup), total)
    losses = _train(
        model,
        optimizer,
        scheduler,
        train_loader,
        accelerator,
        total=total,
        settings=settings,
        multi_label=labelled.multi_label,
        mean=mean,
        std=std,
        show_progress=show_progress,
    )
    probabilities = predict(model, test_loader, accelerator, mean, std, labelled.multi_label)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()  # on every rank, so the collectives of the next run stay in step
    saved_to = None
    if output_dir is not None:
        saved_to = Path(output_dir) / ("adapter" if settings.method == "lora" else "model")
        if accelerator.is_main_process:
            save_finetuned(
                unwrapped,
                saved_to,
                image_processor=image_processor,
                base_model=base_model,
                summary=_summary(settings, labelled, train_indices, run_info, base_model, total),
            )
    return FinetuneResult(probabilities=probabilities, losses=losses, model=unwrapped, saved_to=saved_to)


def _model_to_train(
    source,
    labelled: LabelledRecords,
    train_indices: np.ndarray,
    settings: FinetuneSettings,
    accelerator,
    *,
    output_dir: str | Path | None,
    image_processor,
    run_info: dict | None,
):
    """`(model to train, base a saved adapter names, image processor to save)`: the classifier of `source`
    (LoRA-wrapped for method "lora"). A LoRA base that exists only here (random init, a model instance) is
    saved to `output_dir/base/` first, so the adapter can name it."""
    model = build_classifier(
        source, labelled.class_names, multi_label=labelled.multi_label, settings=settings
    )
    # What a saved adapter names as its base: the checkpoint, unless the weights LoRA starts from exist only here.
    checkpoint = persistent_source(source)
    base_model = checkpoint if settings.init == "pretrained" else None
    if output_dir is not None and image_processor is None and checkpoint is not None:
        image_processor = _image_processor_of(checkpoint)
    if settings.method == "lora":
        if base_model is None and output_dir is not None:
            base_dir = Path(output_dir) / "base"
            if accelerator.is_main_process:
                save_finetuned(
                    model,
                    base_dir,
                    image_processor=image_processor,
                    summary={
                        **_summary(settings, labelled, train_indices, run_info, None, 0),
                        "role": "lora-base",
                    },
                )
            base_model = str(base_dir.resolve())
        model = lora_wrap(model, settings)
    return model, base_model, image_processor


def _data_loaders(
    store: ImageStore,
    labelled: LabelledRecords,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    settings: FinetuneSettings,
    num_processes: int,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """`(training loader, test loader)` over record indices, batches of cached uint8 pixels and targets. The
    training loader shuffles with its own seeded generator; it keeps a last partial batch only when the data
    does not fill one batch per process (dropping it would leave no step to run)."""
    generator = torch.Generator().manual_seed(settings.seed)
    collate = _collate(store, labelled)
    train_loader = torch.utils.data.DataLoader(
        _Rows(train_indices),
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(train_indices) >= settings.batch_size * num_processes,
        generator=generator,
        collate_fn=collate,
    )
    test_loader = torch.utils.data.DataLoader(
        _Rows(test_indices), batch_size=settings.eval_batch_size, collate_fn=collate
    )
    return train_loader, test_loader


def _schedule_lengths(settings: FinetuneSettings, steps_per_epoch: int) -> tuple[int, int]:
    """`(total steps, warm-up steps)`: `max_steps`, else `epochs` of `steps_per_epoch` (at least one step)."""
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    # Warm-up is the same share of the run with max_steps as with epochs (10 of 50 epochs: 20 %).
    warmup = min(total - 1, round(total * min(1.0, settings.warmup_epochs / max(settings.epochs, 1e-9))))
    return total, warmup


def _train(
    model,
    optimizer,
    scheduler,
    train_loader,
    accelerator,
    *,
    total: int,
    settings: FinetuneSettings,
    multi_label: bool,
    mean: torch.Tensor,
    std: torch.Tensor,
    show_progress: bool,
) -> list[float]:
    """Run `total` optimisation steps (epochs over `train_loader` as often as needed); the loss per step."""
    from tqdm.auto import tqdm

    losses: list[float] = []
    progress = tqdm(
        total=total,
        desc=f"{settings.method} fine-tuning",
        disable=not show_progress or not accelerator.is_main_process,
        leave=False,
    )
    model.train()
    if settings.method == "lora":
        # LoRA saves adapters + head only: BatchNorm statistics (KeepFIT's ResNet) must stay the base model's.
        _freeze_batch_norm_statistics(model)
    step = 0
    while step < total:
        for batch in train_loader:
            if step >= total:
                break
            loss = _training_loss(model, batch, step, accelerator, settings, multi_label, mean, std)
            accelerator.backward(loss)
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            progress.update(1)
            step += 1
    progress.close()
    return losses


def _training_loss(
    model, batch, step: int, accelerator, settings: FinetuneSettings, multi_label: bool, mean, std
) -> torch.Tensor:
    """The loss of one training batch, augmented (random crop and flip) and normalised on the way;
    `FloatingPointError` when it is not finite."""
    # Drawn from (seed, step, process): the same crops on a rerun, different ones on each process.
    rng = np.random.default_rng([settings.seed, step, accelerator.process_index])
    crops, flips = (
        _random_crops(rng, len(batch["pixels"]), settings.min_crop) if settings.augment else (None, None)
    )
    pixel_values = augment_and_normalize(batch["pixels"].cpu().numpy(), crops, flips, mean, std)
    labels = batch["labels"].float() if multi_label else batch["labels"]
    with accelerator.autocast():
        loss = model(pixel_values=pixel_values.to(accelerator.device), labels=labels).loss
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"Fine-tuning loss is {loss.item()} at step {step}: lower the learning rate (now "
            f"{settings.lr}) or use mixed_precision='no'."
        )
    return loss


def _summary(settings, labelled, train_indices, run_info, base_model, steps) -> dict:
    """`training_summary.json` of a fine-tuned artifact: enough to tell which result row it is and to redo it."""
    return {
        "task": "lora" if settings.method == "lora" else "finetune",
        "base_model": base_model,
        "init": settings.init,
        "seed": settings.seed,
        "num_train": len(train_indices),
        "steps": steps,
        "classes": list(labelled.class_names),
        "multi_label": bool(labelled.multi_label),
        "dataset": labelled.name,
        **(run_info or {}),
        "settings": asdict(settings),
    }


def _image_processor_of(source):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        logger.warning(
            "no image processor found for %s (%s): the fine-tuned model is saved without one", source, error
        )
        return None


def portable_image_processor(image_processor):
    """A copy of `image_processor` without what it inherited from the processor it was loaded with.

    An image processor read out of a `processor_config.json` keeps that file's `auto_map` (an `AutoProcessor` entry
    naming processing_*.py) and `processor_class`; saved on its own, those would send `trust_remote_code` loaders
    to a file the folder does not have. Rebuilt from its settings, the class's own registration writes a clean
    `auto_map` and copies exactly its module.
    """
    settings = {k: v for k, v in image_processor.to_dict().items() if k not in _INHERITED_PROCESSOR_KEYS}
    return type(image_processor).from_dict(settings)


def _is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _write_card(directory: Path) -> None:
    if ARTIFACT_HOOKS.render_card is not None:
        (directory / "README.md").write_text(str(ARTIFACT_HOOKS.render_card(directory)), encoding="utf-8")


def save_finetuned(
    model,
    directory: str | Path,
    *,
    image_processor=None,
    base_model: str | None = None,
    summary: dict | None = None,
) -> Path:
    """Save a fine-tuned classifier or a LoRA adapter (a `PeftModel`) as a portable folder; return the folder.

    Both get the classifier's `config.json` (class names, `auto_map`) and code, the image processor (see
    :func:`portable_image_processor`), `summary` as training_summary.json and a model card. An adapter gets its
    PEFT files next to them, with `base_model_name_or_path` set to `base_model` (required: a Hub id or an absolute
    path; the classifier config saved with it carries the class names that the base checkpoint lacks).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _is_peft_model(model):
        if not base_model:
            raise ValueError("saving a LoRA adapter needs base_model= (a Hub id or an absolute path)")
        # The classifier's config and code without weights: `AutoConfig.from_pretrained(adapter)` then gives the
        # base model the head size and class names the adapter's `modules_to_save` expect.
        model.get_base_model().save_pretrained(directory, state_dict={})
        # Set for the save only: the caller's model keeps its own base path.
        previous = {name: config.base_model_name_or_path for name, config in model.peft_config.items()}
        try:
            for adapter_config in model.peft_config.values():
                adapter_config.base_model_name_or_path = base_model
            model.save_pretrained(directory)
        finally:
            for name, path in previous.items():
                model.peft_config[name].base_model_name_or_path = path
    else:
        model.save_pretrained(directory)
    if image_processor is not None:
        portable_image_processor(image_processor).save_pretrained(directory)
    if summary is not None:
        _write_json(directory / TRAINING_SUMMARY_NAME, summary)
    _write_card(directory)
    problems = ARTIFACT_HOOKS.portability_problems(directory) if ARTIFACT_HOOKS.portability_problems else []
    if problems:
        logger.warning("%s will not load everywhere: %s", directory, "; ".join(problems))
    return directory


def record_evaluation(directory: str | Path, evaluation: dict) -> None:
    """Store a saved artifact's own test results (`eval_results.json`, evaluation-suite layout) and re-render its
    model card so that the card and its `model-index` report them."""
    directory = Path(directory)
    _write_json(directory / EVAL_RESULTS_NAME, evaluation)
    _write_card(directory)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8"
    )


def _json_default(value):
    if isinstance(value, np.generic):  # metric values and counts computed with numpy
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _freeze_batch_norm_statistics(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.inference_mode()
def predict(model, loader, accelerator, mean, std, multi_label: bool) -> np.ndarray:
    """Class probabilities `(M, C)` over a prepared loader, gathered from every process in order."""
    model.eval()
    outputs = []
    for batch in loader:
        pixel_values = to_model_input(batch["pixels"].cpu().numpy(), mean, std)
        with accelerator.autocast():
            logits = model(pixel_values=pixel_values.to(accelerator.device)).logits.float()
        probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
        outputs.append(accelerator.gather_for_metrics(probabilities).cpu())
    return torch.cat(outputs).numpy().astype(np.float64)
