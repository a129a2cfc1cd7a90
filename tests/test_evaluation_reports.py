"""Reports that cannot mislead: explicit class order, order-free splits, ordinal κ, the positive class of binary
metrics, majority / chance references, deterministic settings run once, Hugging Face datasets as data, clear
model-path errors, the few-shot progress bar and the model card's reading of all of it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, spec_within

from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.cli import main
from retvlp.evaluation.data import read_labelled_records, with_positive_class
from retvlp.evaluation.references import chance_reference, majority_reference
from retvlp.evaluation.report import markdown_table, reference_lines
from retvlp.evaluation.runner import EvaluationSettings, check_model_source, evaluate_models, fixed_split
from retvlp.evaluation.splits import (
    few_shot_indices,
    group_stratified_split,
    nested_label_fractions,
    order_free_targets,
)
from retvlp.maskedclip import FundusImageProcessor
from retvlp.tokenization import tiny_tokenizer

GRADES = ["no_DR", "NPDR", "PDR"]  # clinical order; alphabetically it is NPDR, PDR, no_DR


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("reports_model") / "final"
    MaskedCLIPModel(make_tiny_config()).eval().save_pretrained(directory)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


def _grade_rows(synthetic, num_patients=30, seed=0, prefix="P"):
    """(image path, grade, patient) rows: imbalanced grades (60 % no_DR), 1-3 images per patient."""
    images = sorted((synthetic.root / "images").glob("*.png"))
    rng = np.random.default_rng(seed)
    rows, next_image = [], 0
    for patient in range(num_patients):
        grade = GRADES[rng.choice(3, p=[0.6, 0.25, 0.15])]
        for _ in range(int(rng.integers(1, 4))):
            rows.append((str(images[next_image % len(images)]), grade, f"{prefix}{patient:03d}"))
            next_image += 1
    return rows


def _csv(path, rows):
    """The rows as a CSV manifest spec; its images (the shared synthetic set) lie outside the manifest's folder,
    so their folder is an allowed data root."""
    path.write_text("image,label,patient_id\n" + "".join(f"{i},{g},{p}\n" for i, g, p in rows))
    return spec_within(path, *{str(Path(i).parent) for i, _, _ in rows})


@pytest.fixture(scope="module")
def grades_csv(synthetic, tmp_path_factory):
    return _csv(tmp_path_factory.mktemp("grades") / "grades.csv", _grade_rows(synthetic))


def _settings(tmp_path, **kwargs):
    defaults = dict(
        seeds=(0, 1),
        fractions=(0.5, 1.0),
        shots=(1,),
        cache_dir=str(tmp_path / "cache"),
        bootstrap=20,  # the trust figures have their own tests (test_eval_trust.py)
        calibration_fraction=0.0,
    )
    return EvaluationSettings(**{**defaults, "show_progress": False, **kwargs})


# ---------------------------------------------------------------------------------------------- class order
def test_order_free_targets_follow_the_sorted_names():
    assert order_free_targets(np.array([0, 1, 2, 0]), GRADES).tolist() == [2, 0, 1, 2]
    multi_hot = np.array([[1, 0, 0], [0, 1, 1]])
    assert order_free_targets(multi_hot, GRADES).astype(int).tolist() == [[0, 0, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        order_free_targets(np.array([0, 2]), ["a", "b"])


def test_split_depends_on_rows_and_seed_not_on_class_order(grades_csv):
    clinical = read_labelled_records(grades_csv, GRADES)
    alphabetical = read_labelled_records(grades_csv)
    assert alphabetical.class_names == ["NPDR", "PDR", "no_DR"] and alphabetical.class_order == "sorted"
    assert clinical.class_order == "given"
    differs_before = False
    for seed in range(6):
        settings = EvaluationSettings(split_seed=seed, test_fraction=0.3)
        pools, tests = zip(*(fixed_split(r, None, settings) for r in (clinical, alphabetical)), strict=True)
        rows = [
            {r.records[i].row for i in test} for r, test in zip((clinical, alphabetical), tests, strict=True)
        ]
        assert rows[0] == rows[1] and len(rows[0]) == len(tests[0]), seed
        assert {clinical.records[i].row for i in pools[0]}.isdisjoint(rows[0])
        # The same call on the raw class ids (the old behaviour) is order dependent for some seed.
        raw = [group_stratified_split(r.targets, r.groups, 0.3, seed)[1] for r in (clinical, alphabetical)]
        differs_before |= not np.array_equal(raw[0], raw[1])
    assert differs_before, "the fixture does not exercise class order: the test could not fail"


def test_label_fractions_and_shots_are_order_free(grades_csv):
    clinical = read_labelled_records(grades_csv, GRADES)
    alphabetical = read_labelled_records(grades_csv)
    a = order_free_targets(clinical.targets, clinical.class_names)
    b = order_free_targets(alphabetical.targets, alphabetical.class_names)
    for seed in range(3):
        fa = nested_label_fractions(a, clinical.groups, (0.2, 0.5), seed)
        fb = nested_label_fractions(b, alphabetical.groups, (0.2, 0.5), seed)
        assert all(np.array_equal(fa[f], fb[f]) for f in fa)
        np.testing.assert_array_equal(
            few_shot_indices(a, 2, seed, clinical.groups), few_shot_indices(b, 2, seed, alphabetical.groups)
        )


def test_harness_test_set_is_the_same_for_two_class_orders(tiny_model_dir, grades_csv, tmp_path):
    runs = [
        evaluate_models(
            {"tiny": str(tiny_model_dir)},
            grades_csv,
            class_names=order,
            settings=_settings(tmp_path, tasks=("linear-probe",), seeds=(0,), fractions=(1.0,)),
        )
        for order in (GRADES, None)
    ]
    clinical, alphabetical = (r["dataset"] for r in runs)
    assert clinical["classes"] == GRADES and alphabetical["classes"] == ["NPDR", "PDR", "no_DR"]
    assert clinical["num_test"] == alphabetical["num_test"]
    assert clinical["test_counts"] == alphabetical["test_counts"]  # per class name, so order-free
    # Same rows, same probe: the metrics that do not depend on the class order agree.
    first, second = (r["results"][0]["metrics"] for r in runs)
    assert first["accuracy"]["mean"] == pytest.approx(second["accuracy"]["mean"])


def test_class_label_order_is_used_and_recorded(synthetic, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _grade_rows(synthetic, num_patients=12)
    features = datasets.Features(
        {
            "image": datasets.Value("string"),
            "label": datasets.ClassLabel(names=GRADES),
            "patient_id": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {
            "image": [r[0] for r in rows],
            "label": [GRADES.index(r[1]) for r in rows],
            "patient_id": [r[2] for r in rows],
        },
        features=features,
    )
    spec = {"dataset": dataset, "allowed_roots": [str(synthetic.root)]}  # path strings outside the cwd
    records = read_labelled_records(spec)
    assert records.class_names == GRADES and records.class_order == "ClassLabel"
    assert [GRADES[t] for t in records.targets] == [r[1] for r in rows]
    assert read_labelled_records(spec, ["PDR", "NPDR", "no_DR"]).class_order == "given"


# ---------------------------------------------------------------------------------------------- ordinal κ
def test_kappa_only_for_declared_ordinal_tasks(tiny_model_dir, grades_csv, tmp_path):
    settings = _settings(tmp_path, tasks=("linear-probe",), seeds=(0,), fractions=(1.0,))
    nominal = evaluate_models({"tiny": str(tiny_model_dir)}, grades_csv, settings=settings)
    assert nominal["dataset"]["ordinal"] is False
    assert "quadratic_kappa" not in nominal["results"][0]["metrics"]
    assert "quadratic_kappa" not in nominal["references"]["majority"]["metrics"]
    ordinal = evaluate_models(
        {"tiny": str(tiny_model_dir)}, grades_csv, class_names=GRADES, ordinal=True, settings=settings
    )
    assert ordinal["dataset"]["ordinal"] is True and ordinal["dataset"]["classes"] == GRADES
    assert "quadratic_kappa" in ordinal["results"][0]["metrics"]
    assert ordinal["references"]["majority"]["metrics"]["quadratic_kappa"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="--ordinal needs the grades in order.*--classes"):
        evaluate_models({"tiny": str(tiny_model_dir)}, grades_csv, ordinal=True, settings=settings)


# ---------------------------------------------------------------------------------------------- references
def test_majority_reference_matches_hand_computation():
    train, test = np.array([0, 0, 0, 1, 2]), np.array([0, 1, 1, 2])
    reference = majority_reference(train, test, GRADES, multi_label=False)
    assert reference["predicts"] == "no_DR"
    metrics = reference["metrics"]
    assert metrics["accuracy"] == pytest.approx(1 / 4)  # one of four test images is no_DR
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 3)
    assert metrics["roc_auc"] == pytest.approx(0.5)
    assert metrics["pr_auc"] == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3)  # constant scores: prevalence
    assert metrics["f1_macro"] == pytest.approx((2 * 0.25 / 1.25) / 3)  # class 0: precision 1/4, recall 1
    assert metrics["quadratic_kappa"] == pytest.approx(0.0)


def test_binary_and_multi_label_references():
    binary = majority_reference(np.array([0, 1, 1]), np.array([0, 0, 1, 1, 1]), ["a", "b"], multi_label=False)
    assert binary["predicts"] == "b" and binary["metrics"]["accuracy"] == pytest.approx(3 / 5)
    assert binary["metrics"]["pr_auc"] == pytest.approx(3 / 5)
    chance = chance_reference(np.array([0, 0, 1, 1, 1]), 2, multi_label=False)["metrics"]
    assert chance == {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "roc_auc": 0.5,
        "pr_auc": pytest.approx(3 / 5),
        "quadratic_kappa": 0.0,
    }
    multi = majority_reference(
        np.array([[1, 0], [1, 1], [0, 0]]), np.array([[1, 0], [0, 1]]), ["a", "b"], multi_label=True
    )
    assert multi["predicts"] == ["a"]  # label a in 2 of 3 training images, b in 1
    assert multi["metrics"]["accuracy"] == pytest.approx(0.5) and "quadratic_kappa" not in multi["metrics"]


def _results(**dataset):
    return {
        "dataset": {
            "name": "tvhl",
            "classes": ["no DME", "DME"],
            "class_order": "given",
            "ordinal": False,
            "positive_class": "DME",
            "multi_label": False,
            "num_train": 80,
            "num_test": 20,
            "test_split": "given",
            **dataset,
        },
        "references": {
            "majority": {"predicts": "no DME", "metrics": {"accuracy": 0.7, "roc_auc": 0.5, "pr_auc": 0.3}},
            "chance": {"metrics": {"accuracy": 0.5, "roc_auc": 0.5, "pr_auc": 0.3}},
        },
        "models": {},
        "results": [
            {
                "model": "clip",
                "task": "zero-shot",
                "method": None,
                "fraction": None,
                "shots": None,
                "seeds": [0],
                "num_train": 0,
                "metrics": {
                    m: {"mean": v, "std": 0.0, "values": [v]} for m, v in (("accuracy", 0.7), ("pr_auc", 0.4))
                },
            },
            {
                "model": "ours",
                "task": "linear-probe",
                "method": None,
                "fraction": 1.0,
                "shots": None,
                "seeds": [0],
                "num_train": 80,
                "metrics": {
                    m: {"mean": v, "std": 0.0, "values": [v]}
                    for m, v in (("accuracy", 0.85), ("pr_auc", 0.6))
                },
            },
        ],
    }


def test_table_states_order_positive_class_references_and_flags_majority_accuracy():
    table = markdown_table(_results())
    assert "2 classes in this order: no DME, DME (as given)" in table
    assert "positive class **DME** (PR-AUC)" in table
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "PR-AUC (positive: DME)" in header
    assert (
        "| *majority class* | reference | always `no DME` (training-pool majority) | — | — | 0.700 |" in table
    )
    assert "| *chance* | reference | uniform random guess (expected) | — | — | 0.500 |" in table
    assert "| clip | zero-shot | — | 0 | 1 | 0.700 † |" in table  # the all-`no DME` answer is flagged
    assert "| ours | linear-probe | 100 % labels | 80 | 1 | 0.850 |" in table
    assert "† accuracy not above the majority class (0.700" in table
    older = _results()  # results.json written before references / class order existed
    del older["references"]
    for key in ("class_order", "ordinal", "positive_class"):
        del older["dataset"][key]
    table = markdown_table(older)
    assert "reference" not in table and "†" not in table and "| PR-AUC |" in table


def test_reference_lines_merge_when_majority_equals_chance():
    results = _results()
    assert reference_lines(results, "roc_auc") == [("majority class = chance", 0.5)]
    assert reference_lines(results, "accuracy") == [("majority class", 0.7), ("chance", 0.5)]
    assert reference_lines({"results": []}, "accuracy") == []  # older results: no references, no lines


def test_positive_class_reorders_binary_records(synthetic, tmp_path):
    rows = [(i, "DME" if g != "no_DR" else "no DME", p) for i, g, p in _grade_rows(synthetic, 10)]
    records = read_labelled_records(_csv(tmp_path / "dme.csv", rows))
    assert records.class_names == ["DME", "no DME"]  # alphabetically, `no DME` would be the positive class
    flipped = with_positive_class(records, "DME")
    assert flipped.class_names == ["no DME", "DME"]
    assert [flipped.class_names[t] for t in flipped.targets] == [
        records.class_names[t] for t in records.targets
    ]
    with pytest.raises(ValueError, match="binary single-label"):
        with_positive_class(
            read_labelled_records(_csv(tmp_path / "g.csv", _grade_rows(synthetic, 10))), "PDR"
        )
    with pytest.raises(ValueError, match="not one of the classes"):
        with_positive_class(records, "DR")


def test_binary_run_records_positive_class_and_runs_full_fraction_once(tiny_model_dir, synthetic, tmp_path):
    rows = [(i, "DME" if g != "no_DR" else "no DME", p) for i, g, p in _grade_rows(synthetic)]
    results = evaluate_models(
        {"tiny": str(tiny_model_dir)},
        _csv(tmp_path / "dme.csv", rows),
        positive_class="DME",
        settings=_settings(tmp_path, tasks=("zero-shot", "linear-probe"), seeds=(0, 1, 2)),
        output_dir=tmp_path / "report",
    )
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["dataset"]["positive_class"] == "DME" and saved["dataset"]["classes"] == ["no DME", "DME"]
    test_share = saved["dataset"]["test_counts"]["DME"] / saved["dataset"]["num_test"]
    assert saved["references"]["chance"]["metrics"]["pr_auc"] == pytest.approx(test_share)
    majority = saved["references"]["majority"]
    assert majority["predicts"] == max(
        saved["dataset"]["train_counts"], key=saved["dataset"]["train_counts"].get
    )
    probe = {r["fraction"]: r for r in results["results"] if r["task"] == "linear-probe"}
    assert probe[1.0]["seeds"] == [0] and len(probe[1.0]["metrics"]["accuracy"]["values"]) == 1
    assert probe[0.5]["seeds"] == [0, 1, 2] and len(probe[0.5]["metrics"]["accuracy"]["values"]) == 3
    table = (tmp_path / "report" / "results.md").read_text()
    assert "PR-AUC (positive: DME)" in table and "| *majority class* | reference |" in table


# ---------------------------------------------------------------------------------------------- HF datasets
def _image_dataset(rows):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=GRADES),
            "patient_id": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [r[0] for r in rows],
            "label": [GRADES.index(r[1]) for r in rows],
            "patient_id": [r[2] for r in rows],
        },
        features=features,
    )


def test_in_memory_dataset_and_save_to_disk_folder_are_evaluated(tiny_model_dir, synthetic, tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = _image_dataset(_grade_rows(synthetic))
    settings = _settings(tmp_path, tasks=("linear-probe",), seeds=(0,), fractions=(1.0,))
    in_memory = evaluate_models({"tiny": str(tiny_model_dir)}, dataset, settings=settings)
    assert in_memory["dataset"]["classes"] == GRADES and in_memory["dataset"]["class_order"] == "ClassLabel"
    folder = tmp_path / "saved"
    dataset.save_to_disk(str(folder))
    on_disk = evaluate_models({"tiny": str(tiny_model_dir)}, str(folder), settings=settings)
    assert on_disk["dataset"]["classes"] == GRADES
    assert on_disk["dataset"]["test_counts"] == in_memory["dataset"]["test_counts"]

    splits = datasets.DatasetDict(
        {"train": dataset, "test": _image_dataset(_grade_rows(synthetic, 8, seed=5))}
    )
    both = tmp_path / "dict"
    splits.save_to_disk(str(both))
    with pytest.raises(
        ValueError, match=r"DatasetDict saved with save_to_disk \(splits: train, test\).*dict/train"
    ):
        evaluate_models({"tiny": str(tiny_model_dir)}, str(both), settings=settings)
    with pytest.raises(ValueError, match="pass one split"):
        evaluate_models({"tiny": str(tiny_model_dir)}, splits, settings=settings)


def test_cli_reads_a_save_to_disk_split_folder(tiny_model_dir, synthetic, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(
        {
            "train": _image_dataset(_grade_rows(synthetic)),
            "test": _image_dataset(_grade_rows(synthetic, 8, 5, "T")),
        }
    )
    splits.save_to_disk(str(tmp_path / "dr"))
    code = main([
        "evaluate", "--bootstrap", "20", "--model", str(tiny_model_dir), "--data", str(tmp_path / "dr" / "train"),
        "--test-data", str(tmp_path / "dr" / "test"), "--task", "linear-probe", "--seeds", "0",
        "--fractions", "1", "--ordinal", "--output-dir", str(tmp_path / "out"),
        "--cache-dir", str(tmp_path / "cache"), "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["dataset"]["classes"] == GRADES and saved["dataset"]["ordinal"] is True
    assert saved["dataset"]["num_test"] == len(splits["test"])
    assert "quadratic_kappa" in saved["results"][0]["metrics"]


# ---------------------------------------------------------------------------------------------- model paths
def test_model_path_errors_say_what_to_do(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "x"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError,
        match=rf"runs/x is a training run directory; the released model is .*{run / 'final'}",
    ):
        check_model_source(str(run))
    check_model_source(str(run / "final"))  # a model directory passes
    unfinished = tmp_path / "runs" / "y"
    unfinished.mkdir()
    (unfinished / "run_config.yaml").write_text("run: {}\n")
    with pytest.raises(FileNotFoundError, match="without a released model"):
        check_model_source(str(unfinished))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for local in ("./nope", "runs/missing", "a/b/c", str(tmp_path / "absent")):
        with pytest.raises(FileNotFoundError, match=f"no such model directory: {local}"):
            check_model_source(local)
    check_model_source("openai/clip-vit-base-patch32")  # Hub ids are left to from_pretrained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no such model directory: org/model .*HF_HUB_OFFLINE=1"):
        check_model_source("org/model")


def test_cli_names_the_final_folder_of_a_run_directory(tiny_model_dir, grades_csv, tmp_path, capsys):
    run = tiny_model_dir.parent  # tiny_model_dir is <run>/final
    code = main(
        [
            "evaluate",
            "--bootstrap",
            "20",
            "--model",
            str(run),
            "--data",
            grades_csv["path"],
            "--task",
            "linear-probe",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"is a training run directory; the released model is {tiny_model_dir}" in err


# ---------------------------------------------------------------------------------------------- progress
def test_few_shot_has_a_progress_bar_that_follows_no_progress(
    tiny_model_dir, grades_csv, tmp_path, monkeypatch
):
    import tqdm.auto

    bars = []
    original = tqdm.auto.tqdm

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.options = kwargs  # a disabled bar keeps neither desc nor total
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    for show in (True, False):
        bars.clear()
        evaluate_models(
            {"tiny": str(tiny_model_dir)},
            grades_csv,
            settings=_settings(tmp_path, tasks=("few-shot",), seeds=(0, 1), shots=(1, 2), show_progress=show),
        )
        few = [bar for bar in bars if str(bar.options.get("desc")).endswith("few-shot")]
        assert len(few) == 1 and few[0].options["total"] == 2 * 2 * 3  # shots × seeds × methods
        assert few[0].options["disable"] is (not show)
        if show:
            assert few[0].n == 12


# ---------------------------------------------------------------------------------------------- model card
def test_model_card_shows_positive_class_and_references(tmp_path):
    from retvlp.model_card import render_model_card

    directory = tmp_path / "final"
    make_tiny_config().save_pretrained(directory)
    results = _results()
    card = render_model_card(directory, evaluation=results, evaluated_model="ours")
    text = card.text
    assert "| Accuracy | PR-AUC (positive: DME) |" in text
    assert (
        "| *majority class* (reference) | Always `no DME` (training majority) | — | — | 0.700 | 0.300 |"
        in text
    )
    assert "| *chance* (reference) | Uniform random guess (expected) | — | — | 0.500 | 0.300 |" in text
    assert "positive class of PR-AUC: **DME**" in text
    pr_auc = next(r for r in card.data.eval_results if r.metric_type == "pr_auc")
    assert pr_auc.metric_args["positive_class"] == "DME"
    assert not any(r.metric_value == 0.7 and r.metric_type == "accuracy" for r in card.data.eval_results)


def test_cli_data_roots(tiny_model_dir, grades_csv, tmp_path, capsys):
    """The manifest's images lie outside its folder: refused and named, read with --allowed-root."""
    args = [
        "evaluate",
        "--bootstrap",
        "20",
        "--model",
        str(tiny_model_dir),
        "--data",
        grades_csv["path"],
        "--task",
        "zero-shot",
    ]
    args += ["--output-dir", str(tmp_path / "out"), "--no-progress", "--seeds", "0"]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "outside-data-root" in err and "--allowed-root" not in args
    (root,) = grades_csv["allowed_roots"]
    assert main([*args, "--allowed-root", root]) == 0
    assert (tmp_path / "out" / "results.json").is_file()
