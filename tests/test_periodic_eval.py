"""Evaluation during pretraining (`run.eval_every`): logged figures, held-out patients, fresh features every
time, and no effect on the training itself (weights, resume)."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain_dict
from safetensors.torch import load_file
from test_pretrain_keepfit import ibq_dict, keepfit_dict

from retvlp.run import pretrain_and_evaluate
from retvlp.training import ConfigError, PretrainConfig

ZERO_SHOT = ("eval/zero_shot_accuracy", "eval/zero_shot_balanced_accuracy", "eval/zero_shot_roc_auc")
PROBE = ("eval/linear_probe_accuracy", "eval/linear_probe_balanced_accuracy", "eval/linear_probe_roc_auc")


def tiny_run(tmp_path, synthetic, name="run", **sections) -> PretrainConfig:
    return PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, name, **sections), source="test")


def logs(result) -> tuple[list[dict], list[dict]]:
    """(training entries, evaluation entries) of a run's logs.jsonl."""
    entries = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    evaluations = [e for e in entries if any(k.startswith("eval/") for k in e)]
    return [e for e in entries if e not in evaluations], evaluations


def split_of(result) -> dict:
    return json.loads((result.output_dir / "eval_split.json").read_text())


def assert_same_training(a, b, drop=("samples_per_s",)) -> None:
    """Bit-identical last checkpoint (weights + Adam moments) and identical training log lines (but `drop`)."""
    weights_a = load_file(str(a.output_dir / "checkpoint-6" / "model.safetensors"))
    weights_b = load_file(str(b.output_dir / "checkpoint-6" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    optim_a = torch.load(a.output_dir / "checkpoint-6" / "optimizer.bin", weights_only=True)["state"]
    optim_b = torch.load(b.output_dir / "checkpoint-6" / "optimizer.bin", weights_only=True)["state"]
    for index, state in optim_a.items():
        assert torch.equal(state["exp_avg_sq"], optim_b[index]["exp_avg_sq"])

    def comparable(entries):
        return [{k: v for k, v in e.items() if not k.startswith(drop)} for e in entries]

    assert comparable(logs(a)[0]) == comparable(logs(b)[0])


def test_figures_are_logged_every_eval_every_steps_and_at_the_last(tmp_path, synthetic):
    result = pretrain_and_evaluate(tiny_run(tmp_path, synthetic, run={"eval_every": 4}), show_progress=False)
    training, evaluations = logs(result)
    assert [e["step"] for e in training] == [1, 2, 3, 4, 5, 6]
    assert not any(k.startswith("eval/") for e in training for k in e)
    assert [e["step"] for e in evaluations] == [4, 6]
    for entry in evaluations:
        for key in ZERO_SHOT + PROBE:
            assert math.isfinite(entry[key]) and 0.0 <= entry[key] <= 1.0, (key, entry)
        assert entry["eval/seconds"] >= 0
    entries = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    assert entries.index(evaluations[0]) == entries.index(training[3]) + 1  # right after its step's line


def test_held_out_patients_leave_every_training_stream(tmp_path, synthetic, monkeypatch):
    from retvlp.evaluation.periodic import group_of
    from retvlp.training.data import read_training_manifests
    from retvlp.training.maskedclip_task import MaskedCLIPTask

    seen = {}
    original = MaskedCLIPTask.make_batches

    def spy(self, streams, *args, **kwargs):
        seen.update(streams)
        return original(self, streams, *args, **kwargs)

    monkeypatch.setattr(MaskedCLIPTask, "make_batches", spy)
    config = tiny_run(tmp_path, synthetic, optim={"max_steps": 1}, run={"eval_every": 1})
    result = pretrain_and_evaluate(config, show_progress=False)
    records = [r for m in read_training_manifests(config.data.train) for r in m.records]
    trained = [records[row] for stream in seen.values() for row in stream.rows]
    trained_patients = {group_of(r) for r in trained}
    split = split_of(result)
    held = set(split["held_out_of_training"])
    assert split["source"] == "holdout" and held
    assert not held & trained_patients
    assert set(split["test_patients"]) == held
    assert set(split["probe_fit_patients"]) <= trained_patients
    # Only the held-out patients' rows are missing, labelled or not.
    assert len(trained) + sum(group_of(r) in held for r in records) == len(records)
    # Every class with two or more labelled patients gives at least one of them to the test side.
    labelled = {(group_of(r), r.labels[0]) for r in records if r.labels}
    classes = {label for _, label in labelled}
    assert {label for patient, label in labelled if patient in held} == classes
    assert split["test_images"] == sum(group_of(r) in held and bool(r.labels) for r in records)
    assert len(logs(result)[1]) == 1


def test_rows_without_patient_ids_are_held_out_by_image(tmp_path, synthetic):
    """Without a patient column every image is its own patient, and an image listed in two manifests (here
    categorical and unpaired) leaves training from both."""
    from retvlp.evaluation.periodic import hold_out_eval_rows
    from retvlp.training.data import discover_classes, prepare_streams, read_training_manifests
    from retvlp.training.maskedclip_task import MaskedCLIPTask

    rows = [line.split(",") for line in synthetic.categorical.read_text().splitlines()[1:]]
    images = [str(synthetic.categorical.parent / image) for image, _, _ in rows]
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "image,label\n" + "".join(f"{i},{label}\n" for i, (_, label, _) in zip(images, rows, strict=True))
    )
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"image": i}) + "\n" for i in images))
    config = tiny_run(
        tmp_path,
        synthetic,
        data={
            "train": [{"path": str(labelled)}, {"path": str(unlabelled)}],
            "allowed_roots": [str(synthetic.root)],
        },
        run={"eval_every": 1, "eval_holdout_fraction": 0.3},
    )
    manifests = read_training_manifests(config.data.train, allowed_roots=config.data.allowed_roots)
    classes = discover_classes(manifests, None)
    streams, _ = prepare_streams(manifests, config.data, classes, tmp_path / "out", show_progress=False)
    kept, held_out = hold_out_eval_rows(streams, manifests, classes, config, {}, MaskedCLIPTask())
    records = [r for m in manifests for r in m.records]
    held_images = {str(records[row].image) for row in held_out.test.store.rows}
    assert held_images and set(held_out.held_out_groups) == {f"image:{i}" for i in held_images}
    for name in ("paired", "unpaired"):
        remaining = {str(records[row].image) for row in kept[name].rows}
        assert not remaining & held_images
        assert len(kept[name]) == len(streams[name]) - len(held_images)
    fit_images = {str(records[row].image) for row in held_out.fit.store.rows}
    assert fit_images and not fit_images & held_images


def test_features_are_extracted_afresh_at_every_evaluation(tmp_path, synthetic, monkeypatch):
    from retvlp.evaluation import features
    from retvlp.evaluation import periodic as periodic_eval

    calls = []

    def spy(*args, **kwargs):
        out = features.extract_image_features(*args, **kwargs)
        calls.append((kwargs.get("cache"), out.probe.copy()))
        return out

    monkeypatch.setattr(periodic_eval, "extract_image_features", spy)
    cached_before = len(features._MEMORY_CACHE)
    result = pretrain_and_evaluate(tiny_run(tmp_path, synthetic, run={"eval_every": 2}), show_progress=False)
    assert [e["step"] for e in logs(result)[1]] == [2, 4, 6]
    assert len(calls) == 6 and all(cache is False for cache, _ in calls)  # probe-fit + test, 3 times
    test_features = [probe for _, probe in calls[1::2]]
    assert not np.array_equal(test_features[0], test_features[1])  # the weights moved in between
    assert len(features._MEMORY_CACHE) == cached_before
    assert not list((tmp_path / "cache").glob("**/features"))


@pytest.mark.parametrize("held_out", [True, False], ids=["holdout", "run.evaluation"])
def test_periodic_evaluation_leaves_the_training_bit_identical(tmp_path, synthetic, held_out):
    if held_out:
        # The hold-out itself changes the data, so the reference evaluates only after the last save.
        run_a, run_b = {"eval_every": 2}, {"eval_every": 6}
    else:
        specs = {"probe_train": [{"path": str(synthetic.paired)}], "test": [{"path": str(synthetic.test)}]}
        run_a, run_b = {"eval_every": 2, "evaluation": specs}, {"evaluation": specs}
    a = pretrain_and_evaluate(tiny_run(tmp_path, synthetic, "a", run=run_a), show_progress=False)
    b = pretrain_and_evaluate(tiny_run(tmp_path, synthetic, "b", run=run_b), show_progress=False)
    assert [e["step"] for e in logs(a)[1]] == [2, 4, 6]
    assert [e["step"] for e in logs(b)[1]] == ([6] if held_out else [])
    assert_same_training(a, b)


def test_keepfit_batchnorm_and_expert_prompts(tmp_path, synthetic, monkeypatch):
    """KeepFIT's ResNet has BatchNorm (running statistics must not move in eval mode) and its zero-shot uses
    the expert-knowledge prompt ensembles."""
    from retvlp.evaluation import periodic as periodic_eval
    from retvlp.training.keepfit_task import KeepFitTask

    prompts = []

    def spy(model, tokenizer, prompts_per_class, **kwargs):
        prompts.append(prompts_per_class)
        return original(model, tokenizer, prompts_per_class, **kwargs)

    original = periodic_eval.class_prototypes
    monkeypatch.setattr(periodic_eval, "class_prototypes", spy)
    a = pretrain_and_evaluate(
        PretrainConfig.from_dict(keepfit_dict(tmp_path, synthetic, "a", run={"eval_every": 2}))
    )
    b = pretrain_and_evaluate(
        PretrainConfig.from_dict(keepfit_dict(tmp_path, synthetic, "b", run={"eval_every": 6}))
    )
    assert_same_training(a, b)
    evaluations = logs(a)[1]
    assert [e["step"] for e in evaluations] == [2, 4, 6]
    assert all(key in evaluations[0] for key in ZERO_SHOT + PROBE)
    config = PretrainConfig.from_dict(keepfit_dict(tmp_path, synthetic))
    classes = json.loads((a.final_dir / "training_summary.json").read_text())["classes"]
    expected = KeepFitTask().zero_shot_prompts(config, classes)
    assert len(prompts) == 4 and all(p == expected for p in prompts)
    assert all(len(per_class) > 1 for per_class in expected)  # templates × name and descriptions


def test_resume_continues_the_straight_run_with_periodic_evaluation(tmp_path, synthetic):
    straight = pretrain_and_evaluate(
        tiny_run(tmp_path, synthetic, "straight", run={"eval_every": 2}), show_progress=False
    )
    config = tiny_run(tmp_path, synthetic, "resumed", run={"eval_every": 2})
    pretrain_and_evaluate(config, show_progress=False, stop_after=3)
    resumed = pretrain_and_evaluate(config, resume="latest", show_progress=False)
    # The collapse guard's streak of log steps restarts with the process (not this feature's concern).
    assert_same_training(straight, resumed, drop=("samples_per_s", "collapse/"))

    def figures(result):
        return [{k: v for k, v in e.items() if k != "eval/seconds"} for e in logs(result)[1]]

    assert [e["step"] for e in figures(resumed)] == [2, 4, 6]
    assert figures(straight) == figures(resumed)
    assert split_of(straight) == split_of(resumed)


def test_a_test_only_evaluation_is_split_by_patient(tmp_path, synthetic):
    specs = {"test": [{"path": str(synthetic.test)}]}
    result = pretrain_and_evaluate(
        tiny_run(tmp_path, synthetic, run={"eval_every": 3, "evaluation": specs, "eval_max_images": 5}),
        show_progress=False,
    )
    split = split_of(result)
    assert split["source"] == "run.evaluation" and split["held_out_of_training"] == []
    assert split["test_images"] <= 5 and split["probe_fit_images"] <= 5
    assert not set(split["test_patients"]) & set(split["probe_fit_patients"])
    patients = {json.loads(line)["patient_id"] for line in synthetic.test.read_text().splitlines()}
    assert set(split["test_patients"]) | set(split["probe_fit_patients"]) <= patients
    assert [e["step"] for e in logs(result)[1]] == [3, 6]


def test_without_labelled_rows_it_warns_once_and_trains(tmp_path, synthetic, caplog):
    captions = tmp_path / "captions.jsonl"
    rows = [json.loads(line) for line in synthetic.paired.read_text().splitlines()]
    captions.write_text(
        "".join(
            json.dumps({"image": str(synthetic.paired.parent / r["image"]), "text": r["text"]}) + "\n"
            for r in rows
        )
    )
    train = [{"path": str(captions)}, {"path": str(synthetic.unpaired)}]
    config = tiny_run(
        tmp_path,
        synthetic,
        data={"train": train, "allowed_roots": [str(synthetic.root)]},
        optim={"max_steps": 2},
        run={"eval_every": 1},
    )
    with caplog.at_level(logging.WARNING, logger="retvlp.evaluation.periodic"):
        result = pretrain_and_evaluate(config, show_progress=False)
    warnings = [r for r in caplog.records if r.name == "retvlp.evaluation.periodic"]
    assert len(warnings) == 1 and "no single-label rows" in warnings[0].getMessage()
    assert result.steps == 2 and logs(result)[1] == []
    assert not (result.output_dir / "eval_split.json").exists()


def test_the_ibq_tokenizer_is_skipped_with_a_warning(tmp_path, synthetic, caplog):
    config = PretrainConfig.from_dict(ibq_dict(tmp_path, synthetic, run={"eval_every": 1}))
    with caplog.at_level(logging.WARNING, logger="retvlp.evaluation.periodic"):
        result = pretrain_and_evaluate(config, show_progress=False)
    assert any("no image encoder" in r.getMessage() for r in caplog.records)
    assert result.steps == 2 and logs(result)[1] == []


@pytest.mark.parametrize(
    "run, message",
    [
        ({"eval_every": 0}, "run.eval_every must be >= 1"),
        ({"eval_every": 5, "eval_holdout_fraction": 1.0}, "eval_holdout_fraction"),
        ({"eval_every": 5, "eval_max_images": 0}, "eval_max_images"),
    ],
)
def test_bad_periodic_evaluation_settings_are_config_errors(tmp_path, synthetic, run, message):
    with pytest.raises(ConfigError, match=message):
        tiny_run(tmp_path, synthetic, run=run)


def test_plain_pretrain_trains_only_and_says_so(tmp_path, synthetic, caplog):
    """`retvlp.training.pretrain` gets no evaluation hooks (training never imports evaluation): it trains on
    all the data, evaluates nothing, and warns that `retvlp.run.pretrain_and_evaluate` runs the evaluations."""
    from retvlp.training import pretrain

    specs = {"probe_train": [{"path": str(synthetic.paired)}], "test": [{"path": str(synthetic.test)}]}
    config = tiny_run(
        tmp_path,
        synthetic,
        optim={"max_steps": 2},
        run={"eval_every": 1, "evaluate": True, "evaluation": specs},
    )
    with caplog.at_level(logging.WARNING, logger="retvlp.training.trainer"):
        result = pretrain(config, show_progress=False)
    assert result.steps == 2 and result.evaluation is None and logs(result)[1] == []
    assert not (result.final_dir / "eval_results.json").exists()
    assert any(
        "run.eval_every and run.evaluate" in r.getMessage() and "pretrain_and_evaluate" in r.getMessage()
        for r in caplog.records
    )
