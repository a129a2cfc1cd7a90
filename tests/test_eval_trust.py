"""The trust figures of a result row (`evaluation/trust.py`), each against a plainer computation written here, and
the harness end to end with a calibration split: intervals in results.json and the report, the calibration /
conformal / operating-point tables, reliability plots, and a fine-tuned classifier's calibration file."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, save_tiny_maskedclip

from retvlp.cli import main
from retvlp.evaluation.calibrated import (
    calibrated_prediction,
    fit_calibration,
    load_calibration,
    predict_calibrated,
)
from retvlp.evaluation.calibration import brier_score, expected_calibration_error, fit_temperature
from retvlp.evaluation.fast_metrics import metric_values
from retvlp.evaluation.finetune import FinetuneSettings
from retvlp.evaluation.runner import EvaluationSettings, evaluate_models
from retvlp.evaluation.trust import RunScores, TrustSettings, row_figures, top_label_ece_and_brier

NAMES = ["a", "b", "c"]
METRICS = ["accuracy", "balanced_accuracy", "roc_auc"]


def _runs(seed=0, n=90, n_cal=40, k=3, runs=2):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, n)
    groups = np.arange(n) // 3  # three images per patient
    calibration_targets = rng.integers(0, k, n_cal)

    def scores(y):  # informative but noisy probabilities
        logits = rng.normal(size=(len(y), k)) + 1.5 * np.eye(k)[y]
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    scored = [RunScores(scores(targets), scores(calibration_targets)) for _ in range(runs)]
    return scored, targets, groups, calibration_targets


def _literal_draws(groups, n_resamples, seed):
    """The patient bootstrap written out: sorted unique patients, each drawn with replacement, all its rows."""
    rng = np.random.default_rng(seed)
    patients = sorted(set(groups.tolist()))
    for _ in range(n_resamples):
        rows = []
        for drawn in rng.integers(0, len(patients), size=len(patients)):
            rows += [i for i, g in enumerate(groups) if g == patients[drawn]]
        yield np.array(rows)


def test_metric_intervals_are_the_percentiles_of_the_seed_mean_over_patient_resamples():
    runs, targets, groups, calibration_targets = _runs()
    settings = TrustSettings(bootstrap=60, seed=5)
    figures = row_figures(
        runs,
        targets,
        groups,
        calibration_targets,
        NAMES,
        metrics=METRICS,
        multi_label=False,
        settings=settings,
    )
    values = {name: [] for name in METRICS}
    for rows in _literal_draws(groups, 60, 5):
        for name in METRICS:
            per_seed = [metric_values(targets[rows], run.test[rows], names=[name])[name] for run in runs]
            values[name].append(sum(per_seed) / len(per_seed))
    for name in METRICS:
        low, high = np.percentile(values[name], [2.5, 97.5])
        assert figures.intervals[name] == pytest.approx((low, high), abs=1e-12), name
    assert figures.extras["bootstrap"] == {"resamples": 60, "confidence": 0.95, "unit": "patient", "seed": 5}


def test_calibration_figures_match_the_calibration_module_and_a_literal_nll():
    runs, targets, groups, calibration_targets = _runs(seed=1)
    figures = row_figures(
        runs,
        targets,
        groups,
        calibration_targets,
        NAMES,
        metrics=METRICS,
        multi_label=False,
        settings=TrustSettings(bootstrap=0),
    )
    calibration = figures.extras["calibration"]
    eces = [expected_calibration_error(targets, run.test, 15) for run in runs]
    assert calibration["ece"]["values"] == pytest.approx(eces)
    assert calibration["brier"]["values"] == pytest.approx([brier_score(targets, run.test) for run in runs])
    literal_nll = [
        -sum(math.log(run.test[i, y]) for i, y in enumerate(targets)) / len(targets) for run in runs
    ]
    assert calibration["nll"]["values"] == pytest.approx(literal_nll)
    temperatures = [
        fit_temperature(run.calibration, calibration_targets, inputs="probabilities") for run in runs
    ]
    assert calibration["temperature"]["values"] == pytest.approx(temperatures)
    # scaled by hand: p^(1/T), renormalised
    for run, t, ece in zip(runs, temperatures, calibration["scaled"]["ece"]["values"], strict=True):
        scaled = run.test ** (1 / t)
        scaled /= scaled.sum(axis=1, keepdims=True)
        assert ece == pytest.approx(expected_calibration_error(targets, scaled, 15))
    assert "ci" not in calibration["ece"]  # bootstrap off


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_resampling_ece_and_brier_equal_the_checked_ones(seed):
    rng = np.random.default_rng(seed)
    for n, k in ((7, 2), (50, 3), (300, 5)):
        targets = rng.integers(0, k, n)
        probabilities = rng.dirichlet(np.ones(k), n)
        tied = np.round(probabilities, 1) + 1e-12
        tied /= tied.sum(axis=1, keepdims=True)
        for p in (probabilities, tied):
            fast = top_label_ece_and_brier(targets, p, 15)
            assert fast["ece"] == pytest.approx(expected_calibration_error(targets, p, 15), abs=1e-12)
            assert fast["brier"] == pytest.approx(brier_score(targets, p), abs=1e-12)


def test_conformal_and_operating_points_match_literal_loops():
    runs, targets, groups, calibration_targets = _runs(seed=2, n_cal=60)
    settings = TrustSettings(
        bootstrap=0, coverage=(0.8,), conformal_methods=("lac",), operating_points={"spec": (0.9,)}
    )
    figures = row_figures(
        runs,
        targets,
        groups,
        calibration_targets,
        NAMES,
        metrics=METRICS,
        multi_label=False,
        settings=settings,
    )
    (lac,) = figures.extras["conformal"]
    coverages, sizes = [], []
    for run in runs:
        # LAC by hand: scores 1 - p_true on calibration, the ceil((n + 1) 0.8)-th smallest, sets {k: 1 - p_k <= q}
        scores = sorted(1 - run.calibration[i, y] for i, y in enumerate(calibration_targets))
        q = scores[math.ceil((len(scores) + 1) * 0.8) - 1]
        sets = [[k for k in range(3) if 1 - run.test[i, k] <= q] for i in range(len(targets))]
        coverages.append(sum(y in s for s, y in zip(sets, targets, strict=True)) / len(targets))
        sizes.append(sum(len(s) for s in sets) / len(targets))
    assert lac["method"] == "lac" and lac["coverage"] == 0.8
    assert lac["empirical_coverage"]["values"] == pytest.approx(coverages)
    assert lac["mean_set_size"]["values"] == pytest.approx(sizes)

    entry = next(
        e for e in figures.extras["operating_points"] if e["class"] == "b" and e["target"] == "spec=0.9"
    )
    for run, threshold, sensitivity, specificity in zip(
        runs,
        entry["threshold"]["values"],
        entry["sensitivity"]["values"],
        entry["specificity"]["values"],
        strict=True,
    ):
        # the smallest observed calibration score whose calibration specificity reaches 0.9
        negatives = [run.calibration[i, 1] for i, y in enumerate(calibration_targets) if y != 1]
        candidates = sorted(set(run.calibration[:, 1].tolist())) + [math.inf]
        chosen = next(t for t in candidates if sum(s < t for s in negatives) / len(negatives) >= 0.9)
        assert threshold == pytest.approx(chosen, abs=1e-12)  # trust renormalises rows (float rounding)
        called = [run.test[i, 1] >= chosen for i in range(len(targets))]
        tp = sum(c and y == 1 for c, y in zip(called, targets, strict=True))
        tn = sum(not c and y != 1 for c, y in zip(called, targets, strict=True))
        assert sensitivity == pytest.approx(tp / sum(targets == 1))
        assert specificity == pytest.approx(tn / sum(targets != 1))
    youden = [e for e in figures.extras["operating_points"] if e["target"] == "youden"]
    assert [e["class"] for e in youden] == NAMES  # one-vs-rest for every class of a multi-class task


def test_without_a_calibration_split_the_reason_is_recorded():
    runs, targets, groups, _ = _runs(seed=3)
    runs = [RunScores(run.test, None) for run in runs]
    figures = row_figures(
        runs,
        targets,
        groups,
        None,
        NAMES,
        metrics=METRICS,
        multi_label=False,
        settings=TrustSettings(bootstrap=0),
    )
    assert "conformal" not in figures.extras and "operating_points" not in figures.extras
    assert "calibration_fraction 0" in figures.extras["not_computed"]["conformal"]
    assert "ece" in figures.extras["calibration"] and "temperature" not in figures.extras["calibration"]


def test_a_calibration_split_too_small_for_the_coverage_says_how_many_are_needed():
    runs, targets, groups, calibration_targets = _runs(seed=4, n_cal=10)
    figures = row_figures(
        runs,
        targets,
        groups,
        calibration_targets,
        NAMES,
        metrics=METRICS,
        multi_label=False,
        settings=TrustSettings(bootstrap=0, coverage=(0.95,)),
    )
    assert "needs at least 19" in figures.extras["not_computed"]["conformal.lac@0.95"]


def test_calibration_file_predictions():
    runs, targets, _, calibration_targets = _runs(seed=5, n_cal=50)
    content = fit_calibration(
        runs[0].calibration, calibration_targets, NAMES, coverage=(0.9,), methods=("lac",)
    )
    prediction = calibrated_prediction(runs[0].test[:4], content, coverage=0.9, method="lac")
    t = content["temperature"]
    for i in range(4):
        scaled = runs[0].test[i] ** (1 / t)
        scaled /= scaled.sum()
        assert list(prediction.probabilities[i].values()) == pytest.approx(scaled.tolist())
        threshold = content["conformal"][0]["threshold"]
        assert set(prediction.sets[i]) == {
            n for k, n in enumerate(NAMES) if 1 - runs[0].test[i, k] <= threshold
        }
    with pytest.raises(ValueError, match="no aps set at coverage 0.9; available: lac@0.9"):
        calibrated_prediction(runs[0].test[:1], content, coverage=0.9, method="aps")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_trust") / "final"
    save_tiny_maskedclip(directory)
    return directory


def test_harness_reports_intervals_calibration_sets_and_thresholds(tiny_checkpoint, synthetic, tmp_path):
    settings = EvaluationSettings(
        tasks=("zero-shot", "linear-probe", "finetune"),
        fractions=(1.0,),
        seeds=(0,),
        bootstrap=50,
        calibration_fraction=0.3,
        coverage=(0.8,),
        finetune=FinetuneSettings(max_steps=2, batch_size=8, eval_batch_size=16, lr=1e-3),
        cache_dir=str(tmp_path / "cache"),
        show_progress=False,
    )
    results = evaluate_models(
        {"tiny": str(tiny_checkpoint)},
        [synthetic.paired, synthetic.categorical, synthetic.test],
        settings=settings,
        output_dir=tmp_path / "report",
    )
    dataset = results["dataset"]
    assert dataset["num_calibration"] > 0 and dataset["calibration_split"].startswith("group-aware")
    for row in results["results"]:
        assert all(
            len(m["ci"]) == 2
            for name, m in row["metrics"].items()
            if name != "roc_auc" or m["mean"] == m["mean"]
        )
        assert {"calibration", "conformal", "operating_points", "bootstrap"} <= set(row)
        assert {e["method"] for e in row["conformal"]} == {"lac", "aps"}
    report = (tmp_path / "report" / "results.md").read_text()
    for heading in ("**Calibration**", "**Conformal prediction sets**", "**Screening operating points**"):
        assert heading in report
    assert "bootstrap resamples of the test patients" in report
    assert list((tmp_path / "report").glob("reliability_tiny_zero-shot*.png"))
    saved = tmp_path / "report" / "finetuned" / "tiny-finetune-fraction1-seed0" / "model"
    content = load_calibration(saved)
    assert (
        content["class_names"] == dataset["classes"]
        and content["n_calibration"] == dataset["num_calibration"]
    )
    prediction = predict_calibrated(
        saved, [np.zeros((40, 40, 3), dtype=np.uint8)], coverage=0.8, method="lac"
    )
    assert sum(prediction.probabilities[0].values()) == pytest.approx(1.0)
    assert prediction.temperature == content["temperature"]


def test_calibration_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration.json does not exist"):
        load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 1}))
    with pytest.raises(ValueError, match="not a retvlp calibration file"):
        load_calibration(tmp_path)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--calibration-fraction", "1.5"], "calibration_fraction must lie in"),
        (["--operating-points", "spec=0.9 specificity=0.8"], "given twice"),
        (["--coverage", "0.9,1.2"], "coverages must lie in"),
        (["--conformal-methods", "raps"], "Unknown conformal method"),
        (["--bootstrap", "-1"], "bootstrap must be >= 0"),
    ],
)
def test_cli_trust_options_refuse_bad_values(
    tiny_checkpoint, synthetic, tmp_path, capsys, arguments, message
):
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(synthetic.test),
            "--task",
            "zero-shot",
            *arguments,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_folding_the_temperature_divides_the_saved_heads_logits(tmp_path):
    """A full classifier's model.safetensors and a LoRA adapter's adapter_model.safetensors: after folding, the
    loaded model's logits are the unfolded ones / T (so the pipeline's softmax is the calibrated one)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageClassification

    from retvlp import MaskedCLIPForImageClassification
    from retvlp.evaluation.calibrated import fold_temperature
    from retvlp.evaluation.finetune import lora_wrap, save_finetuned

    torch.manual_seed(0)
    classifier = MaskedCLIPForImageClassification(
        make_tiny_config(vision={"num_labels": 3}).vision_config
    ).eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = classifier(pixel_values=pixels).logits
    classifier.save_pretrained(tmp_path / "model")
    fold_temperature(tmp_path / "model", 2.5)
    with torch.no_grad():
        after = (
            AutoModelForImageClassification.from_pretrained(tmp_path / "model")
            .eval()(pixel_values=pixels)
            .logits
        )
    torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-6)

    adapter = lora_wrap(classifier, FinetuneSettings(method="lora", lora_rank=2, lora_dropout=0.0)).eval()
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
        before = adapter(pixel_values=pixels).logits
    save_finetuned(adapter, tmp_path / "adapter", base_model=str((tmp_path / "model").resolve()))
    fold_temperature(tmp_path / "adapter", 0.5)
    base = AutoModelForImageClassification.from_pretrained(
        tmp_path / "model", config=AutoConfig.from_pretrained(tmp_path / "adapter")
    )
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        after = loaded(pixel_values=pixels).logits
    # the adapter's trained head replaces the (folded, T = 2.5) base head: only the adapter's T = 0.5 applies
    torch.testing.assert_close(after, before / 0.5, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected one classifier weight and bias"):
        (tmp_path / "empty").mkdir()
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "empty" / "model.safetensors"))
        fold_temperature(tmp_path / "empty", 2.0)


def test_maps_write_evidence_overlays_per_class_and_link_them(tiny_checkpoint, synthetic, tmp_path):
    settings = EvaluationSettings(
        tasks=("zero-shot",),
        seeds=(0,),
        bootstrap=0,
        calibration_fraction=0.0,
        maps=1,
        cache_dir=str(tmp_path / "cache"),
        show_progress=False,
    )
    results = evaluate_models(
        {"tiny": str(tiny_checkpoint)},
        [synthetic.paired, synthetic.categorical, synthetic.test],
        settings=settings,
        output_dir=tmp_path / "report",
    )
    targets = results["test_targets"]
    predicted = results["predictions"][("tiny", "zero-shot", None, None, None)].argmax(axis=1)
    expected = {
        (name, kind)
        for k, name in enumerate(results["dataset"]["classes"])
        for kind, chosen in (("correct", predicted == k), ("wrong", predicted != k))
        if ((targets == k) & chosen).any()
    }
    written = sorted((tmp_path / "report" / "evidence" / "tiny").glob("*.png"))
    assert {tuple(p.stem.rsplit("_", 2)[:2]) for p in written} == {
        (name.replace(" ", "-"), kind) for name, kind in expected
    }
    assert "**Evidence maps**" in (tmp_path / "report" / "results.md").read_text()
    with pytest.raises(ValueError, match="maps must be >= 0"):
        EvaluationSettings(maps=-1)
