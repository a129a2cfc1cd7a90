"""`retvlp benchmark` (issue 28 item 2): the suites' protocols as data, the plan (suites and dataset names,
did-you-mean), models checked before any data is read, datasets not present skipped and listed, one leaderboard
with published reference rows, resume markers; end to end with a tiny retvlp checkpoint and a tiny
transformers CLIPModel side by side, on fake recipes and (once they exist) on the recipes' stand-ins."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_maskedclip
from PIL import Image

from retvlp.benchmarks import suite as suite_module
from retvlp.benchmarks.recipe import (
    BenchmarkData,
    DatasetRecipe,
    ReferenceFigure,
    records_from,
    seeded_group_split,
)
from retvlp.benchmarks.suite import (
    FLAIR,
    RETFOUND,
    BenchmarkOptions,
    UnknownNameError,
    plan,
    suite_settings,
)
from retvlp.cli import main
from retvlp.tokenization import tiny_tokenizer

STANDINS = Path(__file__).resolve().parent / "benchmark_standins.py"


# ----------------------------------------------------------------------------------------------- fixtures
class _FakeRecipe(DatasetRecipe):
    """A dataset whose release is `labels.csv` (image, label, patient) and `images/`."""

    folder_classes: tuple[str, ...] = ()

    def required_files(self):
        return ("labels.csv", "images")

    def read(self, root: Path, *, seed: int) -> BenchmarkData:
        with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
        rows = [(str(root / "images" / r["image"]), (r["label"],), r["patient"]) for r in table]
        splits = seeded_group_split([r[1][0] for r in rows], [r[2] for r in rows], self.classes, seed=seed)
        return BenchmarkData(
            self.name, self.classes, self.task, self.ordinal, records_from(rows, splits),
            f"seeded patient-level split (seed {seed})", "patient",
        )  # fmt: skip


class FakeFundus(_FakeRecipe):
    name = "fakefundus"
    title = "Fake fundus set (FLAIR suite)"
    suites = ("flair",)
    task = "multiclass"
    classes = ("normal", "glaucoma", "cataract")
    folder = "fake_fundus"
    source = "https://example.org/fake-fundus"
    licence = "CC0"
    citation = "Nobody et al., A fake fundus set, 2026"
    layout = "fake_fundus/\n  labels.csv  image,label,patient\n  images/"
    references = (
        ReferenceFigure("FLAIR", "zero-shot", "balanced_accuracy", 0.512, "Fake et al. 2026, Table 3"),
    )


class FakeGrades(_FakeRecipe):
    name = "fakegrades"
    title = "Fake DR grading set (RETFound suite)"
    suites = ("retfound",)
    task = "multiclass"
    ordinal = True
    classes = ("no diabetic retinopathy", "mild diabetic retinopathy", "severe diabetic retinopathy")
    folder = "fake_grades"
    source = "https://example.org/fake-grades"
    licence = "CC0"
    citation = "Nobody et al., Fake grades, 2026"
    layout = "fake_grades/\n  labels.csv\n  images/"
    references = (
        ReferenceFigure("RETFound (CFP)", "finetune", "roc_auc", 0.901, "Fake Nature 2026, Fig. 2"),
    )


class FakeAbsent(_FakeRecipe):
    name = "fakeabsent"
    title = "A fake set nobody downloaded"
    suites = ("flair",)
    task = "multiclass"
    classes = ("normal", "glaucoma")
    folder = "fake_absent"
    source = "https://example.org/absent"
    licence = "CC0"
    citation = "Nobody, 2026"
    layout = "fake_absent/\n  labels.csv\n  images/"


FAKES = {r.name: r for r in (FakeAbsent(), FakeFundus(), FakeGrades())}


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(suite_module, "recipes", lambda: dict(FAKES))
    return FAKES


def write_fake(root: Path, recipe: _FakeRecipe, per_class: int = 5, seed: int = 0) -> Path:
    folder = root / recipe.folder
    (folder / "images").mkdir(parents=True)
    generator = np.random.default_rng(seed)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient"])
        for k, label in enumerate(recipe.classes):
            for i in range(per_class):
                pixels = generator.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                pixels[..., k % 3] = 200  # a class colour: something for the models to see
                name = f"{k}_{i}.png"
                Image.fromarray(pixels).save(folder / "images" / name)
                writer.writerow([name, label, f"P{k}{i}"])
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny retvlp (MaskedCLIP) checkpoint and a tiny transformers CLIPModel with a CLIP image processor and a
    locally built WordPiece tokenizer, both saved as folders (32 px)."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor

    root = tmp_path_factory.mktemp("models")
    save_tiny_maskedclip(root / "tiny")
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=32, eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip"
    )
    tokenizer.save_pretrained(root / "clip")
    return {"tiny": root / "tiny", "clip": root / "clip"}


def _models(tiny_models) -> list[str]:
    return [arg for name, path in tiny_models.items() for arg in ("--model", f"{name}={path}")]


# ----------------------------------------------------------------------------------------------- protocols
def test_the_suites_carry_the_papers_settings():
    assert RETFOUND.tasks == ("finetune", "linear-probe") and RETFOUND.seeds == (0, 1, 2, 3, 4)
    assert RETFOUND.metrics == ("roc_auc", "pr_auc") and RETFOUND.ordinal_metrics == ("quadratic_kappa",)
    assert RETFOUND.finetune["layer_decay"] == 0.65 and RETFOUND.finetune["drop_path_rate"] == 0.2
    assert RETFOUND.finetune["lr"] == pytest.approx(5e-3 * 16 / 256)
    assert FLAIR.tasks == ("zero-shot", "few-shot", "linear-probe") and FLAIR.shots == (1, 5, 10)
    assert FLAIR.metrics == ("balanced_accuracy",)  # ACA

    full = suite_settings(RETFOUND, BenchmarkOptions(), cache_dir=None)
    assert full.finetune.epochs == 50 and full.finetune.batch_size == 16 and full.bootstrap == 1000
    assert full.calibration_fraction == 0  # the papers hold no calibration split out
    quick = suite_settings(FLAIR, BenchmarkOptions(quick=True), cache_dir=None)
    assert quick.seeds == (0,) and quick.shots == (1,) and quick.bootstrap == 0
    assert quick.few_shot_methods == ("clip-adapter",)
    given = suite_settings(FLAIR, BenchmarkOptions(quick=True, seeds=(3, 4), shots=(2,)), cache_dir=None)
    assert given.seeds == (3, 4) and given.shots == (2,)  # explicit overrides win over --quick
    tuned = suite_settings(RETFOUND, BenchmarkOptions(quick=True, max_steps=5), cache_dir=None)
    assert tuned.finetune.max_steps == 5 and tuned.finetune.layer_decay == 0.65
    only = suite_settings(FLAIR, BenchmarkOptions(tasks=("linear-probe", "finetune")), cache_dir=None)
    assert only.tasks == ("linear-probe",)  # --tasks filters each suite's own tasks
    with pytest.raises(ValueError, match="leaves the retfound suite nothing to run"):
        suite_settings(RETFOUND, BenchmarkOptions(tasks=("zero-shot",)), cache_dir=None)


def test_plan_takes_suites_and_dataset_names_and_suggests(fake_registry):
    planned = plan(["flair"])
    assert [p.recipe.name for p in planned] == ["fakeabsent", "fakefundus"]
    assert {p.suite.name for p in planned} == {"flair"}
    mixed = plan(["fake-grades", "flair", "fakefundus"])
    assert [p.recipe.name for p in mixed] == ["fakegrades", "fakeabsent", "fakefundus"]
    assert mixed[0].suite is RETFOUND
    with pytest.raises(
        UnknownNameError, match=r"Did you mean fakefundus.*Suites: retfound, flair; datasets:"
    ):
        plan(["fakefundos"])
    with pytest.raises(UnknownNameError, match="Did you mean flair"):
        plan(["flar"])


# ----------------------------------------------------------------------------------------------- bad input
def test_unknown_suite_is_a_usage_error_listing_the_known_ones(fake_registry, tmp_path, capsys):
    code = main(["benchmark", "--suite", "retfund", "--data-root", str(tmp_path), "--model", f"x={tmp_path}"])
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown suite or dataset 'retfund'" in error and "Did you mean retfound" in error
    assert "fakefundus" in error


def test_a_missing_model_fails_before_any_data_is_read(fake_registry, tmp_path, capsys):
    write_fake(tmp_path / "data", FakeFundus())
    code = main([
        "benchmark", "--suite", "flair", "--data-root", str(tmp_path / "data"), "--model",
        f"mine={tmp_path / 'no_such_model'}", "--output", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "model mine" in error and "no such model directory" in error
    assert not (tmp_path / "out").exists()  # nothing read, nothing written


def test_no_dataset_present_names_what_was_looked_for(fake_registry, tiny_models, tmp_path, capsys):
    (tmp_path / "data" / "fake_fundus").mkdir(parents=True)  # a folder without the label sheet
    code = main([
        "benchmark", "--suite", "flair", "--data-root", str(tmp_path / "data"), *_models(tiny_models),
        "--output", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "no dataset of flair is present" in error
    assert "fakefundus" in error and "missing labels.csv, images" in error
    assert "fakeabsent" in error and "missing fake_absent/" in error


# ----------------------------------------------------------------------------------------------- end to end
def test_benchmark_end_to_end_resume_and_force(fake_registry, tiny_models, tmp_path, capsys):
    """Both suites on fake recipes with published figures (the stand-in test below runs both models)."""
    data = tmp_path / "data"
    write_fake(data, FakeFundus())
    write_fake(data, FakeGrades(), seed=1)
    out = tmp_path / "out"
    command = [
        "benchmark", "--suite", "flair", "retfound", "--data-root", str(data), "--model",
        f"tiny={tiny_models['tiny']}", "--output", str(out), "--quick", "--no-progress",
    ]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "skipped fakeabsent" in printed and "missing fake_absent/" in printed
    for dataset in ("fakefundus", "fakegrades"):
        assert (out / dataset / "manifests" / "test.csv").is_file()
        assert (out / dataset / "tiny" / "benchmark_done.json").is_file()
        assert (out / dataset / "tiny" / "results.json").is_file()
    board = (out / "leaderboard.md").read_text()
    assert "| fakefundus | tiny |" in board and "| fakegrades | tiny |" in board
    assert "| fakefundus | FLAIR — *published* [1] |" in board and "0.512" in board
    assert "RETFound (CFP) — *published* [2]" in board and "0.901" in board
    assert "1. Fake et al. 2026, Table 3" in board and "2. Fake Nature 2026, Fig. 2" in board
    assert "`fakeabsent`: looked in" in board and "missing fake_absent/" in board
    assert "zero-shot ACA" in board and "1-shot clip-adapter ACA" in board and "finetune AUROC" in board
    document = json.loads((out / "leaderboard.json").read_text())
    cells = {(r["dataset"], r["model"]): r["cells"] for r in document["rows"]}
    assert "mean" in cells[("fakefundus", "tiny")]["zero-shot:balanced_accuracy"]
    assert "mean" in cells[("fakegrades", "tiny")]["finetune:quadratic_kappa"]  # graded: κ reported
    assert cells[("fakefundus", "tiny")].get("finetune:quadratic_kappa") is None  # not a flair column
    assert (out / "leaderboard.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")}
    assert len(stamps) == 2

    assert main(command) == 0  # resumed: nothing recomputed
    printed = capsys.readouterr().out
    assert "fakefundus / tiny: resumed" in printed and "fakegrades / tiny: resumed" in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")} == stamps
    assert "Resumed from an earlier run" in (out / "leaderboard.md").read_text()

    assert main([*command, "--force", "--suite", "fakefundus"]) == 0  # the last --suite wins
    printed = capsys.readouterr().out
    assert "fakefundus / tiny: rerunning (--force)" in printed
    assert (out / "fakefundus" / "tiny" / "results.json").stat().st_mtime_ns != stamps[
        out / "fakefundus" / "tiny" / "results.json"
    ]


@pytest.mark.skipif(
    not STANDINS.is_file(), reason="tests/benchmark_standins.py (the recipes' stand-ins) not there"
)
def test_benchmark_on_the_recipes_standins(tiny_models, tmp_path, capsys):
    """The real recipes on their stand-ins: one dataset of each suite (MESSIDOR: FLAIR, with FLAIR's published
    zero-shot ACA; APTOS-2019: RETFound, graded), REFUGE named but not downloaded; the retvlp checkpoint and the
    CLIPModel side by side."""
    from benchmark_standins import write_standin

    from retvlp.benchmarks.registry import get_recipe

    data = tmp_path / "data"
    write_standin("messidor", data, per_class=3)
    write_standin("aptos2019", data, per_class=3)
    out = tmp_path / "out"
    command = [
        "benchmark", "--suite", "messidor", "aptos2019", "refuge", "--data-root", str(data),
        *_models(tiny_models), "--output", str(out), "--quick", "--no-progress",
    ]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "skipped refuge" in printed
    board = (out / "leaderboard.md").read_text()
    for dataset in ("messidor", "aptos2019"):
        for model in ("tiny", "clip"):
            assert f"| {dataset} | {model} |" in board
        for ref in get_recipe(dataset).references:
            assert f"| {dataset} | {ref.model} — *published*" in board and ref.source in board
    assert "`refuge`: looked in" in board
    assert get_recipe("messidor").references and "*published*" in board
    document = json.loads((out / "leaderboard.json").read_text())
    cells = {(r["dataset"], r["model"]): r["cells"] for r in document["rows"] if not r["published"]}
    assert "mean" in cells[("messidor", "clip")]["zero-shot:balanced_accuracy"]
    assert "mean" in cells[("aptos2019", "tiny")]["finetune:roc_auc"]
    assert "mean" in cells[("aptos2019", "clip")]["linear-probe:quadratic_kappa"]  # APTOS is graded
    manifest = (out / "aptos2019" / "manifests" / "test.csv").read_text().splitlines()
    assert manifest[0] == "image,label,group" and len(manifest) > 1
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")}
    assert len(stamps) == 4

    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "messidor / tiny: resumed" in printed and "aptos2019 / clip: resumed" in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")} == stamps


def test_leakage_options_pass_through_where_the_harness_has_them(tmp_path):
    import inspect

    from retvlp.benchmarks.suite import leakage_keywords
    from retvlp.evaluation.runner import evaluate_models

    assert leakage_keywords(None, False) == {}
    manifest = str(tmp_path / "pretrain.csv")
    if "pretrain_data" in inspect.signature(evaluate_models).parameters:
        expected = {"pretrain_data": [{"path": manifest}], "exclude_leaked": True}
        assert leakage_keywords([manifest], True) == expected
        with pytest.raises(ValueError, match="--exclude-leaked needs --pretrain-manifests"):
            leakage_keywords(None, True)
    else:
        with pytest.raises(ValueError, match="does not have yet"):
            leakage_keywords([manifest], False)
