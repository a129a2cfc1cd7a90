"""The one result schema (`retvlp.evaluation.results`): rows and documents round-trip, the older layouts still
read, malformed input names the file and the key, and the quick check is a preset of the runner."""

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_config

from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.evaluation.data import cache_images, geometry_of, normalization_of, read_labelled_records
from retvlp.evaluation.features import extract_image_features
from retvlp.evaluation.quick import ACCURACIES, quick_check
from retvlp.evaluation.report import markdown_table
from retvlp.evaluation.results import (
    SCHEMA_VERSION,
    DatasetInfo,
    EvaluationResults,
    MetricSummary,
    Reference,
    ResultRow,
    ResultsSchemaError,
)
from retvlp.evaluation.runner import EvaluationSettings, _concatenate, evaluate_models, load_model
from retvlp.evaluation.zero_shot import prompt_ensembles
from retvlp.maskedclip import FundusImageProcessor
from retvlp.model_card import build_eval_results
from retvlp.tokenization import tiny_tokenizer

ROW = {
    "model": "ours",
    "task": "linear-probe",
    "method": None,
    "fraction": 0.1,
    "shots": None,
    "seeds": [0, 1],
    "num_train": 12.5,
    "metrics": {
        "accuracy": {"mean": 0.8, "std": 0.1, "values": [0.7, 0.9]},
        "roc_auc": {"mean": 0.9, "std": 0.0, "values": [0.9, 0.9]},
    },
}
DATASET = {
    "name": "dme",
    "classes": ["no DME", "DME"],
    "class_order": "given",
    "ordinal": False,
    "positive_class": "DME",
    "multi_label": False,
    "num_train": 100,
    "num_test": 20,
    "test_split": "given",
    "split_seed": 0,
    "train_counts": {"no DME": 70, "DME": 30},
    "test_counts": {"no DME": 14, "DME": 6},
    "excluded": {},
    "excluded_examples": [],
}
REFERENCES = {
    "majority": {"predicts": "no DME", "metrics": {"accuracy": 0.7, "roc_auc": 0.5}},
    "chance": {"metrics": {"accuracy": 0.5, "roc_auc": 0.5}},
}


def _document(**overrides) -> dict:
    document = {
        "dataset": DATASET,
        "references": REFERENCES,
        "models": {
            "ours": {"source": "runs/x/final", "class": "MaskedCLIPModel", "model_type": "maskedclip"}
        },
        "settings": {"seeds": [0, 1]},
        "results": [ROW],
    }
    return {**document, **overrides}


def test_row_round_trip_and_summary_of_runs():
    row = ResultRow.from_json(ROW)
    assert row.metrics["accuracy"] == MetricSummary(0.8, 0.1, [0.7, 0.9])
    assert row.to_json() == ROW
    assert list(row.to_json()) == [
        "model",
        "task",
        "method",
        "fraction",
        "shots",
        "seeds",
        "num_train",
        "metrics",
    ]
    built = ResultRow.of_runs("ours", "zero-shot", [{"accuracy": 0.5}, {"accuracy": 0.7}], [0, 1], 0)
    assert built.metrics["accuracy"].mean == pytest.approx(0.6)
    assert built.metrics["accuracy"].std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert ResultRow.of_runs("m", "zero-shot", [{"accuracy": 0.5}], [0], 0).metrics["accuracy"].std == 0.0
    assert built.single_run().metrics["accuracy"].std is None
    assert row.at_seed(1).metrics["accuracy"] == MetricSummary(0.9, None, [0.9])


def test_document_round_trip_keeps_the_on_disk_keys():
    document = EvaluationResults.from_json(_document(), "results.json")
    written = document.to_json()
    assert written["schema_version"] == SCHEMA_VERSION
    assert list(written) == ["schema_version", "dataset", "references", "models", "settings", "results"]
    assert {k: v for k, v in written.items() if k != "schema_version"} == _document()
    assert list(written["dataset"]) == list(DATASET)  # key order as `retvlp evaluate` writes it
    assert EvaluationResults.from_json(json.loads(document.dumps())) == document
    (flagged,) = EvaluationResults.from_json(
        _document(results=[{**ROW, "metrics": {"accuracy": {"mean": 0.7, "std": 0.0, "values": [0.7]}}}])
    ).annotated_rows()
    assert flagged.not_above_majority and flagged.positive_class == "DME" and flagged.class_order == "given"


def test_documents_without_version_and_older_layouts_read():
    unversioned = EvaluationResults.from_json(_document())  # written before schema_version existed
    assert unversioned.schema_version == SCHEMA_VERSION and unversioned.rows[0].model == "ours"
    older = _document()
    del older["references"], older["models"], older["settings"]
    older["dataset"] = {k: DATASET[k] for k in ("name", "classes", "multi_label", "num_train", "num_test")}
    document = EvaluationResults.from_json(older)
    assert document.references == {} and document.dataset.positive_class is None
    assert document.dataset.to_json() == older["dataset"]  # no keys invented on the way through
    assert "| ours | linear-probe | 10 % labels |" in markdown_table(older)
    quick = {
        "classes": ["a", "b"],
        "num_probe_train": 10,
        "num_test": 4,
        "excluded": {"probe_train": {}, "test": {}},
        "chance_accuracy": 0.5,
        "pretrained": {"linear_probe": {"accuracy": 0.75}, "zero_shot": {"accuracy": 0.5}},
        "random_init": {"linear_probe": {"accuracy": 0.25}},
    }
    summary = EvaluationResults.from_json(quick, "eval_results.json")
    assert [(r.model, r.task) for r in summary.rows] == [
        ("pretrained", "linear-probe"),
        ("pretrained", "zero-shot"),
        ("random_init", "linear-probe"),
    ]
    assert summary.dataset.num_train == 10 and summary.to_quick_summary() == quick
    assert sorted(r.metric_value for r in build_eval_results(quick)) == [0.5, 0.75]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["results"][0].pop("model"), "results[0].model: missing key"),
        (lambda d: d["results"][0].update(task=3), "results[0].task: expected a string"),
        (
            lambda d: d["results"][0]["metrics"]["accuracy"].update(mean="high"),
            "results[0].metrics.accuracy.mean",
        ),
        (lambda d: d["results"][0].update(seeds="0,1"), "results[0].seeds: expected a list"),
        (lambda d: d["dataset"].update(classes="a,b"), "dataset.classes: expected a list"),
        (lambda d: d["dataset"].update(num_test="20"), "dataset.num_test: expected a number"),
        (lambda d: d.pop("dataset"), "dataset: missing key"),
        (lambda d: d.update(results={}), "results: expected a list"),
        (
            lambda d: d["references"]["majority"]["metrics"].update(accuracy=[1]),
            "references.majority.metrics",
        ),
        (lambda d: d.update(schema_version=99), "schema_version: 99 is newer"),
    ],
)
def test_malformed_results_name_the_file_and_the_key(tmp_path, change, key):
    document = json.loads(json.dumps(_document()))
    change(document)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ResultsSchemaError) as error:
        EvaluationResults.load(path)
    assert str(path) in str(error.value) and key in str(error.value)


def test_references_and_dataset_build_the_same_json():
    assert Reference({"accuracy": 0.7}, "no DME").to_json() == {
        "predicts": "no DME",
        "metrics": {"accuracy": 0.7},
    }
    assert Reference({"accuracy": 0.5}).to_json() == {"metrics": {"accuracy": 0.5}}
    info = DatasetInfo("d", ["a", "b"], "sorted", False, "b", False, 3, 2)
    assert list(info.to_json()) == [
        "name",
        "classes",
        "class_order",
        "ordinal",
        "positive_class",
        "multi_label",
        "num_train",
        "num_test",
    ]


def test_quick_check_is_the_runner_preset(synthetic, tmp_path):
    torch.manual_seed(0)
    model = MaskedCLIPModel(make_tiny_config()).eval()
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16)
    directory = tmp_path / "final"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    settings = EvaluationSettings(
        tasks=("linear-probe", "zero-shot"),
        fractions=(1.0,),
        seeds=(3,),
        cache_dir=str(tmp_path / "cache"),
        show_progress=False,
        bootstrap=0,  # the quick check's preset: no intervals during pretraining
        calibration_fraction=0.0,
    )
    results = evaluate_models(
        {"tiny": str(directory)}, [synthetic.paired], test_data=[synthetic.test], settings=settings
    )
    runner_rows = [ResultRow.from_json(row) for row in results["results"]]

    # The same inputs by hand: the same records, pixels and features, then the quick check's preset.
    pool = read_labelled_records([synthetic.paired])
    test = read_labelled_records([synthetic.test], pool.class_names)
    both = _concatenate(pool, test)
    loaded = load_model("tiny", str(directory))
    store = cache_images(
        both, geometry_of(loaded.image_processor), cache_dir=settings.cache_dir, show_progress=False
    )
    mean, std = normalization_of(loaded.image_processor)
    features = extract_image_features(
        loaded.model, store, mean, std, batch_size=settings.batch_size, show_progress=False
    )
    n = len(pool)
    split = [type(features)(features.probe[s], features.embeds[s]) for s in (slice(0, n), slice(n, None))]
    prompts = prompt_ensembles(pool.class_names, modality="CFP", templates=None, include_descriptions=True)
    document = quick_check(
        [(loaded, *split)],
        pool.class_names,
        pool.targets,
        test.targets,
        seed=3,
        prompts=prompts,
        groups=(pool.groups, test.groups),
    )
    assert [r.setting_key for r in document.rows] == [r.setting_key for r in runner_rows]
    for quick_row, runner_row in zip(document.rows, runner_rows, strict=True):
        assert (quick_row.seeds, quick_row.num_train) == (runner_row.seeds, runner_row.num_train)
        assert list(quick_row.metrics) == list(ACCURACIES)
        for name in ACCURACIES:
            assert quick_row.metrics[name] == runner_row.metrics[name]
