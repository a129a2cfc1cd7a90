"""Model cards (templates, model-index round trip) and the one-commit Hub push, offline with a fake HfApi."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VISION, make_tiny_config
from huggingface_hub import ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled
from peft import LoraConfig, get_peft_model

from retvlp import (
    FundusImageProcessor,
    KeepFitConfig,
    KeepFitModel,
    MaskedCLIPForImageClassification,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
    MaskedCLIPVisionConfig,
)
from retvlp.hub import prepare_upload_folder, push_adapter_to_hub, push_to_hub
from retvlp.model_card import render_adapter_card, render_model_card, template_path
from retvlp.tokenization import tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]

KEEPFIT_VISION = {
    "model_type": "resnet",
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 32, 64],
    "depths": [1, 1, 1, 1],
    "layer_type": "bottleneck",
}
KEEPFIT_TEXT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 300,
}

REMOTE_CODE = {
    "configuration_maskedclip.py",
    "modeling_maskedclip.py",
    "loss_maskedclip.py",
    "modeling_common.py",
}
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
TRAINING_ARTEFACTS = {
    "optimizer.bin",
    "scheduler.pt",
    "rng_state_0.pth",
    "random_states_0.pkl",
    "trainer_state.json",
    "checkpoint-3",
}

SUMMARY = {
    "steps": 6,
    "last_metrics": {"step": 6, "epoch": 1.5, "loss": 1.25, "loss_mim": 0.5},
    "classes": ["amd", "normal"],
    "skipped_samples": 2,
    "data_warnings": 1,
    "world_size": 1,
}


def _metric(mean, std, n):
    return {"mean": mean, "std": std, "values": [mean] * n}


def _row(model, task, metrics, *, method=None, fraction=None, shots=None, seeds=(0, 1, 2), num_train=None):
    return {
        "model": model,
        "task": task,
        "method": method,
        "fraction": fraction,
        "shots": shots,
        "seeds": list(seeds),
        "num_train": num_train,
        "metrics": {name: _metric(mean, std, len(seeds)) for name, (mean, std) in metrics.items()},
    }


RESULTS = {
    "dataset": {
        "name": "demo",
        "classes": ["amd", "normal"],
        "multi_label": False,
        "num_train": 900,
        "num_test": 231,
    },
    "results": [
        _row("pretrained", "zero-shot", {"accuracy": (0.71, 0.0), "roc_auc": (0.77, 0.0)}, seeds=[0]),
        _row("pretrained", "few-shot", {"accuracy": (0.74, 0.02)}, method="tip-adapter", shots=4),
        _row("pretrained", "linear-probe", {"accuracy": (0.8, 0.01), "roc_auc": (0.85, 0.012)}, fraction=0.1),
        _row(
            "pretrained", "linear-probe", {"accuracy": (0.86, 0.005), "roc_auc": (0.9, 0.004)}, fraction=1.0
        ),
        _row(
            "pretrained",
            "finetune",
            {"pr_auc": (0.88, 0.01), "quadratic_kappa": (0.62, 0.03)},
            fraction=0.1,
            num_train=90,
        ),
        _row("random_init", "linear-probe", {"accuracy": (0.55, 0.02), "roc_auc": (0.6, 0.03)}, fraction=0.1),
        _row("random_init", "zero-shot", {"accuracy": (0.5, 0.0)}, seeds=[0]),
    ],
}
NUM_PRETRAINED_METRICS = 2 + 1 + 2 + 2 + 2


class FakeHfApi:
    """Records every call; `upload_folder` snapshots the staged folder (a temporary directory that is gone
    once `push_to_hub` returns)."""

    def __init__(self):
        self.calls = []
        self.uploaded = None

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {
            str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()
        }
        self.folder_path = folder
        return "commit-info"

    def names(self):
        return [name for name, _ in self.calls]

    def text(self, name):
        return self.uploaded[name].decode("utf-8")

    def card(self, tmp_path):
        path = tmp_path / "uploaded_README.md"
        path.write_text(self.text("README.md"), encoding="utf-8")
        return ModelCard.load(path)


def _processor():
    return MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16)


@pytest.fixture(scope="module")
def maskedclip(tmp_path_factory):
    """A tiny MaskedCLIP + processor saved as a `final/` folder with a summary and training leftovers."""
    torch.manual_seed(0)
    model = MaskedCLIPModel(make_tiny_config()).eval()
    processor = _processor()
    directory = tmp_path_factory.mktemp("run") / "final"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / "training_summary.json").write_text(json.dumps(SUMMARY))
    for name in (
        "optimizer.bin",
        "scheduler.pt",
        "rng_state_0.pth",
        "random_states_0.pkl",
        "trainer_state.json",
    ):
        (directory / name).write_bytes(b"training state")
    (directory / "checkpoint-3").mkdir()
    (directory / "checkpoint-3" / "model.safetensors").write_bytes(b"old")
    results = tmp_path_factory.mktemp("eval") / "results.json"
    results.write_text(json.dumps(RESULTS))
    return model, processor, directory, results


@pytest.fixture(scope="module")
def keepfit_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = KeepFitConfig(
        vision_config=dict(KEEPFIT_VISION),
        text_config=dict(KEEPFIT_TEXT),
        projection_dim=16,
        codebook_size=64,
        code_dim=8,
    )
    directory = tmp_path_factory.mktemp("keepfit")
    KeepFitModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def lora_model():
    torch.manual_seed(0)
    base = MaskedCLIPForImageClassification(MaskedCLIPVisionConfig(**TINY_VISION, num_labels=3))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    return get_peft_model(base, lora)


def _round_trip(card, tmp_path):
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path)


# ------------------------------------------------------------------------------------------------ templates


def test_templates_ship_in_the_package_and_the_top_level_links_point_at_them():
    for family in ("maskedclip", "keepfit"):
        packaged = template_path(family)
        assert packaged.is_file()
        link = REPO_ROOT / "model_cards" / f"{family}.md"
        assert link.is_symlink() and link.resolve() == packaged.resolve()
    assert '"model_cards/*.md"' in (REPO_ROOT / "pyproject.toml").read_text()


# ---------------------------------------------------------------------------------------------------- cards


def test_maskedclip_card_metadata_and_model_index_round_trip(maskedclip, tmp_path):
    _, _, directory, results = maskedclip
    card = render_model_card(
        directory, evaluation=results, repo_id="me/tiny-maskedclip", base_model="me/retfound"
    )
    loaded = _round_trip(card, tmp_path)
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert data.license == "apache-2.0" and data.base_model == "me/retfound"
    assert set(data.tags) >= {
        "retvlp",
        "maskedclip",
        "medical-imaging",
        "ophthalmology",
        "retina",
        "vision-language",
        "zero-shot-image-classification",
    }
    assert data.model_name == "tiny-maskedclip"

    expected = card.data.eval_results
    parsed = data.eval_results
    assert len(expected) == len(parsed) == NUM_PRETRAINED_METRICS  # only the evaluated model's rows

    def key(result):
        return (
            result.task_type,
            result.metric_type,
            result.metric_name,
            result.metric_config,
            result.metric_value,
        )

    assert sorted(map(key, parsed)) == sorted(map(key, expected))
    names = [result.metric_name for result in parsed]
    assert len(set(names)) == len(names)  # one distinct name per (row, metric): nothing collapsed
    assert "ROC-AUC (linear probe, 10% labels)" in names
    assert "ROC-AUC (linear probe, 100% labels)" in names
    assert "Accuracy (few-shot, Tip-Adapter, 4 shots)" in names
    by_name = {result.metric_name: result for result in parsed}
    assert by_name["ROC-AUC (linear probe, 10% labels)"].metric_value == 0.85
    assert by_name["ROC-AUC (linear probe, 10% labels)"].metric_args["std"] == 0.012
    assert by_name["ROC-AUC (linear probe, 10% labels)"].metric_config == "linear-probe/fraction=0.1"
    assert by_name["PR-AUC (full fine-tuning, 10% labels)"].metric_args["num_train"] == 90
    assert by_name["Accuracy (zero-shot)"].task_type == "zero-shot-image-classification"
    assert {r.task_type for r in parsed} == {"zero-shot-image-classification", "image-classification"}
    assert {r.metric_type for r in parsed} == {"accuracy", "roc_auc", "pr_auc", "quadratic_kappa"}
    assert all(r.dataset_type == "demo" and r.dataset_split == "test" for r in parsed)
    assert not any(r.metric_value in (0.55, 0.6, 0.5) for r in parsed)  # baselines stay out of model-index


def test_maskedclip_card_body(maskedclip):
    _, _, directory, results = maskedclip
    card = render_model_card(
        directory,
        evaluation=results,
        repo_id="me/tiny-maskedclip",
        data_provenance="Our own clinic's images.",
    )
    text = card.text
    for section in (
        "## Model description",
        "## How to use",
        "## Training",
        "## Evaluation results",
        "## Intended use",
        "## Out-of-scope use",
        "## Limitations and biases",
        "## Citation",
    ):
        assert section in text, section
    assert "not a medical device" in text.lower()
    assert "Our own clinic's images." in text
    assert "Zhu, Lei" in text
    # architecture from config.json
    assert "ViT/8" in text and "32×32 px" in text and "16-d" not in text and "8-d" in text
    # usage
    assert 'AutoModel.from_pretrained("me/tiny-maskedclip")' in text
    assert "trust_remote_code=True" in text and '"zero-shot-image-classification"' in text
    # training summary
    assert "| Optimizer steps | 6 |" in text and "| Skipped samples | 2 |" in text
    # results table with baselines, mean ± std
    assert (
        "| model | protocol | seeds | train images | Accuracy | ROC-AUC | PR-AUC | Quadratic weighted kappa |"
        in text
    )
    assert "| Full fine-tuning, 10% labels | 3 | 90 | — | — | 0.880 ± 0.010 | 0.620 ± 0.030 |" in text
    assert (
        "| **pretrained** (this model) | Linear probe, 10% labels | 3 | — | 0.800 ± 0.010 | 0.850 ± 0.012 | — | — |"
        in text
    )
    assert (
        "| random_init (baseline) | Linear probe, 10% labels | 3 | — | 0.550 ± 0.020 | 0.600 ± 0.030 | — | — |"
        in text
    )
    assert "| **pretrained** (this model) | Zero-shot | 1 | — | 0.710 | 0.770 | — | — |" in text
    assert "| Few-shot, Tip-Adapter, 4 shots | 3 | — | 0.740 ± 0.020 |" in text
    assert "Synthetic demo data" not in text


def test_card_without_evaluation_or_summary(keepfit_dir, tmp_path):
    card = render_model_card(keepfit_dir, synthetic_data=True)
    text = card.text
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "not provided" in text and "No evaluation results" in text
    assert "Training data: Synthetic" in text  # provenance defaults to the synthetic data when flagged
    assert "Synthetic demo data" in text and "not a medical device" in text.lower()
    # KeepFIT architecture: ResNet variant, codebook K×D, λ weights
    assert "custom ResNet (bottleneck blocks, depths [1, 1, 1, 1], widths [16, 32, 32, 64])" in text
    assert "K×D = 64×8" in text and "λ1 = 100" in text and "λ2 = 10000" in text
    assert "KeepFIT V2" in text and "placeholder" in text
    assert "saved without a processor" in text
    assert "keepfit" in card.data.tags
    assert _round_trip(card, tmp_path).data.eval_results is None


def test_card_reads_default_summary_and_legacy_eval_results(maskedclip, tmp_path):
    _, _, directory, _ = maskedclip
    legacy = {
        "classes": ["amd", "normal"],
        "num_probe_train": 50,
        "num_test": 20,
        "pretrained": {
            "linear_probe": {"accuracy": np.float64(0.9)},
            "zero_shot": {"accuracy": 0.7, "f1_macro": float("nan")},
        },
        "random_init": {"linear_probe": {"accuracy": 0.6}},
    }
    card = render_model_card(directory, evaluation=legacy)
    loaded = _round_trip(card, tmp_path)
    assert sorted(r.metric_value for r in loaded.data.eval_results) == [0.7, 0.9]  # NaN means are left out
    assert "| Macro F1 |" in card.text
    assert "| Optimizer steps | 6 |" in card.text  # training_summary.json of the folder
    assert loaded.data.model_name == directory.parent.name  # `final/` is named after its run directory


def test_synthetic_run_detected_from_run_config(maskedclip, tmp_path):
    _, _, directory, _ = maskedclip
    final = tmp_path / "demo_run" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_bytes((directory / "config.json").read_bytes())
    (final.parent / "run_config.yaml").write_text(
        "data:\n  synthetic: {num_patients: 10}\n  image_size: 64\n  paired_batch_size: 8\n"
        "optim: {lr: 0.001, schedule: cosine}\n"
    )
    text = render_model_card(final).text
    assert "Synthetic demo data" in text and "Training data: Synthetic" in text
    assert "| Training image size | 64 px |" in text and "| Batch per process | paired 8 |" in text
    assert "Training details: not provided" in text  # no training_summary.json, run settings still shown
    assert "No evaluation results were provided" in text
    # staged for upload (processor saved on top), the card still finds the run's settings; the code its
    # auto_map names comes along (staging refuses a checkpoint that would not load with trust_remote_code)
    for name in ["model.safetensors", *(p.name for p in directory.glob("*.py"))]:
        (final / name).write_bytes((directory / name).read_bytes())
    staged = prepare_upload_folder(tmp_path / "stage", folder=final, processor=_processor())
    text = (staged / "README.md").read_text()
    assert "Synthetic demo data" in text and "saved without a processor" not in text
    assert "run_config.yaml" not in {p.name for p in staged.iterdir()}


def test_paper_size_architectures_are_named(tmp_path):
    from retvlp import MaskedCLIPConfig

    for name, config in (("mc", MaskedCLIPConfig()), ("kf", KeepFitConfig())):
        (tmp_path / name).mkdir()
        config.to_json_file(tmp_path / name / "config.json")
    text = render_model_card(tmp_path / "mc").text
    assert "ViT-L/16 (width 1024, depth 24, 16 heads, MLP 4096), 224×224 px input" in text
    assert "BERT (BERT-base size)" in text and "λ_clip = 0.01, λ_mfd = 0.01" in text
    text = render_model_card(tmp_path / "kf").text
    assert "ResNet-50 (bottleneck blocks, depths [3, 4, 6, 3]" in text
    assert "K×D = 16384×256" in text and "λ1 = 100, λ2 = 10000" in text


def test_unknown_model_type_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"'bert'.*keepfit, maskedclip"):
        render_model_card(tmp_path)


# ------------------------------------------------------------------------------------------------------ hub


def test_push_model_and_processor_in_one_commit(maskedclip, tmp_path):
    model, processor, _, results = maskedclip
    fake = FakeHfApi()
    out = push_to_hub(
        "me/tiny-maskedclip",
        model=model,
        processor=processor,
        private=True,
        api=fake,
        card_kwargs={"evaluation": results},
    )
    assert out == "commit-info"
    assert fake.names() == ["create_repo", "upload_folder"]
    create, upload = fake.calls[0][1], fake.calls[1][1]
    assert create == {
        "repo_id": "me/tiny-maskedclip",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    assert upload["repo_id"] == "me/tiny-maskedclip" and upload["repo_type"] == "model"
    assert upload["revision"] is None and "MaskedCLIP" in upload["commit_message"]
    files = set(fake.uploaded)
    assert {"config.json", "model.safetensors", "README.md"} | REMOTE_CODE | PROCESSOR_FILES <= files
    config = json.loads(fake.text("config.json"))
    assert config["auto_map"]["AutoModel"] == "modeling_maskedclip.MaskedCLIPModel"
    card = fake.card(tmp_path)
    assert len(card.data.eval_results) == NUM_PRETRAINED_METRICS
    assert 'AutoProcessor.from_pretrained("me/tiny-maskedclip")' in card.text
    assert not fake.folder_path.exists()  # the staging directory is cleaned up


def test_push_checkpoint_folder_leaves_training_artefacts_out(maskedclip, tmp_path):
    _, _, directory, _ = maskedclip
    fake = FakeHfApi()
    push_to_hub("me/tiny", folder=directory, api=fake, revision="v1", commit_message="release")
    assert fake.names() == ["create_repo", "create_branch", "upload_folder"]
    assert fake.calls[-1][1]["revision"] == "v1" and fake.calls[-1][1]["commit_message"] == "release"
    files = set(fake.uploaded)
    assert {"config.json", "model.safetensors", "training_summary.json", "README.md"} | REMOTE_CODE <= files
    assert PROCESSOR_FILES <= files
    assert not any(name.split("/")[0] in TRAINING_ARTEFACTS for name in files), files
    card = fake.card(tmp_path)
    assert "| Optimizer steps | 6 |" in card.text and "maskedclip" in card.data.tags
    assert (directory / "optimizer.bin").exists()  # the source folder is untouched


def test_prepare_upload_folder_with_custom_card_and_keepfit(keepfit_dir, tmp_path):
    staged = prepare_upload_folder(tmp_path / "a", folder=keepfit_dir, card="---\nlicense: mit\n---\n# hi\n")
    assert (staged / "README.md").read_text() == "---\nlicense: mit\n---\n# hi\n"
    assert {"modeling_keepfit.py", "configuration_keepfit.py", "model.safetensors"} <= set(
        p.name for p in staged.iterdir()
    )
    staged = prepare_upload_folder(tmp_path / "b", folder=keepfit_dir)
    assert "KeepFIT V2" in (staged / "README.md").read_text()
    with pytest.raises(ValueError, match="not empty"):
        prepare_upload_folder(tmp_path / "b", folder=keepfit_dir)
    with pytest.raises(ValueError, match="exactly one"):
        prepare_upload_folder(tmp_path / "c")


def test_folder_without_weights_is_refused(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty_run.*config\.json and model\.safetensors"):
        prepare_upload_folder(tmp_path / "stage1", folder=empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "maskedclip"}))
    (empty / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"empty_run.*missing model\.safetensors"):
        push_to_hub("me/x", folder=empty, api=FakeHfApi())
    adapter = tmp_path / "adapter_only_config"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        prepare_upload_folder(tmp_path / "stage2", folder=adapter)


def test_push_lora_adapter_in_one_commit(lora_model, tmp_path):
    adapter_dir = tmp_path / "lora"
    lora_model.save_pretrained(adapter_dir)
    lora_results = {
        "dataset": RESULTS["dataset"],
        "results": [
            _row("pretrained", "lora", {"roc_auc": (0.9, 0.01), "pr_auc": (0.8, 0.02)}, fraction=0.1)
        ],
    }
    fake = FakeHfApi()
    out = push_adapter_to_hub(
        "me/tiny-lora",
        adapter_dir=adapter_dir,
        base_model="me/tiny-maskedclip",
        api=fake,
        card_kwargs={"evaluation": lora_results},
    )
    assert out == "commit-info" and fake.names() == ["create_repo", "upload_folder"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(fake.uploaded)
    assert not any(name.endswith(".bin") for name in fake.uploaded)
    uploaded_config = json.loads(fake.text("adapter_config.json"))
    assert uploaded_config["base_model_name_or_path"] == "me/tiny-maskedclip"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    card = fake.card(tmp_path)
    assert card.data.library_name == "peft" and card.data.base_model == "me/tiny-maskedclip"
    assert "lora" in card.data.tags
    assert sorted(r.metric_value for r in card.data.eval_results) == [0.8, 0.9]
    assert "ROC-AUC (LoRA fine-tuning, 10% labels)" in {r.metric_name for r in card.data.eval_results}
    text = card.text
    assert "PeftModel.from_pretrained" in text and "num_labels=3" in text
    assert "`q_proj`, `v_proj`" in text and "classifier" in text
    assert "not a medical device" in text.lower() and "## Limitations and biases" in text

    # Straight from the in-memory PeftModel, it is staged as a portable adapter (classifier config + code +
    # image processor: tests/test_portable_artifacts.py), which this one, with LABEL_n classes and no image
    # processor, is not: refused before anything is uploaded.
    fake = FakeHfApi()
    with pytest.raises(ValueError, match="no class names"):
        push_adapter_to_hub("me/tiny-lora", peft_model=lora_model, base_model="me/tiny-maskedclip", api=fake)
    assert fake.names() == []
    assert (
        lora_model.peft_config["default"].base_model_name_or_path is None
    )  # the caller's model is untouched


def test_render_adapter_card_needs_a_base_model(lora_model, tmp_path):
    lora_model.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="base_model"):
        render_adapter_card(tmp_path / "lora")
    card = render_adapter_card(tmp_path / "lora", base_model="me/base")
    assert card.data.base_model == "me/base" and card.data.eval_results is None


def test_offline_guard_raises_before_staging(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "does-not-exist"  # staging it would raise FileNotFoundError instead
    with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE=1: unset it to push"):
        push_to_hub("me/x", folder=missing)
    with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE=1: unset it to push"):
        push_adapter_to_hub("me/x", adapter_dir=missing, base_model="me/base")


def test_card_shows_one_evidence_map_when_the_evaluation_drew_them(maskedclip, tmp_path):
    """`retvlp evaluate --maps` wrote evidence/<model>/*.png next to results.json: the staged card shows the
    first correct one (copied as evidence_map.png), before "## Intended use" (issue 27 item 5)."""
    from PIL import Image

    _, _, directory, results = maskedclip
    evaluation = tmp_path / "eval"
    maps = evaluation / "evidence" / "pretrained"
    maps.mkdir(parents=True)
    (evaluation / "results.json").write_bytes(Path(results).read_bytes())
    for name, value in (("normal_wrong_0", 10), ("amd_correct_0", 200)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(maps / f"{name}.png")
    staged = push_to_hub(
        "me/tiny",
        folder=directory,
        card_kwargs={"evaluation": str(evaluation / "results.json"), "evaluated_model": "pretrained"},
        dry_run=tmp_path / "staged",
    )
    assert (staged / "evidence_map.png").read_bytes() == (maps / "amd_correct_0.png").read_bytes()
    card = (staged / "README.md").read_text()
    assert "![evidence map: amd_correct_0](evidence_map.png)" in card
    assert "*amd* that it classified correctly" in card
    assert card.index("## Evidence map") < card.index("## Intended use")
    # Without maps the card has no such section.
    plain = push_to_hub(
        "me/tiny", folder=directory, card_kwargs={"evaluation": str(results)}, dry_run=tmp_path / "plain"
    )
    assert "## Evidence map" not in (plain / "README.md").read_text()
    assert not (plain / "evidence_map.png").exists()
