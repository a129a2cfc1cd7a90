"""The one schema of evaluation results: result rows and the `results.json` document around them.

Every module that writes or reads results (the runner, the report, the quick check at the end of pretraining,
the model cards) goes through these classes; no other module spells the JSON keys.

`results.json` (schema version 1)::

    {"schema_version": 1,
     "dataset": {"name", "classes", "class_order", "ordinal", "positive_class", "multi_label", "num_train",
                 "num_test", ["test_split", "split_seed", "train_counts", "test_counts", "excluded",
                 "excluded_examples"]},
     "references": {"majority": {"predicts", "metrics"}, "chance": {"metrics"}},
     "models": {name: {"source", "class", "model_type", ["skipped_tasks": [{"task", "reason"}]]}},
     "settings": {...},
     "results": [{"model", "task", "method", "fraction", "shots", "seeds", "num_train",
                  "metrics": {name: {"mean", "std", "values", ["ci": [low, high]]}},
                  ["bootstrap", "calibration", "conformal", "operating_points", "not_computed"]}, ...]}

The bracketed keys were added without a version change (readers that do not know them ignore them): `ci` is
the patient-bootstrap percentile interval of the metric (its settings under the row's `bootstrap`:
resamples, confidence, unit, seed), and the row's `calibration` / `conformal` / `operating_points` hold
`evaluation.trust.row_figures`' figures (each a `{"mean", "std", "values", ["ci"]}` over seeds), with
`not_computed` saying what could not be computed and why. `dataset` may carry `num_calibration`,
`calibration_split` (how, or why not) and `calibration_counts` (the patients held out of the training pool for
calibration).

Documents without `schema_version` (written before it existed) have the same keys and read as version 1.
The per-model summary of the pretraining quick check (`{"classes", "num_probe_train", "num_test", "excluded",
"chance_accuracy", "pretrained": {"linear_probe": {...}, "zero_shot": {...}}, "random_init": {...}}`, what
`evaluate_pretrained` returns and the trainer saves as `eval_results.json`) reads as version 0 and is written
by :meth:`EvaluationResults.to_quick_summary`.

Malformed input raises :class:`ResultsSchemaError` naming the file and the key (`results.json:
results[2].metrics.accuracy.mean: expected a number, got 'high'`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
QUICK_SUMMARY_VERSION = 0  # the pretraining quick check's per-model summary
QUICK_PROTOCOLS = {"zero-shot": "zero_shot", "linear-probe": "linear_probe"}
_LEGACY_TASKS = ("zero-shot", "few-shot", "linear-probe", "finetune", "lora")
ROW_EXTRAS = ("bootstrap", "calibration", "conformal", "operating_points", "not_computed")


class ResultsSchemaError(ValueError):
    """A results document does not match the schema; the message names the file and the key."""


_MISSING = object()


def _type_error(source: str, key: str, expected: str, value: Any) -> ResultsSchemaError:
    return ResultsSchemaError(f"{source}: {key}: expected {expected}, got {value!r}")


def _number(value: Any, source: str, key: str, *, optional: bool = True) -> float | int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy scalars
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                return value.item()
        except ImportError:  # pragma: no cover
            pass
        raise _type_error(source, key, "a number" + (" or null" if optional else ""), value)
    return value


def _string(value: Any, source: str, key: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _type_error(source, key, "a string" + (" or null" if optional else ""), value)
    return value


def _mapping(value: Any, source: str, key: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _type_error(source, key, "an object", value)
    return value


def _required(data: Mapping, name: str, source: str, where: str) -> Any:
    value = data.get(name, _MISSING)
    if value is _MISSING:
        raise ResultsSchemaError(f"{source}: {where}{name}: missing key")
    return value


# ------------------------------------------------------------------------------------------------- rows
@dataclass
class MetricSummary:
    """One metric of a result row: mean over seeds, sample std (0 for one run; None when not known) and the
    per-seed values (None when not recorded)."""

    mean: float | None
    std: float | None = None
    values: list[float] | None = None
    ci: list[float] | None = None  # [low, high]: the patient-bootstrap interval of `mean`

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mean": self.mean, "std": self.std}
        if self.values is not None:
            out["values"] = list(self.values)
        if self.ci is not None:
            out["ci"] = list(self.ci)
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<results>", key: str = "metric") -> MetricSummary:
        if not isinstance(data, Mapping):  # a bare number: a mean without spread
            return cls(_number(data, source, key))
        mean = _number(_required(data, "mean", source, f"{key}."), source, f"{key}.mean")
        std = _number(data.get("std"), source, f"{key}.std")
        values = data.get("values")
        if values is not None:
            if not isinstance(values, list):
                raise _type_error(source, f"{key}.values", "a list of numbers", values)
            values = [_number(v, source, f"{key}.values[{i}]") for i, v in enumerate(values)]
        ci = data.get("ci")
        if ci is not None:
            if not isinstance(ci, list) or len(ci) != 2:
                raise _type_error(source, f"{key}.ci", "[low, high]", ci)
            ci = [_number(v, source, f"{key}.ci[{i}]", optional=False) for i, v in enumerate(ci)]
        return cls(mean, std, values, ci)

    @classmethod
    def of_runs(cls, runs: Sequence[float]) -> MetricSummary:
        """Mean (ignoring NaN), sample std over the finite runs (0 for one) and the run values."""
        import numpy as np

        values = np.asarray(runs, dtype=np.float64)
        return cls(
            float(np.nanmean(values)) if not np.isnan(values).all() else float("nan"),
            float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0,
            [float(v) for v in values],
        )

    @property
    def finite_mean(self) -> float | None:
        return _finite(self.mean)

    @property
    def finite_std(self) -> float | None:
        return _finite(self.std)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class ResultRow:
    """One (model, task, method, label fraction, shots) setting over its seeds.

    `positive_class`, `class_order` and `not_above_majority` (the † flag) are what the row is read against;
    they belong to the document (`dataset`, `references`) and are filled in by :class:`EvaluationResults`,
    not written with the row."""

    model: str
    task: str
    metrics: dict[str, MetricSummary]
    method: str | None = None
    fraction: float | None = None
    shots: int | None = None
    seeds: list[int] | None = None
    num_train: float | int | None = None
    positive_class: str | None = field(default=None, compare=False)
    class_order: str | None = field(default=None, compare=False)
    not_above_majority: bool = field(default=False, compare=False)
    # `evaluation.trust` figures, written as the row's own keys (ROW_EXTRAS)
    extras: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of_runs(
        cls,
        model: str,
        task: str,
        metrics_per_seed: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        num_train,
        *,
        method: str | None = None,
        fraction: float | None = None,
        shots: int | None = None,
    ) -> ResultRow:
        """A row summarising one `{metric: value}` dict per seed (std: sample std over the seeds)."""
        metrics = {
            name: MetricSummary.of_runs([run[name] for run in metrics_per_seed])
            for name in metrics_per_seed[0]
        }
        return cls(model, task, metrics, method, fraction, shots, list(seeds), num_train)

    def single_run(self) -> ResultRow:
        """The row as one run's result: no spread (std None, not 0)."""
        metrics = {name: replace(value, std=None) for name, value in self.metrics.items()}
        return replace(self, metrics=metrics)

    def at_seed(self, seed: Any) -> ResultRow:
        """The row restricted to `seed` when it has per-seed values for every metric; otherwise unchanged."""
        seeds = list(self.seeds or [])
        if seed is None or seed not in seeds or len(seeds) == 1:
            return self
        index = seeds.index(seed)
        metrics = {}
        for name, value in self.metrics.items():
            if not value.values or len(value.values) != len(seeds):
                return self  # no per-seed values: the protocol summary is all there is
            metrics[name] = MetricSummary(value.values[index], None, [value.values[index]])
        return replace(self, seeds=[seed], metrics=metrics, extras={})  # the extras summarise every seed

    @property
    def setting_key(self) -> tuple:
        return (self.model, self.task, self.method, self.fraction, self.shots)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "task": self.task,
            "method": self.method,
            "fraction": self.fraction,
            "shots": self.shots,
            "seeds": None if self.seeds is None else list(self.seeds),
            "num_train": self.num_train,
            "metrics": {name: value.to_json() for name, value in self.metrics.items()},
            **{key: self.extras[key] for key in ROW_EXTRAS if key in self.extras},
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<results>", key: str = "row") -> ResultRow:
        data = _mapping(data, source, key)
        metrics = _mapping(_required(data, "metrics", source, f"{key}."), source, f"{key}.metrics")
        seeds = data.get("seeds")
        if seeds is not None:
            if not isinstance(seeds, list):
                raise _type_error(source, f"{key}.seeds", "a list of seeds", seeds)
            seeds = [_number(s, source, f"{key}.seeds[{i}]", optional=False) for i, s in enumerate(seeds)]
        shots = _number(data.get("shots"), source, f"{key}.shots")
        return cls(
            model=_string(_required(data, "model", source, f"{key}."), source, f"{key}.model"),
            task=_string(_required(data, "task", source, f"{key}."), source, f"{key}.task"),
            metrics={
                str(name): MetricSummary.from_json(value, source, f"{key}.metrics.{name}")
                for name, value in metrics.items()
            },
            method=_string(data.get("method"), source, f"{key}.method", optional=True),
            fraction=_number(data.get("fraction"), source, f"{key}.fraction"),
            shots=shots,
            seeds=seeds,
            num_train=_number(data.get("num_train"), source, f"{key}.num_train"),
            extras={name: data[name] for name in ROW_EXTRAS if name in data},
        )


# ------------------------------------------------------------------------------------------- the document
_DATASET_ALWAYS = ("name", "classes", "class_order", "ordinal", "positive_class", "multi_label", "num_train",
                   "num_test")  # fmt: skip
_DATASET_OPTIONAL = (
    "test_split",
    "split_seed",
    "train_counts",
    "test_counts",
    "excluded",
    "excluded_examples",
    "num_calibration",
    "calibration_split",
    "calibration_counts",
)


@dataclass
class DatasetInfo:
    """What the numbers are computed over: class order (and its origin), ordinality, positive class, sizes."""

    name: str | None
    classes: list[str] | None
    class_order: str | None = None
    ordinal: bool | None = None
    positive_class: str | None = None
    multi_label: bool = False
    num_train: int | None = None
    num_test: int | None = None
    test_split: str | None = None
    split_seed: int | None = None
    train_counts: dict | None = None
    test_counts: dict | None = None
    excluded: dict | None = None
    excluded_examples: list | None = None
    num_calibration: int | None = None
    calibration_split: str | None = None
    calibration_counts: dict | None = None
    present: tuple[str, ...] | None = field(default=None, compare=False, repr=False)  # keys read from a file

    def to_json(self) -> dict:
        keys = (
            self.present
            if self.present is not None
            else _DATASET_ALWAYS + tuple(k for k in _DATASET_OPTIONAL if getattr(self, k) is not None)
        )
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def from_json(cls, data: Any, source: str = "<results>") -> DatasetInfo:
        data = _mapping(data, source, "dataset")
        known = {k: data[k] for k in _DATASET_ALWAYS + _DATASET_OPTIONAL if k in data}
        for key in ("name", "class_order", "positive_class", "test_split", "calibration_split"):
            if key in known:
                known[key] = _string(known[key], source, f"dataset.{key}", optional=True)
        if known.get("classes") is not None and not isinstance(known["classes"], list):
            raise _type_error(source, "dataset.classes", "a list of class names", known["classes"])
        for key in ("num_train", "num_test", "split_seed", "num_calibration"):
            if key in known:
                known[key] = _number(known[key], source, f"dataset.{key}")
        known.setdefault("name", None)
        known.setdefault("classes", None)
        return cls(**known, present=tuple(k for k in data if k in known or k in ("name", "classes")))

    def get(self, key: str, default=None):
        """Dict-style access for templates and older callers."""
        value = getattr(self, key, default)
        return default if value is None else value


@dataclass
class Reference:
    """A reference level of the test set: the majority-class predictor (`predicts`) or chance."""

    metrics: dict[str, float]
    predicts: str | list[str] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {} if self.predicts is None else {"predicts": self.predicts}
        out["metrics"] = dict(self.metrics)
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<results>", key: str = "reference") -> Reference:
        data = _mapping(data, source, key)
        metrics = _mapping(data.get("metrics") or {}, source, f"{key}.metrics")
        return cls(
            {str(k): _number(v, source, f"{key}.metrics.{k}") for k, v in metrics.items()},
            data.get("predicts"),
        )


@dataclass
class SkippedTask:
    task: str
    reason: str

    def to_json(self) -> dict:
        return {"task": self.task, "reason": self.reason}


@dataclass
class ModelInfo:
    """An evaluated model: where it came from, its class and `model_type`, and the tasks it could not run."""

    source: str | None = None
    class_name: str | None = None
    model_type: str | None = None
    skipped_tasks: list[SkippedTask] = field(default_factory=list)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"source": self.source, "class": self.class_name, "model_type": self.model_type}
        if self.skipped_tasks:
            out["skipped_tasks"] = [task.to_json() for task in self.skipped_tasks]
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<results>", key: str = "model") -> ModelInfo:
        data = _mapping(data, source, key)
        skipped = [
            SkippedTask(
                str(_mapping(t, source, f"{key}.skipped_tasks[{i}]").get("task")), str(t.get("reason"))
            )
            for i, t in enumerate(data.get("skipped_tasks") or [])
        ]
        return cls(data.get("source"), data.get("class"), data.get("model_type"), skipped)


@dataclass
class EvaluationResults:
    """A results document: the data set, the reference levels, the models, the settings and the rows."""

    dataset: DatasetInfo
    rows: list[ResultRow] = field(default_factory=list)
    references: dict[str, Reference] = field(default_factory=dict)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    settings: dict | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict, compare=False)  # quick-check fields (chance_accuracy, ...)

    # ------------------------------------------------------------------ reading what rows are read against
    @property
    def majority(self) -> Reference | None:
        return self.references.get("majority")

    @property
    def majority_accuracy(self) -> float | None:
        return None if self.majority is None else self.majority.metrics.get("accuracy")

    def annotated_rows(self) -> list[ResultRow]:
        """The rows with the dataset's positive class and class order and the † flag filled in."""
        majority = self.majority_accuracy
        return [
            replace(
                row,
                positive_class=self.dataset.positive_class,
                class_order=self.dataset.class_order,
                not_above_majority=not_above_majority(row.metrics.get("accuracy"), majority),
            )
            for row in self.rows
        ]

    def with_rows(self, rows: list[ResultRow]) -> EvaluationResults:
        return replace(self, rows=list(rows))

    # ------------------------------------------------------------------------------------------ JSON
    def to_json(self, *, version: bool = True) -> dict:
        out: dict[str, Any] = {"schema_version": self.schema_version} if version else {}
        out["dataset"] = self.dataset.to_json()
        out["references"] = {name: ref.to_json() for name, ref in self.references.items()}
        if self.models or self.settings is not None:
            out["models"] = {name: info.to_json() for name, info in self.models.items()}
        if self.settings is not None:
            out["settings"] = self.settings
        out["results"] = [row.to_json() for row in self.rows]
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str) + "\n"

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "<results>") -> EvaluationResults:
        """Read a results document (schema version 1, the same layout without `schema_version`, or the quick
        check's per-model summary, version 0). Raises `ResultsSchemaError` naming `source` and the key."""
        source = str(source)
        if isinstance(data, EvaluationResults):
            return data
        data = _mapping(data, source, "document")
        version = data.get("schema_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise _type_error(source, "schema_version", "an integer", version)
        if version is not None and version > SCHEMA_VERSION:
            raise ResultsSchemaError(
                f"{source}: schema_version: {version} is newer than this retvlp reads ({SCHEMA_VERSION})"
            )
        if "results" not in data and version != SCHEMA_VERSION:
            return cls._from_quick_summary(data, source)
        rows = _required(data, "results", source, "")
        if not isinstance(rows, list):
            raise _type_error(source, "results", "a list of result rows", rows)
        dataset = DatasetInfo.from_json(_required(data, "dataset", source, ""), source)
        models = _mapping(data.get("models") or {}, source, "models")
        return cls(
            dataset=dataset,
            rows=[ResultRow.from_json(row, source, f"results[{i}]") for i, row in enumerate(rows)],
            references=read_references(data, source),
            models={str(k): ModelInfo.from_json(v, source, f"models.{k}") for k, v in models.items()},
            settings=data.get("settings"),
            schema_version=SCHEMA_VERSION,
        )

    @classmethod
    def load(cls, path: str | Path) -> EvaluationResults:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_json(data, path)

    # ----------------------------------------------------------------- the quick check's summary (v0)
    @classmethod
    def _from_quick_summary(cls, data: Mapping, source: str) -> EvaluationResults:
        rows = []
        for model, protocols in data.items():
            if not isinstance(protocols, Mapping):
                continue
            for protocol, metrics in protocols.items():
                task = protocol.replace("_", "-")
                if task not in _LEGACY_TASKS or not isinstance(metrics, Mapping):
                    continue
                rows.append(
                    ResultRow(
                        model=str(model),
                        task=task,
                        metrics={
                            str(name): MetricSummary(_number(value, source, f"{model}.{protocol}.{name}"))
                            for name, value in metrics.items()
                        },
                    )
                )
        if not rows:
            raise ResultsSchemaError(
                f"{source}: results: missing key (neither a 'results' list nor per-model protocol summaries)"
            )
        dataset = DatasetInfo(
            name=data.get("dataset_name", "held-out-test"),
            classes=data.get("classes"),
            multi_label=False,
            num_train=data.get("num_probe_train"),
            num_test=data.get("num_test"),
            present=("name", "classes", "multi_label", "num_train", "num_test"),
        )
        extra = {k: data[k] for k in ("excluded", "chance_accuracy") if k in data}
        return cls(dataset, rows, schema_version=QUICK_SUMMARY_VERSION, extra=extra)

    def to_quick_summary(self) -> dict:
        """The quick check's per-model summary (what `evaluate_pretrained` returns): the classes, sizes,
        exclusions, the test set's majority share and `{model: {"linear_probe": {...}, "zero_shot": {...}}}`
        of metric means."""
        out: dict[str, Any] = {
            "classes": list(self.dataset.classes or []),
            "num_probe_train": self.dataset.num_train,
            "num_test": self.dataset.num_test,
            "excluded": self.extra.get("excluded"),
            "chance_accuracy": self.extra.get("chance_accuracy"),
        }
        for row in self.rows:
            entry = out.setdefault(row.model, {})
            entry[QUICK_PROTOCOLS.get(row.task, row.task)] = {k: v.mean for k, v in row.metrics.items()}
        return out


def not_above_majority(entry: MetricSummary | None, majority: float | None) -> bool:
    """Whether a row's mean accuracy does not beat the majority-class accuracy (the † flag)."""
    if entry is None or majority is None or entry.mean is None or math.isnan(entry.mean):
        return False
    return entry.mean <= majority + 1e-9


def read_results(value: Mapping | EvaluationResults | str | Path, source: str | Path | None = None):
    """An `EvaluationResults` from a document, a dict or a JSON path."""
    if isinstance(value, EvaluationResults):
        return value
    if isinstance(value, (str, Path)):
        return EvaluationResults.load(value)
    return EvaluationResults.from_json(value, source or "<results>")


def read_references(value: Mapping | EvaluationResults, source: str = "<results>") -> dict[str, Reference]:
    """The reference levels of a document or of a dict holding only (or no) `references`."""
    if isinstance(value, EvaluationResults):
        return value.references
    references = _mapping(value.get("references") or {}, source, "references")
    return {str(k): Reference.from_json(v, source, f"references.{k}") for k, v in references.items()}


__all__ = [
    "SCHEMA_VERSION",
    "DatasetInfo",
    "EvaluationResults",
    "MetricSummary",
    "ModelInfo",
    "Reference",
    "ResultRow",
    "ResultsSchemaError",
    "SkippedTask",
    "not_above_majority",
    "read_references",
    "read_results",
]
