"""The evaluation harness: one or more models × one labelled data set × the protocols of METHODS §3.

    results = evaluate_models({"maskedclip": "outputs/demo_maskedclip/final"}, "data/test.csv",
                              tasks=["zero-shot", "linear-probe"], random_init=True)

Flow: read the labelled records once → cache the pixels once per image geometry → fix the test set (a given
test manifest, or a seeded group-aware stratified split) → per model extract features once (cached) → run each
task over its seeds / label fractions / shots on those features (fine-tuning trains on the cached pixels) →
metrics per run → mean ± std rows. `retvlp evaluate` is a thin CLI over `evaluate_models`.

Result rows are `results.ResultRow`s and the document an `results.EvaluationResults` (`results.py` holds the
schema; `results["results"]` of the returned dict is its rows as JSON); std is the sample standard deviation
over seeds (0 for one).
A deterministic setting (the linear probe on 100 % of the labels: the same rows and a deterministic solver
for every seed) is run once, for the first seed.

What the numbers mean is stated next to them: `results["dataset"]` holds the class order used by every metric
(`classes`, and `class_order`: where it comes from), whether the classes are `ordinal` (quadratic κ is only
computed for ordinal tasks, over that order) and the `positive_class` of the binary metrics (PR-AUC);
`results["references"]` the majority-class and chance levels of the same test set (`references.py`).
The test split, label fractions and few-shot draws depend only on the rows, their labels, groups and the seed,
never on the order the classes are listed in (`splits.order_free_targets`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .calibrated import fit_calibration, fold_temperature, save_calibration
from .data import (
    CLASS_ORDER_SORTED,
    MAX_LISTED_EXCLUSIONS,
    LabelledRecords,
    UnusableImagesError,
    cache_images,
    drop_bad_images,
    geometry_of,
    normalization_of,
    positive_class_of,
    read_labelled_records,
    summarize_counts,
    with_positive_class,
)
from .distributed import SINGLE, Processes, evaluation_processes
from .features import class_prototypes, extract_image_features, has_text_tower, logit_scale_of
from .finetune import FinetuneSettings, finetune, record_evaluation
from .linear_probe import DEFAULT_C, linear_probe_probabilities
from .metrics import METRIC_NAMES, classification_metrics
from .protocols import FEW_SHOT_METHODS, TASKS
from .references import reference_levels
from .results import (
    DatasetInfo,
    EvaluationResults,
    MetricSummary,
    ModelInfo,
    Reference,
    ResultRow,
    SkippedTask,
)
from .splits import few_shot_indices, group_stratified_split, nested_label_fractions, order_free_targets
from .trust import RunScores, TrustSettings, row_figures
from .zero_shot import multi_label_threshold, prompt_ensembles, zero_shot_probabilities

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    """What to run. Defaults: METHODS §3 (fractions 1/10/100 %, 1/5/10 shots, C = 0.316, α = 1, β = 5)."""

    tasks: tuple[str, ...] = ("zero-shot", "linear-probe")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    shots: tuple[int, ...] = (1, 5, 10)
    few_shot_methods: tuple[str, ...] = FEW_SHOT_METHODS
    test_fraction: float = 0.2
    split_seed: int = 0
    modality: str = "CFP"
    templates: list[str] | None = None
    include_descriptions: bool = True
    probe_C: float = DEFAULT_C
    probe_standardize: bool = True
    batch_size: int = 64
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    # What a clinical reader needs besides the means (trust.py): patient-bootstrap intervals on every metric,
    # calibration, conformal sets and operating points. The calibration patients are held out of the training
    # pool (group-stratified, like the test split) and scored by every protocol; 0 turns them off.
    bootstrap: int = 1000  # resamples of the test patients; 0: no intervals
    confidence: float = 0.95
    calibration_fraction: float = 0.1  # of the training pool's patients
    calibration_bins: int = 15  # ECE bins (equal mass)
    coverage: tuple[float, ...] = (0.9,)  # conformal target coverages
    conformal_methods: tuple[str, ...] = ("lac", "aps")
    operating_points: dict = field(default_factory=lambda: {"spec": (0.9, 0.95), "sens": (0.9,)})
    # evidence maps (evidence.py) of up to `maps` correct and `maps` wrong zero-shot test images per class,
    # overlaid on the photograph under <output_dir>/evidence/; 0: none
    maps: int = 0
    save_models: bool = True  # fine-tuned models / LoRA adapters under <output_dir>/finetuned/
    cache_dir: str | None = None
    show_progress: bool = True

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"Unknown task(s) {unknown or self.tasks}: choose from {', '.join(TASKS)}.")
        bad = [m for m in self.few_shot_methods if m not in FEW_SHOT_METHODS]
        if bad:
            raise ValueError(f"Unknown few-shot method(s) {bad}: choose from {', '.join(FEW_SHOT_METHODS)}.")
        if not self.seeds:
            raise ValueError("Give at least one seed.")
        if any(not 0 < f <= 1 for f in self.fractions) or not self.fractions:
            raise ValueError(f"Label fractions must be in (0, 1], got {self.fractions}.")
        if any(int(s) < 1 for s in self.shots):
            raise ValueError(f"Shots must be at least 1, got {self.shots}.")
        if int(self.maps) < 0:
            raise ValueError(f"maps must be >= 0 images per class (0: no evidence maps), got {self.maps}.")
        if int(self.bootstrap) < 0:
            raise ValueError(
                f"bootstrap must be >= 0 resamples (0 turns the intervals off), got {self.bootstrap}."
            )
        if not 0 < float(self.confidence) < 1:
            raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {self.confidence}.")
        if not 0 <= float(self.calibration_fraction) < 1:
            raise ValueError(
                f"calibration_fraction must lie in [0, 1) (0: no calibration split); got {self.calibration_fraction}."
            )
        if any(not 0 < float(c) < 1 for c in self.coverage):
            raise ValueError(f"Conformal coverages must lie in (0, 1), e.g. 0.9; got {self.coverage}.")
        unknown = [m for m in self.conformal_methods if m not in ("lac", "aps")]
        if unknown:
            raise ValueError(f"Unknown conformal method(s) {unknown}: choose from lac, aps.")
        bad = {k: v for k, v in self.operating_points.items() if k not in ("spec", "sens")}
        if bad or any(not 0 < float(x) <= 1 for v in self.operating_points.values() for x in v):
            raise ValueError(
                f"operating_points must map 'spec' / 'sens' to levels in (0, 1], e.g. {{'spec': (0.9,)}}; got "
                f"{self.operating_points}."
            )

    @property
    def trust(self):
        return TrustSettings(
            bootstrap=int(self.bootstrap),
            confidence=float(self.confidence),
            seed=int(self.split_seed),
            n_bins=int(self.calibration_bins),
            coverage=tuple(float(c) for c in self.coverage),
            conformal_methods=tuple(self.conformal_methods),
            operating_points={k: tuple(float(x) for x in v) for k, v in self.operating_points.items()},
        )


# ---------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    image_processor: object
    tokenizer: object | None
    max_length: int
    source: object  # what fine-tuning starts from: a path / Hub id, or the model itself


def load_model(name: str, source, device: str | None = None) -> LoadedModel:
    """A model and its processor from a directory / Hub id, or from `(model, processor)`."""
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

    if isinstance(source, (tuple, list)):
        model, processor = source
        origin = model
    else:
        origin = str(source)
        check_model_source(origin)
        model = AutoModel.from_pretrained(origin)
        try:
            processor = AutoProcessor.from_pretrained(origin)
        except (OSError, ValueError, TypeError):
            processor = AutoImageProcessor.from_pretrained(origin)
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None and has_text_tower(model) and isinstance(origin, str):
        try:
            tokenizer = AutoTokenizer.from_pretrained(origin)
        except (OSError, ValueError):
            tokenizer = None
    max_length = getattr(processor, "max_length", None) or min(
        getattr(tokenizer, "model_max_length", 77), 512
    )
    text_positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    max_length = int(min(max_length, text_positions or max_length))
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(name, model, image_processor, tokenizer, max_length, origin)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_local(source: str) -> bool:
    """Whether `source` can only be a local path: not of the Hub's `name` / `namespace/name` form, or its
    first component is a folder here (`runs/x` with a `runs/` folder)."""
    if not _HUB_ID.match(source) or source.startswith((".", "~")):
        return True
    return "/" in source and Path(source.split("/", 1)[0]).is_dir()


def _released_model_in(run_dir: Path) -> Path | None:
    """The released model of a training run directory (`final/` with a config.json), if any."""
    final = run_dir / "final"
    return final if (final / "config.json").is_file() else None


def check_model_source(source: str) -> None:
    """Fail early, with what to do, for a model path that cannot load: a local path that does not exist, a
    training run directory (its released model is `final/`), a folder without `config.json`. Hub ids pass
    (unless `HF_HUB_OFFLINE=1`). Raises `FileNotFoundError`."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return
        final = _released_model_in(path)
        if final is not None:
            raise FileNotFoundError(f"{source} is a training run directory; the released model is {final}")
        if (path / "run_config.yaml").is_file() or any(path.glob("checkpoint-*")):
            raise FileNotFoundError(
                f"{source} is a training run directory without a released model (no {path / 'final'}: the "
                "run has not finished); evaluate its final/ folder once training completes."
            )
        raise FileNotFoundError(
            f"{source} has no config.json: not a model directory (give the folder save_pretrained wrote)."
        )
    if path.exists():
        raise FileNotFoundError(f"{source} is a file, not a model directory.")
    if _looks_local(source):
        raise FileNotFoundError(f"no such model directory: {source}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(source):
        raise FileNotFoundError(
            f"no such model directory: {source} (and HF_HUB_OFFLINE=1 rules out loading it from the Hub; it is "
            "not in the local Hub cache either)"
        )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hub model `repo_id` is in the local Hugging Face cache (loadable offline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def random_init_copy(loaded: LoadedModel, seed: int) -> LoadedModel:
    """The same architecture at seeded random weights (the baseline every pretrained number is read against)."""
    torch.manual_seed(seed)
    model = type(loaded.model)(loaded.model.config)
    model.to(next(loaded.model.parameters()).device).eval()
    return LoadedModel(
        "random_init", model, loaded.image_processor, loaded.tokenizer, loaded.max_length, model
    )


# ---------------------------------------------------------------------------------------------- results
def summarize(values: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric: mean, std (sample std over runs; 0 for one run) and the run values (as JSON)."""
    return {name: MetricSummary.of_runs([v[name] for v in values]).to_json() for name in values[0]}


def _row(
    model, task, metrics_per_seed, seeds, num_train, method=None, fraction=None, shots=None
) -> ResultRow:
    return ResultRow.of_runs(
        model, task, metrics_per_seed, seeds, num_train, method=method, fraction=fraction, shots=shots
    )


def metric_names(*, multi_label: bool, ordinal: bool) -> tuple[str, ...]:
    """The metrics reported: all six, quadratic κ only for ordinal single-label tasks (on nominal classes its
    squared class-id distances would measure an arbitrary order)."""
    keep_kappa = ordinal and not multi_label
    return tuple(name for name in METRIC_NAMES if name != "quadratic_kappa" or keep_kappa)


@dataclass
class _Context:
    labelled: LabelledRecords
    pool: np.ndarray
    test: np.ndarray
    settings: EvaluationSettings
    metrics: tuple[str, ...] = METRIC_NAMES
    predictions: dict = field(default_factory=dict)  # (model, task, method, fraction, shots) → probabilities
    references: dict[str, Reference] = field(default_factory=dict)
    prompts: list[list[str]] | None = None  # zero-shot prompts per class (default: the prompt ensembles)
    # patients held out of `pool` to calibrate on (temperature, conformal sets, thresholds); scored with the test
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def scored(self) -> np.ndarray:
        """The records every protocol predicts: the test records, then the calibration records."""
        return np.concatenate([self.test, self.calibration]).astype(np.int64)

    def parts(self, probabilities: np.ndarray) -> RunScores:
        """Probabilities over `scored` split into the test part and the calibration part (None without one)."""
        probabilities = np.asarray(probabilities)
        n = len(self.test)
        return RunScores(probabilities[:n], probabilities[n:] if len(self.calibration) else None)

    def summary_row(self, model, task, runs, seeds, num_train, *, threshold=0.5, **setting) -> ResultRow:
        """The row of one setting over its seeds' runs (`RunScores`): the metrics' mean ± std, their patient
        bootstrap intervals and the trust figures (`trust.row_figures`)."""
        labelled = self.labelled
        row = _row(
            model, task, [self.score(run.test, threshold) for run in runs], seeds, num_train, **setting
        )
        figures = row_figures(
            runs,
            labelled.targets[self.test],
            labelled.groups[self.test],
            labelled.targets[self.calibration] if len(self.calibration) else None,
            list(labelled.class_names),
            metrics=self.metrics,
            multi_label=labelled.multi_label,
            threshold=threshold,
            binary_positive=1 if len(labelled.class_names) == 2 and not labelled.multi_label else None,
            settings=self.settings.trust,
        )
        for name, interval in figures.intervals.items():
            if name in row.metrics:
                row.metrics[name] = replace(row.metrics[name], ci=list(interval))
        row.extras = figures.extras
        return row

    @property
    def strata_targets(self) -> np.ndarray:
        """The targets the sampling functions see: class ids in sorted-name order (order-independent draws)."""
        return order_free_targets(self.labelled.targets, self.labelled.class_names)

    def score(self, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
        return classification_metrics(
            self.labelled.targets[self.test],
            probabilities,
            multi_label=self.labelled.multi_label,
            threshold=threshold,
            names=self.metrics,
        )

    def keep(self, key: tuple, probabilities: np.ndarray) -> None:
        self.predictions.setdefault(key, probabilities)  # the first seed's, for ROC curves


# ---------------------------------------------------------------------------------------------- tasks
def run_zero_shot(loaded: LoadedModel, features, ctx: _Context) -> list[ResultRow]:
    if features.embeds is None or loaded.tokenizer is None:
        raise ValueError(f"{loaded.name}: zero-shot needs a text encoder and a tokenizer.")
    s = ctx.settings
    prompts = ctx.prompts or prompt_ensembles(
        ctx.labelled.class_names,
        modality=s.modality,
        templates=s.templates,
        include_descriptions=s.include_descriptions,
    )
    prototypes = class_prototypes(loaded.model, loaded.tokenizer, prompts, max_length=loaded.max_length)
    run = ctx.parts(
        zero_shot_probabilities(features.embeds[ctx.scored], prototypes, logit_scale_of(loaded.model))
    )
    ctx.keep((loaded.name, "zero-shot", None, None, None), run.test)
    threshold = multi_label_threshold(len(ctx.labelled.class_names))
    return [ctx.summary_row(loaded.name, "zero-shot", [run], [0], 0, threshold=threshold)]


def _probe_seeds(fraction: float, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """The seeds a linear-probe setting runs: one for 100 % of the labels (every seed would train the same
    deterministic lbfgs fit on the same rows), all of them otherwise."""
    return tuple(seeds[:1]) if fraction >= 1.0 else tuple(seeds)


def run_linear_probe(loaded: LoadedModel, features, ctx: _Context) -> list[ResultRow]:
    from tqdm.auto import tqdm

    s, labelled = ctx.settings, ctx.labelled
    seeds_of = {f: _probe_seeds(f, s.seeds) for f in s.fractions}
    runs: dict[float, list] = {f: [] for f in s.fractions}
    sizes: dict[float, list] = {f: [] for f in s.fractions}
    progress = tqdm(
        total=sum(len(seeds) for seeds in seeds_of.values()),
        desc=f"{loaded.name} linear probe",
        disable=not s.show_progress,
        leave=False,
    )
    strata = ctx.strata_targets
    for seed in s.seeds:
        subsets = nested_label_fractions(strata[ctx.pool], labelled.groups[ctx.pool], s.fractions, seed)
        for fraction in s.fractions:
            if seed not in seeds_of[fraction]:
                continue
            train = ctx.pool[subsets[fraction]]
            run = ctx.parts(
                linear_probe_probabilities(
                    features.probe[train],
                    labelled.targets[train],
                    features.probe[ctx.scored],
                    len(labelled.class_names),
                    multi_label=labelled.multi_label,
                    C=s.probe_C,
                    standardize=s.probe_standardize,
                    seed=seed,
                )
            )
            ctx.keep((loaded.name, "linear-probe", None, fraction, None), run.test)
            runs[fraction].append(run)
            sizes[fraction].append(len(train))
            progress.update(1)
    progress.close()
    return [
        ctx.summary_row(
            loaded.name, "linear-probe", runs[f], seeds_of[f], float(np.mean(sizes[f])), fraction=f
        )
        for f in s.fractions
    ]


def run_few_shot(loaded: LoadedModel, features, ctx: _Context) -> list[ResultRow]:
    from tqdm.auto import tqdm

    from .few_shot import FEW_SHOT_METHODS as methods

    s, labelled = ctx.settings, ctx.labelled
    if labelled.multi_label:
        raise ValueError("Few-shot evaluation needs single-label data (k images per class).")
    if features.embeds is None or loaded.tokenizer is None:
        raise ValueError(f"{loaded.name}: few-shot adapters need a text encoder and a tokenizer.")
    prompts = prompt_ensembles(
        labelled.class_names,
        modality=s.modality,
        templates=s.templates,
        include_descriptions=s.include_descriptions,
    )
    prototypes = class_prototypes(loaded.model, loaded.tokenizer, prompts, max_length=loaded.max_length)
    total = len(s.shots) * len(s.seeds) * len(s.few_shot_methods)
    with tqdm(total=total, desc=f"{loaded.name} few-shot", disable=not s.show_progress, leave=False) as bar:
        return _few_shot_rows(loaded, features, prototypes, ctx, methods, bar)


def _few_shot_rows(loaded: LoadedModel, features, prototypes, ctx: _Context, methods, progress) -> list[dict]:
    """Every (shots, seed, method) run, one progress step each; one row per (shots, method)."""
    s, labelled = ctx.settings, ctx.labelled
    strata = ctx.strata_targets
    rows = []
    for shots in s.shots:
        runs: dict[str, list] = {m: [] for m in s.few_shot_methods}
        for seed in s.seeds:
            drawn = few_shot_indices(strata[ctx.pool], int(shots), seed, labelled.groups[ctx.pool])
            chosen = ctx.pool[drawn]
            for method in s.few_shot_methods:
                progress.set_postfix_str(f"{method}, {shots} shot{'s' if shots != 1 else ''}, seed {seed}")
                kwargs = {} if method == "tip-adapter" else {"seed": seed}
                prediction = methods[method](
                    features.embeds[chosen],
                    labelled.targets[chosen],
                    features.embeds[ctx.scored],
                    prototypes,
                    **kwargs,
                )
                run = ctx.parts(np.asarray(prediction.probabilities, dtype=np.float64))
                ctx.keep((loaded.name, "few-shot", method, None, shots), run.test)
                runs[method].append(run)
                progress.update(1)
        num_train = int(shots) * len(labelled.class_names)
        rows += [
            ctx.summary_row(loaded.name, "few-shot", runs[m], s.seeds, num_train, method=m, shots=int(shots))
            for m in s.few_shot_methods
        ]
    return rows


def run_finetune(
    loaded: LoadedModel, task: str, store, mean, std, ctx: _Context, output_dir
) -> list[ResultRow]:
    s, labelled = ctx.settings, ctx.labelled
    base = replace(s.finetune, method="lora" if task == "lora" else "full")
    if loaded.name == "random_init":
        base = replace(base, init="random")
    rows = []
    runs: dict[float, list] = {f: [] for f in s.fractions}
    sizes: dict[float, list] = {f: [] for f in s.fractions}
    strata = ctx.strata_targets
    for seed in s.seeds:
        subsets = nested_label_fractions(strata[ctx.pool], labelled.groups[ctx.pool], s.fractions, seed)
        for fraction in s.fractions:
            train = ctx.pool[subsets[fraction]]
            settings = replace(base, seed=seed)
            run_dir = (
                Path(output_dir) / f"{loaded.name}-{task}-fraction{fraction:g}-seed{seed}"
                if output_dir
                else None
            )
            result = finetune(
                loaded.source if loaded.name != "random_init" else loaded.model,
                labelled,
                store,
                mean,
                std,
                train,
                ctx.scored,
                settings,
                output_dir=run_dir,
                image_processor=loaded.image_processor,
                run_info={"model": loaded.name, "fraction": fraction},
                show_progress=s.show_progress,
            )
            run = ctx.parts(result.probabilities)
            ctx.keep((loaded.name, task, None, fraction, None), run.test)
            runs[fraction].append(run)
            sizes[fraction].append(len(train))
            if result.saved_to is not None and int(os.environ.get("RANK", "0")) == 0:
                # The artifact's card reports this run (its seed), not the mean over seeds of the whole protocol;
                # one run has no spread (std None, not 0).
                row = ctx.summary_row(
                    loaded.name, task, [run], [seed], len(train), fraction=fraction
                ).single_run()
                own = EvaluationResults(_dataset_info(ctx), [row], references=ctx.references)
                if run.calibration is not None and not labelled.multi_label:
                    content = fit_calibration(
                        run.calibration,
                        labelled.targets[ctx.calibration],
                        labelled.class_names,
                        coverage=s.coverage,
                        methods=s.conformal_methods,
                        operating_points=s.operating_points,
                        temperature_in_weights=True,
                    )
                    # the saved head outputs logits / T: the pipeline's softmax is the calibrated one
                    fold_temperature(result.saved_to, content["temperature"])
                    save_calibration(result.saved_to, content)
                record_evaluation(result.saved_to, own.to_json())  # re-renders the card, calibration included
    rows += [
        ctx.summary_row(loaded.name, task, runs[f], s.seeds, float(np.mean(sizes[f])), fraction=f)
        for f in s.fractions
    ]
    return rows


def _dataset_info(ctx: _Context, **details) -> DatasetInfo:
    """What the metrics are computed over: the class order (and its origin), ordinality, positive class, the
    split sizes, and the `details` of the full report (test split, counts, exclusions)."""
    labelled = ctx.labelled
    return DatasetInfo(
        name=labelled.name,
        classes=list(labelled.class_names),
        class_order=labelled.class_order,
        ordinal="quadratic_kappa" in ctx.metrics,
        positive_class=positive_class_of(labelled),
        multi_label=bool(labelled.multi_label),
        num_train=int(len(ctx.pool)),
        num_test=int(len(ctx.test)),
        num_calibration=int(len(ctx.calibration)) if len(ctx.calibration) else None,
        **details,
    )


def _check_ordinal(labelled: LabelledRecords) -> None:
    """An ordinal task needs a real order: refuse multi-label data and the alphabetical default (which sorts
    `NPDR, PDR, no_DR`), unless the names are integers whose string order is their numeric order."""
    if labelled.multi_label:
        raise ValueError("--ordinal applies to single-label grades; this data is multi-label.")
    if labelled.class_order != CLASS_ORDER_SORTED:
        return
    names = labelled.class_names
    if all(name.lstrip("-").isdigit() for name in names) and [int(n) for n in names] == sorted(
        int(n) for n in names
    ):
        return
    raise ValueError(
        f"--ordinal needs the grades in order, but the classes of {labelled.name} are only sorted "
        f"alphabetically ({', '.join(names)}): give the order, lowest grade first, with --classes "
        "(class_names=...) or a ClassLabel feature."
    )


# ---------------------------------------------------------------------------------------------- driver
def fixed_split(labelled: LabelledRecords, num_pool: int | None, settings: EvaluationSettings):
    """`(pool, test)` record indices: the given test records (the last `len - num_pool`), or a seeded
    group-aware stratified split that depends on the rows, labels, groups and `settings.split_seed` only —
    not on the order of `labelled.class_names`."""
    if num_pool is None:
        strata = order_free_targets(labelled.targets, labelled.class_names)
        return group_stratified_split(strata, labelled.groups, settings.test_fraction, settings.split_seed)
    pool, test = np.arange(num_pool), np.arange(num_pool, len(labelled))
    shared = set(labelled.groups[pool].tolist()) & set(labelled.groups[test].tolist())
    if shared:
        raise ValueError(
            f"{len(shared)} patient(s) or image file(s) are in both the training data and the test data (e.g. "
            f"{sorted(map(str, shared))[:5]}): remove them from one side, or leave out --test-data to let the "
            "harness split by patient."
        )
    return pool, test


def calibration_split(
    labelled: LabelledRecords, pool: np.ndarray, settings: EvaluationSettings
) -> tuple[np.ndarray, np.ndarray, str]:
    """`(training pool, calibration records, how they were chosen)`: `settings.calibration_fraction` of the
    pool's patients, held out group-aware and stratified like the test split (its own seed stream:
    `split_seed + 1`), so that no patient is both trained and calibrated on. A fraction of 0, or a pool too
    small to split (a warning, and the reason in the results), keeps the whole pool."""
    fraction = float(settings.calibration_fraction)
    none = np.zeros(0, dtype=np.int64)
    if fraction == 0:
        return pool, none, "none (calibration_fraction 0)"
    strata = order_free_targets(labelled.targets, labelled.class_names)[pool]
    try:
        kept, held = group_stratified_split(strata, labelled.groups[pool], fraction, settings.split_seed + 1)
    except ValueError as error:
        reason = f"none: {fraction:g} of the training pool's patients could not be held out ({error})"
        logger.warning(
            "No calibration split (%s): temperature scaling, conformal sets and operating points are not computed.",
            reason,
        )
        return pool, none, reason
    return (
        pool[np.sort(kept)],
        pool[np.sort(held)],
        f"group-aware stratified {fraction:g} of the training pool",
    )


def _concatenate(first: LabelledRecords, second: LabelledRecords) -> LabelledRecords:
    return LabelledRecords(
        records=first.records + second.records,
        class_names=first.class_names,
        targets=np.concatenate([first.targets, second.targets]),
        groups=np.concatenate([first.groups, second.groups]),
        multi_label=first.multi_label,
        name=first.name,
        excluded={
            k: first.excluded.get(k, 0) + second.excluded.get(k, 0)
            for k in {**first.excluded, **second.excluded}
        },
        excluded_examples=(first.excluded_examples + second.excluded_examples)[:MAX_LISTED_EXCLUSIONS],
        class_order=first.class_order,
    )


def evaluate_models(
    models: dict,
    data,
    *,
    test_data=None,
    class_names: list[str] | None = None,
    multi_label: bool | None = None,
    ordinal: bool = False,
    positive_class: str | None = None,
    settings: EvaluationSettings | None = None,
    random_init: bool = False,
    output_dir: str | Path | None = None,
    dataset_name: str | None = None,
    device: str | None = None,
    on_bad_sample: str = "skip",
    pretrain_data=None,
    exclude_leaked: bool = False,
) -> dict:
    """Run `settings.tasks` for every model on `data` and return the results (and write the report when
    `output_dir` is given: results.json, results.md, PNG plots, per-run predictions).

    Args:
        models: `{name: directory | Hub id | (model, processor)}`, e.g. `{"maskedclip": "runs/final",
            "clip": (clip_model, clip_processor)}`; any dual encoder with `get_image_features` /
            `get_text_features` works (image-only models: linear probe and fine-tuning).
        data: the labelled data (the training pool when `test_data` is given; otherwise a group-aware
            stratified `test_fraction` of it becomes the fixed test set): manifest path(s), `save_to_disk`
            folder(s), in-memory `datasets.Dataset`(s) or spec dict(s) (`evaluation.data`).
        class_names: the class order every metric uses (default: the data's `ClassLabel` names, else the labels
            found, sorted as strings); `results["dataset"]["class_order"]` records which applied.
        ordinal: the classes are ordered grades (lowest first): quadratic κ is computed, over that order. It
            is left out for nominal classes. Refused with the alphabetical default order unless the class
            names are integers in numeric order.
        positive_class: for a binary task, the class whose PR-AUC is reported (it becomes class 1; default:
            the second class in order). Recorded as `results["dataset"]["positive_class"]`.
        random_init: also evaluate the first model's architecture at seeded random weights.
        on_bad_sample: rows and images that could not be used (unreadable rows, images outside the data roots or
            failing to decode; `evaluation.data.UNUSABLE_REASONS`) are left out and listed in the results
            ("skip"), or refused with `UnusableImagesError` listing them before any task runs ("error", the
            default of `retvlp evaluate`).
        pretrain_data: the pretraining manifests (paths or spec dicts): check the data for leakage first
            (`leakage.check_evaluation_leakage`: exact and near duplicates, shared patient ids); a warning,
            `results["leakage"]`, a Leakage section in results.md and `<output_dir>/leakage/`.
        exclude_leaked: leave the leaked records out of the evaluation (counted as `excluded["leaked"]`).
    """
    from .report import write_report

    settings = settings or EvaluationSettings()
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; choose 'error' or 'skip'.")
    _check_models(models)
    labelled, num_pool = _read_data(
        data, test_data, class_names, multi_label, ordinal, positive_class, dataset_name
    )
    leakage = None
    if pretrain_data is not None or exclude_leaked:
        from .leakage import check_evaluation_leakage

        leakage, labelled, num_pool = check_evaluation_leakage(
            labelled, num_pool, pretrain_data, exclude=exclude_leaked, show_progress=settings.show_progress
        )
    processes = evaluation_processes()  # under `accelerate launch`: feature extraction is shared out
    loaded = _load_models(models, device, random_init=random_init, seed=settings.split_seed)
    with processes.main_first():  # the main process decodes the images; the others read its store
        labelled, stores, num_pool = _cache_pixels(labelled, loaded, num_pool, settings)
    if on_bad_sample == "error" and labelled.unusable()[0]:
        raise UnusableImagesError.of(labelled)
    pool, test = fixed_split(labelled, num_pool, settings)
    pool, calibration, calibration_note = calibration_split(labelled, np.asarray(pool), settings)
    names = metric_names(multi_label=labelled.multi_label, ordinal=ordinal)
    ctx = _Context(labelled, pool, np.asarray(test), settings, metrics=names, calibration=calibration)
    ctx.references = _references(ctx)
    document = _results_document(ctx, given_test=test_data is not None, calibration_split=calibration_note)
    finetune_dir = Path(output_dir) / "finetuned" if output_dir is not None and settings.save_models else None
    evidence_dir = Path(output_dir) / "evidence" if output_dir is not None and settings.maps else None
    for entry in loaded:
        _evaluate_model(entry, stores, ctx, document, finetune_dir, processes, evidence_dir)
    if not document.rows:
        problems = {
            name: [t.to_json() for t in info.skipped_tasks] or None for name, info in document.models.items()
        }
        raise ValueError(f"No task could be run: {problems}")
    if output_dir is not None and processes.is_main:  # every process holds the same results: one writes them
        write_report(document, ctx.predictions, labelled.targets[ctx.test], output_dir)
    results = document.to_json()
    if leakage is not None:
        from .leakage import leakage_section, write_leakage

        results["leakage"] = leakage_section(leakage, excluded=exclude_leaked)
        if output_dir is not None and processes.is_main:
            write_leakage(leakage, output_dir, excluded=exclude_leaked)
    results["predictions"] = ctx.predictions
    results["test_targets"] = labelled.targets[ctx.test]
    return results


def _check_models(models: dict) -> None:
    """Refuse no models, a model named like the random-weights baseline, and a model path that does not exist
    (before any data is read: a wrong path fails in seconds)."""
    if not models:
        raise ValueError("Give at least one model to evaluate.")
    if "random_init" in models:
        raise ValueError(
            '"random_init" is the name of the random-weights baseline: call the model differently.'
        )
    for source in models.values():
        if isinstance(source, (str, os.PathLike)):
            check_model_source(os.fspath(source))


def _load_models(models: dict, device: str | None, *, random_init: bool, seed: int) -> list[LoadedModel]:
    """Every model of `models`, in order, then (with `random_init`) the first one's architecture at weights
    seeded with `seed`."""
    if device is None and torch.cuda.is_available():  # under `accelerate launch`: this process's GPU
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    loaded = [load_model(name, source, device) for name, source in models.items()]
    if random_init:
        loaded.append(random_init_copy(loaded[0], seed))
    return loaded


def _results_document(
    ctx: _Context, *, given_test: bool, calibration_split: str | None = None
) -> EvaluationResults:
    """The results document before any row: what the data is (split, counts, exclusions), the reference
    levels and the settings."""
    labelled, settings = ctx.labelled, ctx.settings
    return EvaluationResults(
        dataset=_dataset_info(
            ctx,
            test_split="given" if given_test else f"group-aware stratified {settings.test_fraction:g}",
            split_seed=settings.split_seed,
            train_counts=summarize_counts(labelled, ctx.pool),
            test_counts=summarize_counts(labelled, ctx.test),
            calibration_split=calibration_split,
            calibration_counts=summarize_counts(labelled, ctx.calibration) if len(ctx.calibration) else None,
            excluded=labelled.excluded,
            excluded_examples=labelled.excluded_examples,
        ),
        references=ctx.references,
        settings=_jsonable(asdict(settings)),
    )


def _evaluate_model(
    entry: LoadedModel,
    stores: dict,
    ctx: _Context,
    document: EvaluationResults,
    finetune_dir: Path | None,
    processes: Processes = SINGLE,
    evidence_dir: Path | None = None,
) -> None:
    """Run every task for one model on the pixels cached at its geometry: frozen features are extracted once
    (only when a feature task runs; shared out over `processes`, every process gets all of them), fine-tuning
    trains on the pixels (saving under `finetune_dir`)."""
    settings = ctx.settings
    store = stores[geometry_of(entry.image_processor)]
    mean, std = normalization_of(entry.image_processor)
    features = (
        extract_image_features(
            entry.model,
            store,
            mean,
            std,
            batch_size=settings.batch_size,
            cache_dir=settings.cache_dir,
            show_progress=settings.show_progress,
            description=f"{entry.name} features",
            processes=processes,
        )
        if needs_features(settings.tasks)
        else None
    )
    run_tasks(entry, features, ctx, document, finetune=(store, mean, std, finetune_dir))
    if evidence_dir is not None and processes.is_main:
        write_evidence_maps(entry, store, mean, std, ctx, evidence_dir)


def write_evidence_maps(entry: LoadedModel, store, mean, std, ctx: _Context, directory: Path) -> list[Path]:
    """Overlays of the model's evidence map for the zero-shot class it predicted (`evidence.evidence_maps`:
    patch–text similarity for MaskedCLIP, the spatial class map for KeepFIT), on up to `settings.maps` correct and
    as many wrong test images per true class, in test order; `directory/<model>/<class>_{correct,wrong}_<i>.png`.
    Models without a text tower or outside both families are skipped with a log line."""
    from .data import to_model_input
    from .evidence import evidence_maps, overlay_png, upsample_to_image

    probabilities = ctx.predictions.get((entry.name, "zero-shot", None, None, None))
    if probabilities is None or entry.tokenizer is None or ctx.labelled.multi_label:
        logger.info("%s: no evidence maps (they need a zero-shot run on single-label data)", entry.name)
        return []
    s, labelled = ctx.settings, ctx.labelled
    prompts = ctx.prompts or prompt_ensembles(
        labelled.class_names,
        modality=s.modality,
        templates=s.templates,
        include_descriptions=s.include_descriptions,
    )
    prototypes = class_prototypes(entry.model, entry.tokenizer, prompts, max_length=entry.max_length)
    targets, predicted = labelled.targets[ctx.test], np.asarray(probabilities).argmax(axis=1)
    written = []
    for k, name in enumerate(labelled.class_names):
        for kind, chosen in (("correct", predicted == k), ("wrong", predicted != k)):
            rows = np.flatnonzero((targets == k) & chosen)[: s.maps]
            if len(rows) == 0:
                continue
            pixels = store.pixels(ctx.test[rows])
            inputs = to_model_input(pixels, mean, std).to(next(entry.model.parameters()).device)
            try:
                with torch.no_grad():
                    maps = evidence_maps(entry.model, inputs, prototypes)
            except ValueError as error:
                logger.info("%s: no evidence maps (%s)", entry.name, error)
                return written
            shown = maps[torch.arange(len(rows)), torch.as_tensor(predicted[rows])]
            heat = upsample_to_image(shown.float().cpu(), pixels.shape[1:3])
            folder = directory / entry.name
            folder.mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(rows):
                title = f"{name} → {labelled.class_names[predicted[row]]}"  # true → zero-shot (its map)
                path = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}_{kind}_{i}.png"
                written.append(Path(overlay_png(pixels[i], heat[i], path, title)))
    return written


def _read_data(data, test_data, class_names, multi_label, ordinal, positive_class, dataset_name):
    """`(labelled records, number of training-pool records or None)`: the pool followed by the given test
    records, in the pool's class order (with the positive class applied and an ordinal order checked)."""
    labelled = read_labelled_records(data, class_names, multi_label=multi_label, name=dataset_name)
    if positive_class is not None:
        labelled = with_positive_class(labelled, str(positive_class))
    if ordinal:
        _check_ordinal(labelled)
    if test_data is None:
        return labelled, None
    test = read_labelled_records(test_data, labelled.class_names, multi_label=labelled.multi_label)
    return _concatenate(labelled, test), len(labelled)


def _cache_pixels(labelled: LabelledRecords, loaded: list[LoadedModel], num_pool, settings):
    """Cache the pixels once per image geometry of the models and drop the records whose image failed its
    checks (from the pool and the given test set alike): `(labelled, {geometry: store}, num_pool)`."""
    geometries = dict.fromkeys(geometry_of(entry.image_processor) for entry in loaded)
    stores = {
        g: cache_images(labelled, g, cache_dir=settings.cache_dir, show_progress=settings.show_progress)
        for g in geometries
    }
    if num_pool is not None:
        usable = np.logical_and.reduce([store.ok for store in stores.values()])
        num_pool = int(usable[:num_pool].sum())
    labelled, kept_stores = drop_bad_images(labelled, list(stores.values()))
    return labelled, dict(zip(stores, kept_stores, strict=True)), num_pool


def _references(ctx: _Context) -> dict[str, Reference]:
    labelled = ctx.labelled
    levels = reference_levels(
        labelled.targets[ctx.pool],
        labelled.targets[ctx.test],
        labelled.class_names,
        multi_label=labelled.multi_label,
        names=ctx.metrics,
    )
    return {name: Reference.from_json(level, key=f"references.{name}") for name, level in levels.items()}


def needs_features(tasks) -> bool:
    """Whether any of `tasks` runs on frozen features (everything but fine-tuning)."""
    return any(t in tasks for t in ("zero-shot", "few-shot", "linear-probe"))


def model_info(entry: LoadedModel) -> ModelInfo:
    return ModelInfo(
        source=entry.source if isinstance(entry.source, str) else type(entry.source).__name__,
        class_name=type(entry.model).__name__,
        model_type=getattr(entry.model.config, "model_type", None),
    )


def run_tasks(
    entry: LoadedModel, features, ctx: _Context, document: EvaluationResults, *, finetune=None
) -> None:
    """Run `ctx.settings.tasks` for one model on its frozen `features` (and, for fine-tuning, `finetune =
    (store, mean, std, output_dir)`), appending its rows and model entry to `document`. A task that cannot run
    on the data is recorded under the model's `skipped_tasks`; the other tasks still run."""
    info = document.models.setdefault(entry.name, model_info(entry))
    for task in ctx.settings.tasks:
        if task in ("zero-shot", "few-shot") and (features.embeds is None or entry.tokenizer is None):
            logger.warning("%s: skipping %s (no text encoder / tokenizer)", entry.name, task)
            info.skipped_tasks.append(SkippedTask(task, "no text encoder / tokenizer"))
            continue
        try:
            if task == "zero-shot":
                rows = run_zero_shot(entry, features, ctx)
            elif task == "linear-probe":
                rows = run_linear_probe(entry, features, ctx)
            elif task == "few-shot":
                rows = run_few_shot(entry, features, ctx)
            else:
                store, mean, std, finetune_dir = finetune
                rows = run_finetune(entry, task, store, mean, std, ctx, finetune_dir)
        except ValueError as exc:  # e.g. few-shot on multi-label data: report it, keep the other results
            logger.error("%s: %s failed: %s", entry.name, task, exc)
            info.skipped_tasks.append(SkippedTask(task, str(exc)))
            continue
        document.rows += rows


def evaluate_features(
    entries: list[tuple[LoadedModel, object]],
    labelled: LabelledRecords,
    pool: np.ndarray,
    test: np.ndarray,
    settings: EvaluationSettings,
    *,
    prompts: list[list[str]] | None = None,
    metrics: tuple[str, ...] | None = None,
) -> EvaluationResults:
    """The frozen-feature protocols of `settings` for already extracted features: `entries` are
    `(model, ImageFeatures over the records of labelled)` pairs, `pool` / `test` record indices. The document
    has no references (the caller knows what its numbers are read against). The pretraining quick check is this
    with a fixed setting (`quick.QUICK_TASKS`)."""
    names = metrics or metric_names(multi_label=labelled.multi_label, ordinal=False)
    ctx = _Context(labelled, np.asarray(pool), np.asarray(test), settings, metrics=names, prompts=prompts)
    document = EvaluationResults(dataset=_dataset_info(ctx))
    for entry, features in entries:
        run_tasks(entry, features, ctx, document)
    return document


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
