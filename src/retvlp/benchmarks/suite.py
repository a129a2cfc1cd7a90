"""The field's benchmark suites as data, and `run_benchmark`: every present dataset × every model, resumable.

A suite is the protocol a paper family evaluates with — which tasks, label fractions, shots, seeds, fine-tuning
hyper-parameters and which metric heads the table — written down once (:class:`SuiteProtocol`) and turned into
the evaluation harness's `EvaluationSettings`. The datasets come from the recipes (`registry.py`): a recipe
says which suites it belongs to, its classes, whether they are graded, and the published figures the
leaderboard shows next to ours.

**RETFound suite** (`retfound`) — Zhou et al., "A foundation model for generalizable disease detection from
retinal images", Nature 622, 156–163 (2023), Methods "Fine-tuning"; code: github.com/rmaphoh/RETFound_MAE
(`main_finetune.py` and the README's fine-tuning command):

- full fine-tuning of the image encoder with a linear head: 50 epochs, 10 of them warm-up, then cosine decay;
  batch 16; AdamW with the MAE recipe's base learning rate 5e-3, i.e. an absolute rate of 5e-3 × 16 / 256 ≈
  3.1e-4; layer-wise lr decay 0.65; weight decay 0.05; drop path 0.2;
- linear probing of the frozen encoder as the second protocol (RETFound's `main_linear_probe.py`; here the
  harness's L2 logistic regression on frozen features);
- the official / published train–val–test split of each dataset (the recipes'); five runs with different
  seeds, mean ± std;
- metrics: AUROC (headline) and AUPR, one-vs-rest macro for multi-class; quadratic κ added for graded tasks
  (APTOS-2019, MESSIDOR-2, IDRiD), as graded-DR benchmarks report it.
- Differences, stated: RETFound keeps the epoch of best validation AUROC; the harness trains the full schedule
  and scores the last epoch, and it uses the validation split as extra training data (`pool = train + val`).

**FLAIR / KeepFIT suite** (`flair`) — Silva-Rodríguez et al., "A Foundation Language-Image Model of the Retina
(FLAIR): encoding expert knowledge in text supervision", Medical Image Analysis 99, 103357 (2025),
arXiv:2308.07898 (code: github.com/jusiro/FLAIR, `main_transferability.py`, `flair/utils/metrics.py`), and
Wu et al., "MM-Retinal: Knowledge-Enhanced Foundational Pretraining with Fundus Image-Text Expertise" (KeepFIT),
MICCAI 2024, arXiv:2405.11793 (code: github.com/lxirich/MM-Retinal, the README's evaluation commands):

- zero-shot on the whole test split with expert-knowledge prompts (`--domain_knowledge True`);
- few-shot adaptation with K labelled images per class, K ∈ {1, 5, 10}, CLIP-Adapter (KeepFIT's few-shot
  command) and TIP-Adapter (FLAIR's adapter comparison), over five folds (seeds 0–4);
- linear probing of the frozen encoder on the full training pool (FLAIR: 80 % / 20 % folds × 5);
- metric: ACA, the average per-class accuracy (FLAIR's `aca`: mean of the confusion matrix's normalised
  diagonal), i.e. balanced accuracy, headline for every protocol.
- Difference, stated: FLAIR redraws a random 80/20 split per fold; here the test split is the recipe's fixed
  (official, else seeded patient-level) one and the seeds vary the training draws only.

Every setting can be overridden (:class:`BenchmarkOptions`: `--seeds`, `--fractions`, `--shots`, `--tasks`,
...), and `quick=True` shrinks a suite to a smoke run (one seed, one shot, two fine-tuning steps, no bootstrap,
no calibration split) whose numbers mean nothing but whose tables have every column.

Outputs of :func:`run_benchmark` under `output_dir`:

    <dataset>/manifests/{train,val,test}.csv   the recipe's split, as the harness reads it
    <dataset>/<model>/results.{json,md}, plots  the harness's report for that pair
    <dataset>/<model>/benchmark_done.json       the resume marker (settings + data fingerprint)
    leaderboard.{md,json,png}                   `leaderboard.py`
    benchmark.log                               what ran, what was resumed, what was skipped

A (dataset, model) pair whose marker matches the current settings, manifests and model source is not
recomputed on a rerun (the log says "resumed"); `force=True` reruns it.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .recipe import DatasetRecipe, RecipeLayoutError
from .registry import SUITES, recipes

logger = logging.getLogger(__name__)

MARKER_NAME = "benchmark_done.json"
LOG_NAME = "benchmark.log"
MARKER_VERSION = 1


# ------------------------------------------------------------------------------------------------ protocols
@dataclass(frozen=True)
class SuiteProtocol:
    """One suite's protocol: tasks, their settings, and what the leaderboard shows (module docstring)."""

    name: str
    title: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    shots: tuple[int, ...]
    few_shot_methods: tuple[str, ...]
    leaderboard_method: str  # the few-shot method whose ACA the leaderboard shows
    metrics: tuple[str, ...]  # leaderboard metrics per protocol, headline first
    ordinal_metrics: tuple[str, ...]  # added for graded datasets
    finetune: Mapping[str, float | int]  # FinetuneSettings fields
    citation: str


RETFOUND = SuiteProtocol(
    name="retfound",
    title="RETFound-style fine-tuning and linear probing",
    tasks=("finetune", "linear-probe"),
    seeds=(0, 1, 2, 3, 4),
    fractions=(1.0,),
    shots=(),
    few_shot_methods=(),
    leaderboard_method="",
    metrics=("roc_auc", "pr_auc"),
    ordinal_metrics=("quadratic_kappa",),
    finetune={
        "epochs": 50,
        "warmup_epochs": 10,
        "batch_size": 16,
        "lr": 5e-3 * 16 / 256,
        "layer_decay": 0.65,
        "weight_decay": 0.05,
        "drop_path_rate": 0.2,
    },
    citation="Zhou et al., A foundation model for generalizable disease detection from retinal images, "
    "Nature 622, 156-163 (2023), Methods; github.com/rmaphoh/RETFound_MAE",
)

FLAIR = SuiteProtocol(
    name="flair",
    title="FLAIR / KeepFIT-style zero-shot, few-shot and linear probing",
    tasks=("zero-shot", "few-shot", "linear-probe"),
    seeds=(0, 1, 2, 3, 4),
    fractions=(1.0,),
    shots=(1, 5, 10),
    few_shot_methods=("clip-adapter", "tip-adapter"),
    leaderboard_method="clip-adapter",
    metrics=("balanced_accuracy",),
    ordinal_metrics=(),
    finetune={},
    citation="Silva-Rodriguez et al., FLAIR, Medical Image Analysis 99, 103357 (2025), arXiv:2308.07898; "
    "Wu et al., MM-Retinal / KeepFIT, MICCAI 2024, arXiv:2405.11793",
)

PROTOCOLS: dict[str, SuiteProtocol] = {RETFOUND.name: RETFOUND, FLAIR.name: FLAIR}


@dataclass
class BenchmarkOptions:
    """Overrides of the suites' settings (None: the suite's own) and how to run."""

    tasks: tuple[str, ...] | None = None  # which of each suite's tasks to run (a filter)
    seeds: tuple[int, ...] | None = None
    fractions: tuple[float, ...] | None = None
    shots: tuple[int, ...] | None = None
    few_shot_methods: tuple[str, ...] | None = None
    epochs: float | None = None
    max_steps: int | None = None
    finetune_batch_size: int | None = None
    bootstrap: int | None = None  # default 1000 (0 with quick)
    calibration_fraction: float = 0.0  # the papers hold no calibration split out
    split_seed: int = 0  # for recipes whose split is a seeded patient-level one
    quick: bool = False
    save_models: bool = False
    batch_size: int = 64
    cache_dir: str | None = None  # default: <output_dir>/cache
    show_progress: bool = True


QUICK = {"seeds": (0,), "fractions": (1.0,), "shots": (1,), "few_shot_methods": ("clip-adapter",)}
QUICK_FINETUNE = {"epochs": 1, "warmup_epochs": 0, "max_steps": 2, "batch_size": 4, "augment": False}


def suite_settings(protocol: SuiteProtocol, options: BenchmarkOptions, *, cache_dir: str | None):
    """The `EvaluationSettings` of a suite under `options` (quick first, then the explicit overrides)."""
    from ..evaluation.finetune import FinetuneSettings
    from ..evaluation.runner import EvaluationSettings

    values = {
        "tasks": protocol.tasks,
        "seeds": protocol.seeds,
        "fractions": protocol.fractions,
        "shots": protocol.shots or (1,),
        "few_shot_methods": protocol.few_shot_methods or ("clip-adapter",),
    }
    finetune = dict(protocol.finetune)
    if options.quick:
        values.update(QUICK)
        finetune.update(QUICK_FINETUNE)
    for key in values:
        given = getattr(options, key)
        if given is not None and key != "tasks":
            values[key] = tuple(given)
    if options.tasks is not None:  # a filter: which of the suite's own tasks to run
        from ..evaluation.protocols import TASKS

        unknown = [t for t in options.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}: choose from {', '.join(TASKS)}.")
        values["tasks"] = tuple(t for t in protocol.tasks if t in options.tasks)
        if not values["tasks"]:
            raise ValueError(
                f"--tasks {','.join(options.tasks)} leaves the {protocol.name} suite nothing to run (its tasks: "
                f"{', '.join(protocol.tasks)})"
            )
    if options.epochs is not None:
        finetune["epochs"] = options.epochs
    if options.max_steps is not None:
        finetune["max_steps"] = options.max_steps
    if options.finetune_batch_size is not None:
        finetune["batch_size"] = options.finetune_batch_size
    bootstrap = options.bootstrap if options.bootstrap is not None else (0 if options.quick else 1000)
    return EvaluationSettings(
        **values,
        split_seed=options.split_seed,
        finetune=FinetuneSettings(**finetune),
        bootstrap=int(bootstrap),
        calibration_fraction=float(options.calibration_fraction),
        batch_size=options.batch_size,
        save_models=options.save_models,
        cache_dir=cache_dir,
        show_progress=options.show_progress,
    )


# ------------------------------------------------------------------------------------------------ the plan
class UnknownNameError(KeyError):
    """A --suite entry that is neither a suite nor a dataset recipe (message: the known ones, did-you-mean)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NoDatasetError(FileNotFoundError):
    """None of the requested datasets is under the data root (message: what was looked for, per dataset)."""


@dataclass
class PlannedDataset:
    recipe: DatasetRecipe
    suite: SuiteProtocol


@dataclass
class MissingDataset:
    name: str
    title: str
    root: str
    missing: list[str]

    def line(self) -> str:
        return f"{self.name} ({self.title}): not found under {self.root}: missing {', '.join(self.missing)}"


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def plan(names: Sequence[str]) -> list[PlannedDataset]:
    """The (recipe, suite protocol) pairs `names` ask for, in order, each dataset once: a suite name brings its
    datasets (with that suite's protocol), a dataset name its recipe (with the first requested suite it
    belongs to, else its own first suite)."""
    known = recipes()
    requested_suites = [_key(n) for n in names if _key(n) in SUITES]
    chosen: dict[str, PlannedDataset] = {}
    for entry in names:
        key = _key(entry)
        if key in SUITES:
            for recipe in known.values():
                if key in recipe.suites and recipe.name not in chosen:
                    chosen[recipe.name] = PlannedDataset(recipe, PROTOCOLS[key])
            continue
        recipe = next((r for n, r in known.items() if n.replace("_", "") == key), None)
        if recipe is None:
            raise UnknownNameError(_unknown_message(entry, known))
        suite = next((s for s in requested_suites if s in recipe.suites), recipe.suites[0])
        chosen.setdefault(recipe.name, PlannedDataset(recipe, PROTOCOLS[suite]))
    return list(chosen.values())


def _unknown_message(entry: str, known: Mapping[str, DatasetRecipe]) -> str:
    choices = list(SUITES) + list(known)
    close = difflib.get_close_matches(entry.strip().lower(), choices, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    datasets = ", ".join(known) if known else "(no dataset recipes installed)"
    return f"unknown suite or dataset {entry!r}.{hint} Suites: {', '.join(SUITES)}; datasets: {datasets}."


def check_models(models: Mapping[str, object]) -> None:
    """Refuse no model, a reserved name, and a model path that cannot load — before any data is read."""
    from ..evaluation.runner import check_model_source

    if not models:
        raise ValueError("give at least one model (--model NAME=PATH)")
    for name, source in models.items():
        if name == "random_init" or not name or "/" in name or name.startswith("."):
            raise ValueError(f"model name {name!r} cannot name a results folder: call the model differently")
        if isinstance(source, (str, os.PathLike)):
            try:
                check_model_source(os.fspath(source))
            except FileNotFoundError as error:
                raise FileNotFoundError(f"model {name}: {error}") from None


# ------------------------------------------------------------------------------------------------ resume
def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_identity(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        config = path / "config.json"
        if config.is_file():
            stat = config.stat()
            return f"{path.resolve()}@{stat.st_size}:{int(stat.st_mtime)}"
        return str(source)
    model = source[0] if isinstance(source, (tuple, list)) else source
    return f"in-memory {type(model).__name__}"


def fingerprint(settings, manifests: Mapping[str, Path], source, extra: Mapping | None = None) -> str:
    """What a finished (dataset, model) pair depended on: the settings that change numbers, the manifests'
    bytes, the model's identity (path and its config.json's size and time) and `extra` (the leakage options)."""
    fields = {k: v for k, v in asdict(settings).items() if k not in ("cache_dir", "show_progress")}
    data = {split: hashlib.sha256(Path(p).read_bytes()).hexdigest() for split, p in sorted(manifests.items())}
    return _digest(
        {"settings": fields, "data": data, "model": _source_identity(source), "extra": dict(extra or {})}
    )


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not (folder / str(marker.get("results", ""))).is_file():
        return None
    return marker


def write_marker(folder: Path, content: dict) -> Path:
    path = folder / MARKER_NAME
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)
    return path


# ------------------------------------------------------------------------------------------------ running
@dataclass
class PairOutcome:
    dataset: str
    model: str
    status: str  # "done", "resumed", "failed"
    folder: str
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BenchmarkOutcome:
    output_dir: Path
    pairs: list[PairOutcome] = field(default_factory=list)
    missing: list[MissingDataset] = field(default_factory=list)
    leaderboard: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PairOutcome]:
        return [p for p in self.pairs if p.status == "failed"]


def leakage_keywords(
    pretrain_manifests: Sequence[str] | None, exclude_leaked: bool, allowed_roots: Sequence[str] = ()
) -> dict:
    """The `evaluate_models` keyword arguments of the leakage check (issue 28 item 3), when it has them; a
    `ValueError` when they are asked for and this version's harness lacks them. The pretraining manifests are
    read with `allowed_roots` as extra data roots (besides each manifest's own folder)."""
    if not pretrain_manifests and not exclude_leaked:
        return {}
    from ..evaluation.runner import evaluate_models

    parameters = inspect.signature(evaluate_models).parameters
    if "pretrain_data" not in parameters:
        raise ValueError(
            "--pretrain-manifests / --exclude-leaked need the leakage check of evaluate_models "
            "(pretrain_data=, exclude_leaked=), which this version does not have yet"
        )
    if exclude_leaked and not pretrain_manifests:
        raise ValueError("--exclude-leaked needs --pretrain-manifests (what the models were pretrained on)")
    roots = [str(Path(r).resolve()) for r in allowed_roots]
    keywords = {
        "pretrain_data": [
            {"path": str(p), **({"allowed_roots": roots} if roots else {})} for p in pretrain_manifests
        ]
    }
    if exclude_leaked:
        keywords["exclude_leaked"] = True
    return keywords


def run_benchmark(
    suites_or_names: Sequence[str] | str,
    data_root: str | os.PathLike,
    models: Mapping[str, object],
    output_dir: str | os.PathLike,
    *,
    options: BenchmarkOptions | None = None,
    force: bool = False,
    device: str | None = None,
    allowed_roots: Sequence[str] = (),
    pretrain_manifests: Sequence[str] | None = None,
    exclude_leaked: bool = False,
    log: Callable[[str], None] | None = None,
) -> BenchmarkOutcome:
    """Run the suites' protocols for every model on every present dataset and write the leaderboard.

    Args:
        suites_or_names: "retfound", "flair" and / or dataset recipe names.
        data_root: the folder holding each dataset's release in its recipe's `folder`.
        models: `{name: directory | Hub id | (model, processor)}` (retvlp checkpoints, converted RETFound /
            FLAIR / KeepFIT weights, any CLIPModel).
        output_dir: where manifests, per-pair reports, markers and the leaderboard go.
        options: overrides of the suites' settings (`BenchmarkOptions`).
        force: rerun pairs that have a matching resume marker.
        allowed_roots: folders the images may also live in (besides `data_root`).
        pretrain_manifests / exclude_leaked: passed to the harness's leakage check, where it exists.
        log: where progress lines go (default: the module logger); they are also written to benchmark.log.

    Raises:
        UnknownNameError: a name is neither a suite nor a recipe. NoDatasetError: nothing is present.
        FileNotFoundError / ValueError: a model path that cannot load, a bad model name (before any data is read).
    """
    from ..evaluation.runner import evaluate_models
    from .leaderboard import write_leaderboard

    options = options or BenchmarkOptions()
    names = [suites_or_names] if isinstance(suites_or_names, str) else list(suites_or_names)
    planned = plan(names)
    check_models(models)
    leakage = leakage_keywords(pretrain_manifests, exclude_leaked, allowed_roots)
    data_root = Path(data_root).expanduser()
    output = Path(output_dir)
    present, missing = [], []
    for entry in planned:
        if entry.recipe.is_present(data_root):
            present.append(entry)
        else:
            root = entry.recipe.root(data_root)
            absent = entry.recipe.missing(data_root) if root.is_dir() else [f"{entry.recipe.folder}/"]
            missing.append(MissingDataset(entry.recipe.name, entry.recipe.title, str(root), absent))
    if not present:
        lines = "\n".join(f"  - {m.line()}" for m in missing)
        raise NoDatasetError(f"no dataset of {', '.join(names)} is present under {data_root}:\n{lines}")
    output.mkdir(parents=True, exist_ok=True)
    outcome = BenchmarkOutcome(output, missing=missing)
    say = _logger(output / LOG_NAME, log)
    say(
        f"benchmark {' '.join(names)} on {data_root}: {len(present)} dataset(s) present, {len(missing)} skipped"
    )
    for m in missing:
        say(f"skipped {m.line()}")
    cache_dir = options.cache_dir or str(output / "cache")
    roots = [str(data_root.resolve()), *(str(Path(r).resolve()) for r in allowed_roots)]
    for entry in present:
        recipe, protocol = entry.recipe, entry.suite
        settings = suite_settings(protocol, options, cache_dir=cache_dir)
        try:
            data = recipe.load(data_root, seed=options.split_seed)
        except (RecipeLayoutError, ValueError) as error:
            say(f"{recipe.name}: cannot read the release: {error}")
            outcome.pairs += [
                PairOutcome(recipe.name, name, "failed", "", error=f"layout: {error}") for name in models
            ]
            continue
        manifests = data.write_manifests(output / recipe.name / "manifests")
        _write_dataset_info(output / recipe.name, recipe, protocol, data, manifests)
        for s in data.skipped[:5]:
            say(f"{recipe.name}: recipe left out {s.where}: {s.reason}")
        if len(data.skipped) > 5:
            say(f"{recipe.name}: recipe left out {len(data.skipped)} row(s) in all (dataset.json lists them)")
        spec = {"label_separator": "|", "group_column": "group", "allowed_roots": roots}
        pool = [{"path": str(manifests[s]), **spec} for s in ("train", "val") if s in manifests]
        test = [{"path": str(manifests["test"]), **spec}] if "test" in manifests else None
        if not pool:
            say(f"{recipe.name}: the recipe gives no training split: skipped")
            continue
        for name, source in models.items():
            folder = output / recipe.name / name
            expected = fingerprint(settings, manifests, source, leakage)
            marker = read_marker(folder)
            if marker is not None and not force and marker.get("fingerprint") == expected:
                say(
                    f"{recipe.name} / {name}: resumed — finished {marker.get('finished')} "
                    f"({folder / MARKER_NAME}); --force reruns it"
                )
                outcome.pairs.append(PairOutcome(recipe.name, name, "resumed", str(folder)))
                continue
            if marker is not None:
                why = "--force" if force else "settings, data or model changed since the marker"
                say(f"{recipe.name} / {name}: rerunning ({why})")
            (folder / MARKER_NAME).unlink(missing_ok=True)
            say(f"{recipe.name} / {name}: {protocol.name} suite, tasks {', '.join(settings.tasks)}")
            started = time.perf_counter()
            try:
                results = evaluate_models(
                    {name: source},
                    pool,
                    test_data=test,
                    class_names=list(data.classes),
                    multi_label=data.task == "multilabel",
                    ordinal=bool(data.ordinal),
                    settings=settings,
                    output_dir=folder,
                    dataset_name=recipe.name,
                    device=device,
                    on_bad_sample="skip",
                    **leakage,
                )
            except (ValueError, OSError, RuntimeError) as error:
                if os.environ.get("RETVLP_DEBUG") == "1":
                    raise
                say(f"{recipe.name} / {name}: failed: {error}")
                outcome.pairs.append(PairOutcome(recipe.name, name, "failed", str(folder), error=str(error)))
                continue
            seconds = time.perf_counter() - started
            if results.get("leakage") is not None:
                say(
                    f"{recipe.name} / {name}: leakage check against the pretraining manifests: {folder / 'leakage'}"
                )
            write_marker(
                folder,
                {
                    "version": MARKER_VERSION,
                    "dataset": recipe.name,
                    "model": name,
                    "suite": protocol.name,
                    "fingerprint": expected,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "seconds": round(seconds, 1),
                    "results": "results.json",
                },
            )
            say(f"{recipe.name} / {name}: done in {seconds:.1f} s → {folder / 'results.json'}")
            outcome.pairs.append(PairOutcome(recipe.name, name, "done", str(folder), seconds=seconds))
    used = {e.suite.name: suite_settings(e.suite, options, cache_dir=cache_dir) for e in present}
    outcome.leaderboard = write_leaderboard(
        output, present, list(models), outcome.pairs, missing, data_root=str(data_root), settings=used
    )
    say(f"leaderboard: {outcome.leaderboard['markdown']}")
    return outcome


def _write_dataset_info(
    folder: Path, recipe: DatasetRecipe, protocol: SuiteProtocol, data, manifests
) -> None:
    info = {
        "name": recipe.name,
        "title": recipe.title,
        "suite": protocol.name,
        "task": data.task,
        "ordinal": data.ordinal,
        "classes": list(data.classes),
        "grouping": data.grouping,
        "split_source": data.split_source,
        "counts": data.counts(),
        "notes": list(data.notes),
        "skipped": [{"where": s.where, "reason": s.reason} for s in data.skipped],
        "manifests": {k: str(v) for k, v in manifests.items()},
        "source": recipe.source,
        "licence": recipe.licence,
        "citation": recipe.citation,
    }
    (folder / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _logger(path: Path, log: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if log is not None:
            log(line)
        else:
            logger.info(line)

    return say


__all__ = [
    "FLAIR",
    "PROTOCOLS",
    "RETFOUND",
    "BenchmarkOptions",
    "BenchmarkOutcome",
    "NoDatasetError",
    "SuiteProtocol",
    "UnknownNameError",
    "plan",
    "run_benchmark",
    "suite_settings",
]
