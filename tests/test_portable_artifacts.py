"""Every fine-tuned classifier and LoRA adapter the package writes is portable, and `retvlp push` publishes it.

Portable: config with `auto_map` and the real class names, exactly the code files its classes import, an image
processor whose `auto_map` names only files of the folder, a model card reporting its own results; it loads with
the Auto classes after `import retvlp`, with `trust_remote_code=True` where retvlp cannot be imported, and (a
classifier) through `pipeline("image-classification")`. Offline, tiny models, a fake HfApi.
"""

import builtins
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, run_without_retvlp
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline
from transformers.dynamic_module_utils import get_relative_imports

import retvlp.hub
from retvlp import FundusImageProcessor, KeepFitConfig, KeepFitModel, MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.cli import main
from retvlp.evaluation.data import cache_images, geometry_of, normalization_of, read_labelled_records
from retvlp.evaluation.finetune import FinetuneSettings, finetune
from retvlp.evaluation.runner import EvaluationSettings, evaluate_models
from retvlp.hub import folder_kind, portability_problems, prepare_upload_folder, push_to_hub
from retvlp.tokenization import tiny_tokenizer

TINY_FINETUNE = dict(max_steps=2, batch_size=8, eval_batch_size=16, lr=1e-3, lora_dropout=0.0)
KEEPFIT_CONFIG = dict(
    vision_config={
        "model_type": "resnet",
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 32, 64],
        "depths": [1, 1, 1, 1],
        "layer_type": "bottleneck",
    },
    text_config={
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "vocab_size": 300,
    },
    projection_dim=16,
    codebook_size=64,
    code_dim=8,
)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny released MaskedCLIP: its processor_config.json nests an image processor whose `auto_map` also
    names processing_maskedclip.py, the entry that must not follow the image processor into a classifier."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("release") / "final"
    MaskedCLIPModel(make_tiny_config()).save_pretrained(directory)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="module")
def evaluated(checkpoint, synthetic, tmp_path_factory):
    """`evaluate_models` with full and LoRA fine-tuning of the checkpoint and of its random-init baseline."""
    output = tmp_path_factory.mktemp("evaluation")
    settings = EvaluationSettings(
        tasks=("finetune", "lora"),
        fractions=(1.0,),
        seeds=(0,),
        finetune=FinetuneSettings(**TINY_FINETUNE),
        cache_dir=str(output / "cache"),
        show_progress=False,
        bootstrap=20,  # calibration stays on: the saved classifier and adapter get their calibration.json
    )
    results = evaluate_models(
        {"maskedclip": str(checkpoint)},
        [synthetic.paired, synthetic.categorical, synthetic.test],
        settings=settings,
        random_init=True,
        output_dir=output,
    )
    finetuned = output / "finetuned"
    return {
        "classes": results["dataset"]["classes"],
        "results_json": output / "results.json",
        "classifier": finetuned / "maskedclip-finetune-fraction1-seed0" / "model",
        "adapter": finetuned / "maskedclip-lora-fraction1-seed0" / "adapter",
        "random_adapter": finetuned / "random_init-lora-fraction1-seed0" / "adapter",
        "random_base": finetuned / "random_init-lora-fraction1-seed0" / "base",
    }


@pytest.fixture(scope="module")
def data(synthetic, tmp_path_factory):
    labelled = read_labelled_records([synthetic.paired, synthetic.categorical, synthetic.test])
    processor = FundusImageProcessor(size=32)
    store = cache_images(
        labelled, geometry_of(processor), cache_dir=str(tmp_path_factory.mktemp("cache")), show_progress=False
    )
    mean, std = normalization_of(processor)
    indices = np.arange(len(labelled))
    return labelled, store, mean, std, indices[: len(indices) * 3 // 4], indices[len(indices) * 3 // 4 :]


@pytest.fixture(scope="module")
def lora_run(checkpoint, data, tmp_path_factory):
    """A LoRA run started from a RELATIVE checkpoint path; its trained model is the reference output."""
    import os

    labelled, store, mean, std, train, test = data
    output = tmp_path_factory.mktemp("lora")
    settings = FinetuneSettings(method="lora", seed=3, **TINY_FINETUNE)
    cwd = os.getcwd()
    os.chdir(checkpoint.parent)
    try:
        result = finetune(
            "final", labelled, store, mean, std, train, test, settings, output_dir=output, show_progress=False
        )
    finally:
        os.chdir(cwd)
    return result


@pytest.fixture(scope="module")
def keepfit_runs(data, tmp_path_factory):
    labelled, store, mean, std, train, test = data
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("keepfit") / "final"
    KeepFitModel(KeepFitConfig(**KEEPFIT_CONFIG)).save_pretrained(base)
    processor = FundusImageProcessor(size=32, pad_to_square=True)
    runs = {}
    for method in ("full", "lora"):
        settings = FinetuneSettings(method=method, **TINY_FINETUNE)
        runs[method] = finetune(
            base,
            labelled,
            store,
            mean,
            std,
            train,
            test,
            settings,
            output_dir=base.parent / method,
            image_processor=processor,
            show_progress=False,
        )
    return runs


def _image(value=120):
    return Image.fromarray(np.full((40, 50, 3), value, dtype=np.uint8))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _imported_code(folder: Path) -> set[str]:
    """The code files the folder's `auto_map` classes need: their modules and, transitively, their relative
    imports."""
    pending = []
    for name in ("config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            for ref in (_json(folder / name).get("auto_map") or {}).values():
                pending.append(ref.rsplit(".", 1)[0])
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending += get_relative_imports(str(folder / f"{module}.py"))
    return {f"{module}.py" for module in seen}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_portable(folder: Path, classes: list[str], model_class: str):
    config = _json(folder / "config.json")
    assert config["id2label"] == {str(i): name for i, name in enumerate(classes)}
    assert config["label2id"] == {name: i for i, name in enumerate(classes)}
    assert config["architectures"] == [model_class]
    assert config["auto_map"]["AutoModelForImageClassification"].endswith(f".{model_class}")
    assert "AutoConfig" in config["auto_map"]
    processor = _json(folder / "preprocessor_config.json")
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_fundus.FundusImageProcessor"}
    assert not (folder / "processor_config.json").exists()
    assert {p.name for p in folder.glob("*.py")} == _imported_code(folder)
    assert portability_problems(folder) == []
    assert (folder / "README.md").is_file() and (folder / "training_summary.json").is_file()


class FakeHfApi:
    """Records the calls; `upload_folder` snapshots the staged folder before it is deleted."""

    def __init__(self, **kwargs):
        self.calls = []
        self.uploaded = None

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        self.uploaded = _snapshot(Path(kwargs["folder_path"]))
        return "commit-info"


# ---------------------------------------------------------------------------------------- classifier folders


def test_finetuned_classifier_folder_is_portable(evaluated, checkpoint):
    folder = evaluated["classifier"]
    _assert_portable(folder, evaluated["classes"], "MaskedCLIPForImageClassification")
    assert folder_kind(folder) == "classifier"
    assert {"model.safetensors", "eval_results.json"} <= {p.name for p in folder.iterdir()}
    assert "processing_maskedclip.py" not in {p.name for p in folder.iterdir()}
    summary = _json(folder / "training_summary.json")
    assert summary["task"] == "finetune" and summary["model"] == "maskedclip" and summary["fraction"] == 1.0
    assert summary["base_model"] == str(checkpoint.resolve())
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    assert card.data.eval_results and {r.metric_config for r in card.data.eval_results} == {
        "finetune/fraction=1"
    }
    assert all(r.metric_args["seeds"] == [0] for r in card.data.eval_results)
    assert all(name in card.text for name in evaluated["classes"])
    assert 'pipeline("image-classification"' in card.text and "trust_remote_code=True" in card.text


def test_keepfit_classifier_and_adapter_are_portable(keepfit_runs, data):
    classes = data[0].class_names
    classifier = keepfit_runs["full"].saved_to
    _assert_portable(classifier, classes, "KeepFitForImageClassification")
    assert "modeling_keepfit.py" in {p.name for p in classifier.iterdir()}
    assert _json(classifier / "preprocessor_config.json")["pad_to_square"] is True
    loaded = AutoModelForImageClassification.from_pretrained(classifier).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, keepfit_runs["full"].model.eval()(pixels).logits)
    adapter = keepfit_runs["lora"].saved_to
    _assert_portable(adapter, classes, "KeepFitForImageClassification")
    assert not (adapter / "model.safetensors").exists()
    assert Path(_json(adapter / "adapter_config.json")["base_model_name_or_path"]).is_absolute()


def test_classifier_loads_with_auto_classes_and_the_pipeline_names_the_classes(evaluated):
    folder, classes = evaluated["classifier"], evaluated["classes"]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor) is FundusImageProcessor and processor.size == 32
    classifier = pipeline("image-classification", model=str(folder))
    scores = classifier(_image(), top_k=len(classes))
    assert sorted(s["label"] for s in scores) == sorted(classes)
    with torch.no_grad():
        probabilities = model(**processor(_image())).logits.softmax(-1)[0]
    by_label = {s["label"]: s["score"] for s in scores}
    assert [by_label[name] for name in classes] == pytest.approx(probabilities.tolist(), abs=1e-5)


def test_pipeline_on_a_classifier_does_not_ask_to_run_remote_code(evaluated, monkeypatch):
    """With retvlp imported, the local classes serve every part of the pipeline: nothing may prompt for
    trust_remote_code (transformers asks on stdin, and swallows the failure when stdin is closed)."""
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    pipeline("image-classification", model=str(evaluated["classifier"]))
    assert prompts == [], prompts[0][0] if prompts else ""


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockRetvlp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "retvlp" or name.startswith("retvlp."):
                raise ImportError(f"{name} is blocked: only the folder's own code may run")

    sys.meta_path.insert(0, BlockRetvlp())
    import numpy as np, torch
    from PIL import Image
    from peft import PeftModel
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline


    def classifier(folder):
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        image = Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8))
        with torch.no_grad():
            logits = model(**processor(image)).logits
        scores = pipeline("image-classification", model=folder, trust_remote_code=True)(image, top_k=100)
        return {"model": type(model).__module__ + "." + type(model).__name__,
                "processor": type(processor).__module__, "logits": logits.tolist(),
                "labels": sorted(s["label"] for s in scores)}


    def adapter(folder, pixels_file):
        base_path = json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        base = AutoModelForImageClassification.from_pretrained(base_path, config=config, trust_remote_code=True)
        model = PeftModel.from_pretrained(base, folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            logits = model(pixel_values=torch.load(pixels_file)).logits
        return {"model": type(model.get_base_model()).__module__, "processor": type(processor).__module__,
                "logits": logits.tolist(), "labels": [config.id2label[i] for i in range(len(config.id2label))]}


    jobs = json.loads(sys.argv[1])
    print(json.dumps({key: globals()[job](*args) for key, (job, args) in jobs.items()}))
    """
)
ADAPTER_PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def remote_loads(evaluated, keepfit_runs, lora_run, tmp_path_factory):
    """Copies of the two classifiers and the adapter loaded in one interpreter where retvlp cannot be imported
    (one start-up of torch, transformers and peft instead of three); what it reported, per artifact."""
    tmp_path = tmp_path_factory.mktemp("remote")
    jobs = {}
    for family, source in (
        ("maskedclip", evaluated["classifier"]),
        ("keepfit", keepfit_runs["full"].saved_to),
    ):
        jobs[family] = ("classifier", [str(shutil.copytree(source, tmp_path / family))])
    torch.save(ADAPTER_PIXELS, tmp_path / "pixels.pt")
    copy = shutil.copytree(lora_run.saved_to, tmp_path / "adapter")
    jobs["adapter"] = ("adapter", [str(copy), str(tmp_path / "pixels.pt")])
    return run_without_retvlp(REMOTE_SCRIPT, tmp_path, json.dumps(jobs))


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_classifier_loads_with_remote_code_where_retvlp_is_not_importable(
    family, evaluated, keepfit_runs, remote_loads
):
    source = evaluated["classifier"] if family == "maskedclip" else keepfit_runs["full"].saved_to
    report = remote_loads[family]
    assert "retvlp" not in report["model"] and "retvlp" not in report["processor"]
    model = AutoModelForImageClassification.from_pretrained(source).eval()
    with torch.no_grad():
        expected = model(**AutoImageProcessor.from_pretrained(source)(_image())).logits
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=1e-5)
    classes = list(AutoConfig.from_pretrained(source).id2label.values())
    assert report["labels"] == sorted(classes)


# ------------------------------------------------------------------------------------------------- adapters


def test_lora_adapter_folder_is_portable_and_names_an_absolute_base(evaluated, checkpoint):
    folder = evaluated["adapter"]
    _assert_portable(folder, evaluated["classes"], "MaskedCLIPForImageClassification")
    assert folder_kind(folder) == "adapter" and not (folder / "model.safetensors").exists()
    assert _json(folder / "adapter_config.json")["base_model_name_or_path"] == str(checkpoint.resolve())
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft"
    assert {r.metric_config for r in card.data.eval_results} == {"lora/fraction=1"}
    assert "full fine-tuning" not in card.text.split("## Evaluation")[1]
    assert "import_allowlist" in card.text and "AutoConfig.from_pretrained" in card.text


def test_relative_checkpoint_path_is_stored_absolute(lora_run, checkpoint):
    stored = _json(lora_run.saved_to / "adapter_config.json")["base_model_name_or_path"]
    assert stored == str(checkpoint.resolve())


def test_adapter_loads_as_its_card_says_and_merges_with_class_names(lora_run, data):
    """The documented ways: PeftModel on a base built from the adapter's config, and AutoPeftModel with the
    import allow-list and the class names; merge_and_unload keeps the names."""
    from peft import AutoPeftModel, PeftModel

    adapter = lora_run.saved_to
    classes = data[0].class_names
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = lora_run.model.eval()(pixel_values=pixels).logits
    config = AutoConfig.from_pretrained(adapter)
    base_path = _json(adapter / "adapter_config.json")["base_model_name_or_path"]
    base = AutoModelForImageClassification.from_pretrained(base_path, config=config)
    model = PeftModel.from_pretrained(base, adapter).eval()
    auto = AutoPeftModel.from_pretrained(
        adapter, import_allowlist=["retvlp"], id2label=config.id2label, label2id=config.label2id
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected)
        torch.testing.assert_close(auto(pixel_values=pixels).logits, expected)
        merged = model.merge_and_unload().eval()
        torch.testing.assert_close(merged(pixel_values=pixels).logits, expected, rtol=1e-5, atol=1e-5)
    assert [merged.config.id2label[i] for i in range(len(classes))] == list(classes)
    assert type(AutoImageProcessor.from_pretrained(adapter)) is FundusImageProcessor


def test_adapter_loads_with_remote_code_where_retvlp_is_not_importable(lora_run, data, remote_loads):
    report = remote_loads["adapter"]
    assert "retvlp" not in report["model"] and "retvlp" not in report["processor"]
    with torch.no_grad():
        expected = lora_run.model.eval()(pixel_values=ADAPTER_PIXELS).logits
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=1e-5)
    assert report["labels"] == list(data[0].class_names)


def test_random_init_lora_adapter_points_at_its_saved_base(evaluated):
    from peft import PeftModel

    adapter, base = evaluated["random_adapter"], evaluated["random_base"]
    assert _json(adapter / "adapter_config.json")["base_model_name_or_path"] == str(base.resolve())
    _assert_portable(base, evaluated["classes"], "MaskedCLIPForImageClassification")
    assert _json(base / "training_summary.json")["role"] == "lora-base"
    assert ModelCard.load(base / "README.md").data.eval_results is None  # an untrained head has no results
    model = PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(base, config=AutoConfig.from_pretrained(adapter)),
        adapter,
    )
    assert model.config.id2label[0] == evaluated["classes"][0]


# ----------------------------------------------------------------------------------------------------- push


def test_push_of_a_classifier_uploads_the_portable_folder_with_its_own_results(evaluated, tmp_path):
    fake = FakeHfApi()
    push_to_hub(
        "me/tiny-classifier",
        folder=evaluated["classifier"],
        api=fake,
        card_kwargs={"evaluation": evaluated["results_json"]},
    )
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
    assert "classifier" in fake.calls[-1][1]["commit_message"]
    source = {p.name for p in evaluated["classifier"].iterdir()}
    assert set(fake.uploaded) == source
    (tmp_path / "README.md").write_bytes(fake.uploaded["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    # results.json holds every protocol of both models; the card keeps this classifier's row and the baseline
    assert {r.metric_config for r in card.data.eval_results} == {"finetune/fraction=1"}
    table = card.text.split("## Evaluation")[1]
    assert "(this model)" in table and "random_init (baseline)" in table and "LoRA" not in table
    assert 'pipeline("image-classification", model="me/tiny-classifier")' in card.text


@pytest.mark.parametrize("kind", ["adapter", "classifier"])
def test_cli_dry_run_stages_byte_for_byte_what_the_push_uploads(
    kind, evaluated, tmp_path, monkeypatch, capsys
):
    fakes = []
    monkeypatch.setattr(retvlp.hub, "HfApi", lambda **kwargs: fakes.append(FakeHfApi()) or fakes[-1])
    monkeypatch.setattr(retvlp.hub, "_offline", lambda: False)
    argv = [
        "push",
        str(evaluated[kind]),
        "--repo-id",
        "me/tiny",
        "--evaluation",
        str(evaluated["results_json"]),
    ]
    argv += ["--base-model", "me/tiny-maskedclip"]
    assert main([*argv, "--dry-run", str(tmp_path / "dry")]) == 0
    assert "nothing uploaded" in capsys.readouterr().out and not fakes
    assert main(argv) == 0
    staged = _snapshot(tmp_path / "dry")
    assert staged == fakes[0].uploaded
    if kind == "adapter":
        adapter_config = json.loads(staged["adapter_config.json"])
        assert adapter_config["base_model_name_or_path"] == "me/tiny-maskedclip"
        source = _json(evaluated["adapter"] / "adapter_config.json")
        assert source["base_model_name_or_path"] != "me/tiny-maskedclip"  # only the staged copy changes
    (tmp_path / "README.md").write_bytes(staged["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "me/tiny-maskedclip"
    task = "lora" if kind == "adapter" else "finetune"
    assert {r.metric_config for r in card.data.eval_results} == {f"{task}/fraction=1"}


def test_cli_refuses_an_adapter_without_a_hub_base(evaluated, tmp_path, capsys):
    argv = ["push", str(evaluated["adapter"]), "--repo-id", "me/x", "--dry-run", str(tmp_path / "d")]
    assert main(argv) == 2 and "--base-model" in capsys.readouterr().err
    assert not any((tmp_path / "d").iterdir())  # nothing half-staged: the same DIR takes the corrected run
    assert main([*argv, "--base-model", "me/base"]) == 0


def test_staging_drops_a_stale_image_processor_entry_and_refuses_folders_that_would_not_load(
    evaluated, tmp_path
):
    # An image processor re-saved from a processor's files (e.g. by an HF Trainer) names processing_maskedclip.py.
    stale = shutil.copytree(evaluated["classifier"], tmp_path / "stale")
    processor = _json(stale / "preprocessor_config.json")
    processor["auto_map"]["AutoProcessor"] = "processing_maskedclip.MaskedCLIPProcessor"
    (stale / "preprocessor_config.json").write_text(json.dumps(processor))
    assert any("processing_maskedclip.py" in problem for problem in portability_problems(stale))
    staged = prepare_upload_folder(tmp_path / "staged", folder=stale)
    assert _json(staged / "preprocessor_config.json")["auto_map"] == {
        "AutoImageProcessor": "image_processing_fundus.FundusImageProcessor"
    }
    assert portability_problems(staged) == []

    no_code = shutil.copytree(evaluated["classifier"], tmp_path / "no_code")
    (no_code / "loss_maskedclip.py").unlink()
    with pytest.raises(ValueError, match=r"modeling_maskedclip\.py imports \.loss_maskedclip"):
        prepare_upload_folder(tmp_path / "s2", folder=no_code)

    no_processor = shutil.copytree(evaluated["classifier"], tmp_path / "no_processor")
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="no image processor"):
        prepare_upload_folder(tmp_path / "s3", folder=no_processor)

    unnamed = shutil.copytree(evaluated["classifier"], tmp_path / "unnamed")
    config = _json(unnamed / "config.json")
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(config["id2label"]))}
    (unnamed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no class names"):
        prepare_upload_folder(tmp_path / "s4", folder=unnamed)


def test_push_of_a_live_peft_model_stages_the_portable_adapter(lora_run, data, tmp_path):
    """push_adapter_to_hub(peft_model=...) stages what `retvlp evaluate` saves: PEFT files + the classifier's
    config with the class names, its code and the image processor; the base is the given Hub id."""
    fake = FakeHfApi()
    retvlp.hub.push_adapter_to_hub(
        "me/tiny-adapter",
        peft_model=lora_run.model,
        processor=FundusImageProcessor(size=32),
        base_model="me/tiny-maskedclip",
        api=fake,
    )
    uploaded = set(fake.uploaded)
    assert {"adapter_config.json", "config.json", "preprocessor_config.json", "README.md"} <= uploaded
    assert "modeling_maskedclip.py" in uploaded and "model.safetensors" not in uploaded
    config = json.loads(fake.uploaded["config.json"])
    assert list(config["id2label"].values()) == data[0].class_names
    assert json.loads(fake.uploaded["adapter_config.json"])["base_model_name_or_path"] == "me/tiny-maskedclip"
