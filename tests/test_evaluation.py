"""The evaluation harness: features, zero-shot, linear probe, splits in use, reports, CLI, any dual encoder."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny_maskedclip, spec_within

from retvlp import MaskedCLIPProcessor
from retvlp.cli import main
from retvlp.evaluation.data import (
    cache_images,
    drop_bad_images,
    geometry_of,
    normalization_of,
    read_labelled_records,
)
from retvlp.evaluation.features import (
    class_prototypes,
    clear_feature_cache,
    encode_images,
    extract_image_features,
    model_fingerprint,
)
from retvlp.evaluation.linear_probe import linear_probe_probabilities
from retvlp.evaluation.runner import EvaluationSettings, evaluate_models
from retvlp.evaluation.zero_shot import zero_shot_probabilities
from retvlp.maskedclip import FundusImageProcessor
from retvlp.tokenization import tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_maskedclip") / "final"
    return (*save_tiny_maskedclip(directory), directory)


@pytest.fixture(scope="module")
def labelled(synthetic):
    return read_labelled_records([synthetic.paired, synthetic.categorical, synthetic.test])


def _store(labelled, processor, tmp_path):
    return cache_images(
        labelled, geometry_of(processor.image_processor), cache_dir=str(tmp_path), show_progress=False
    )


# ----------------------------------------------------------------------------------------------- data
def test_labelled_records_count_and_list_what_they_leave_out(synthetic, tmp_path):
    manifest = tmp_path / "labels.csv"
    rows = ["image,label,patient_id"]
    rows += [
        f"{synthetic.root / 'images' / p.name},{label},P{i}"
        for i, (p, label) in enumerate(
            zip(
                sorted((synthetic.root / "images").glob("*.png"))[:6],
                ["normal", "glaucoma", "", "cataract", "glaucoma", "bogus"],
                strict=True,
            )
        )
    ]
    manifest.write_text("\n".join(rows) + "\n")
    records = read_labelled_records(spec_within(manifest, synthetic.root), ["normal", "glaucoma", "cataract"])
    assert len(records) == 4
    assert records.excluded == {"unlabelled": 1, "unknown_label": 1}
    assert {e["reason"] for e in records.excluded_examples} == {"unlabelled", "unknown_label"}
    assert all(e["source"] and e["row"] for e in records.excluded_examples)
    assert records.targets.tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="at least 2 classes"):
        read_labelled_records(spec_within(manifest, synthetic.root), ["normal"])


def test_bad_images_are_counted_and_dropped_everywhere(synthetic, tmp_path):
    manifest = tmp_path / "broken.csv"
    images = sorted((synthetic.root / "images").glob("*.png"))[:4]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    lines = ["image,label,patient_id"] + [
        f"{p},{'normal' if i % 2 else 'glaucoma'},P{i}" for i, p in enumerate(images)
    ]
    lines.append(f"{broken},normal,P9")
    manifest.write_text("\n".join(lines) + "\n")
    records = read_labelled_records(spec_within(manifest, synthetic.root))
    store = _store(records, MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer()), tmp_path)
    kept, (narrowed,) = drop_bad_images(records, [store])
    assert len(kept) == 4 and kept.excluded == {"bad_image": 1}
    assert kept.excluded_examples[0]["image"].endswith("broken.png")
    assert narrowed.pixels(np.arange(4)).shape == (4, 32, 32, 3)


def test_multi_label_records_are_multi_hot(tmp_path, synthetic):
    image = sorted((synthetic.root / "images").glob("*.png"))[0]
    manifest = tmp_path / "ml.csv"
    manifest.write_text(f"image,label,patient_id\n{image},a|b,P1\n{image},b,P2\n{image},c,P3\n")
    records = read_labelled_records(spec_within(manifest, synthetic.root))
    assert records.multi_label
    assert records.targets.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    single = read_labelled_records(spec_within(manifest, synthetic.root), multi_label=False)
    assert len(single) == 2 and single.excluded == {"several_labels": 1}


# ----------------------------------------------------------------------------------------------- features
def test_one_pass_gives_the_models_own_embedding_and_probe_features(tiny_checkpoint):
    model, _, _ = tiny_checkpoint
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        probe, embeds = encode_images(model, pixels)
        expected_embeds = F.normalize(model.get_image_features(pixels).pooler_output, dim=-1)
        expected_probe = model.vision_model(pixels).last_hidden_state[:, 1:].mean(dim=1)
    torch.testing.assert_close(embeds, expected_embeds)
    torch.testing.assert_close(probe, expected_probe)


def test_features_are_extracted_once_and_cached_on_disk(tiny_checkpoint, labelled, tmp_path, monkeypatch):
    model, processor, _ = tiny_checkpoint
    store = _store(labelled, processor, tmp_path)
    mean, std = normalization_of(processor.image_processor)
    clear_feature_cache()
    calls = []
    original = model.vision_model.forward
    monkeypatch.setattr(model.vision_model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = extract_image_features(
        model, store, mean, std, batch_size=16, cache_dir=tmp_path, show_progress=False
    )
    batches = len(calls)
    assert batches == -(-len(labelled) // 16)
    again = extract_image_features(
        model, store, mean, std, batch_size=16, cache_dir=tmp_path, show_progress=False
    )
    assert len(calls) == batches and again is first  # memory cache
    clear_feature_cache()
    from_disk = extract_image_features(model, store, mean, std, cache_dir=tmp_path, show_progress=False)
    assert len(calls) == batches  # disk cache: still no forward
    np.testing.assert_array_equal(from_disk.embeds, first.embeds)
    assert list((tmp_path / "features").glob("*.safetensors"))
    # The features are those of a plain batched forward of the processor-normalised pixels.
    pixels = torch.from_numpy(store.pixels(np.arange(5)).astype(np.float32)).permute(0, 3, 1, 2) / 255
    pixels = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        _, expected = encode_images(model, pixels)
    np.testing.assert_allclose(first.embeds[:5], expected.numpy(), atol=1e-5)


def test_fingerprint_follows_the_weights(tiny_checkpoint):
    model, _, _ = tiny_checkpoint
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.visual_projection.weight[0, 0] += 1.0
    try:
        assert model_fingerprint(model) != before
    finally:
        with torch.no_grad():
            model.visual_projection.weight[0, 0] -= 1.0


# ----------------------------------------------------------------------------------------------- protocols
def test_zero_shot_matches_a_hand_computed_prompt_ensemble(tiny_checkpoint):
    model, processor, _ = tiny_checkpoint
    prompts = [["a photo of glaucoma", "glaucoma with cupping"], ["a normal fundus"]]
    prototypes = class_prototypes(model, processor.tokenizer, prompts, max_length=16)
    expected = []
    with torch.no_grad():
        for group in prompts:
            rows = [
                F.normalize(
                    model.get_text_features(**processor.tokenizer([p], return_tensors="pt")).pooler_output,
                    dim=-1,
                )
                for p in group
            ]
            expected.append(F.normalize(torch.cat(rows).mean(0), dim=-1))
    np.testing.assert_allclose(prototypes, torch.stack(expected).numpy(), atol=1e-5)
    images = F.normalize(torch.randn(4, prototypes.shape[1]), dim=-1).numpy()
    probabilities = zero_shot_probabilities(images, prototypes, 20.0)
    logits = 20.0 * images @ prototypes.T
    np.testing.assert_allclose(
        probabilities, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-6
    )


def test_linear_probe_equals_scikit_learn_on_the_same_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 5))
    labels = rng.integers(0, 3, 60)
    train[np.arange(60), labels] += 2
    test = rng.normal(size=(20, 5))
    ours = linear_probe_probabilities(train, labels, test, num_classes=4, seed=0)
    scaler = StandardScaler().fit(train)
    reference = LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000).fit(
        scaler.transform(train), labels
    )
    np.testing.assert_allclose(ours[:, :3], reference.predict_proba(scaler.transform(test)), atol=1e-6)
    assert (ours[:, 3] == 0).all()  # a class absent from the training rows


# ----------------------------------------------------------------------------------------------- harness
def _settings(tmp_path, **kwargs):
    defaults = dict(
        seeds=(0, 1),
        fractions=(0.25, 1.0),
        shots=(1, 2),
        cache_dir=str(tmp_path / "cache"),
        show_progress=False,
        # the trust figures have their own tests (test_eval_trust.py); here a few resamples exercise the path
        bootstrap=20,
        calibration_fraction=0.0,
    )
    return EvaluationSettings(**{**defaults, **kwargs})


def test_harness_runs_every_feature_protocol_and_writes_the_report(tiny_checkpoint, synthetic, tmp_path):
    _, _, directory = tiny_checkpoint
    results = evaluate_models(
        {"tiny": str(directory)},
        [synthetic.paired, synthetic.categorical],
        test_data=[synthetic.test],
        settings=_settings(tmp_path, tasks=("zero-shot", "few-shot", "linear-probe")),
        random_init=True,
        output_dir=tmp_path / "report",
    )
    rows = results["results"]
    assert {(r["model"], r["task"]) for r in rows} == {
        (m, t) for m in ("tiny", "random_init") for t in ("zero-shot", "few-shot", "linear-probe")
    }
    probe = [r for r in rows if r["task"] == "linear-probe" and r["model"] == "tiny"]
    assert [r["fraction"] for r in probe] == [0.25, 1.0]
    assert probe[0]["num_train"] < probe[1]["num_train"] == results["dataset"]["num_train"]
    assert len(probe[0]["metrics"]["roc_auc"]["values"]) == 2
    few = [r for r in rows if r["task"] == "few-shot" and r["model"] == "tiny"]
    assert {(r["method"], r["shots"]) for r in few} == {
        (m, s) for m in ("clip-adapter", "tip-adapter", "tip-adapter-f") for s in (1, 2)
    }
    report = tmp_path / "report"
    saved = json.loads((report / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(rows))
    assert "| tiny | linear-probe | 25 % labels |" in (report / "results.md").read_text()
    assert (report / "label_efficiency_roc_auc.png").stat().st_size > 1000
    assert list(report.glob("roc_tiny_zero-shot*.png")) and list((report / "predictions").glob("*.npz"))


def test_harness_split_keeps_patients_whole_and_refuses_leaks(tiny_checkpoint, synthetic, tmp_path):
    _, _, directory = tiny_checkpoint
    results = evaluate_models(
        {"tiny": str(directory)},
        [synthetic.paired, synthetic.categorical, synthetic.test],
        settings=_settings(tmp_path, tasks=("linear-probe",), seeds=(0,)),
    )
    assert results["dataset"]["test_split"].startswith("group-aware")
    assert results["dataset"]["num_test"] > 0
    with pytest.raises(ValueError, match="both the training data and the test data"):
        evaluate_models(
            {"tiny": str(directory)},
            [synthetic.paired, synthetic.categorical],
            test_data=[synthetic.categorical],
            settings=_settings(tmp_path, tasks=("linear-probe",)),
        )


def test_any_dual_encoder_runs_in_the_same_harness(synthetic, tmp_path):
    """transformers' CLIPModel (tiny, random) with a CLIP image processor and our tokenizer."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()

    class Processor:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )

    Processor.tokenizer = tokenizer
    results = evaluate_models(
        {"clip": (clip, Processor())},
        [synthetic.paired, synthetic.categorical],
        test_data=[synthetic.test],
        settings=_settings(tmp_path, tasks=("zero-shot", "linear-probe"), seeds=(0,)),
    )
    assert {r["task"] for r in results["results"]} == {"zero-shot", "linear-probe"}
    zero_shot = next(r for r in results["results"] if r["task"] == "zero-shot")
    assert 0.0 <= zero_shot["metrics"]["accuracy"]["mean"] <= 1.0


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_evaluate_writes_the_report(tiny_checkpoint, synthetic, tmp_path, capsys):
    _, _, directory = tiny_checkpoint
    code = main([
        "evaluate", "--bootstrap", "20", "--model", f"tiny={directory}", "--data", str(synthetic.paired), str(synthetic.categorical),
        "--test-data", str(synthetic.test), "--task", "zero-shot,linear-probe", "--seeds", "0",
        "--fractions", "0.5,1", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    assert "| tiny | zero-shot |" in capsys.readouterr().out
    assert (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--task", "bogus"], "Unknown task"),
        (["--task", "linear-probe", "--fractions", "0,1"], "fractions must be in"),
        (["--task", "linear-probe", "--seeds", "a"], "cannot read seed list"),
    ],
)
def test_cli_evaluate_usage_errors(tiny_checkpoint, synthetic, tmp_path, capsys, arguments, message):
    _, _, directory = tiny_checkpoint
    code = main(
        [
            "evaluate",
            "--bootstrap",
            "20",
            "--model",
            str(directory),
            "--data",
            str(synthetic.test),
            *arguments,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_evaluate_missing_data_is_a_usage_error(tiny_checkpoint, tmp_path, capsys):
    _, _, directory = tiny_checkpoint
    code = main(
        [
            "evaluate",
            "--bootstrap",
            "20",
            "--model",
            str(directory),
            "--data",
            str(tmp_path / "nope.csv"),
            "--task",
            "zero-shot",
        ]
    )
    assert code == 2 and "data not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- KeepFIT, multi-label
@pytest.fixture(scope="module")
def keepfit_checkpoint(tmp_path_factory):
    from test_modeling_keepfit import tiny_released

    from retvlp import KeepFitProcessor
    from retvlp.keepfit import keepfit_image_processor

    model = tiny_released(use_appearance_injection=False).eval()
    directory = tmp_path_factory.mktemp("tiny_keepfit") / "final"
    model.save_pretrained(directory)
    KeepFitProcessor(keepfit_image_processor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return model, directory


def test_keepfit_features_are_its_pooled_resnet_map_and_its_embedding(keepfit_checkpoint):
    model, _ = keepfit_checkpoint
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        probe, embeds = encode_images(model, pixels)
        output = model.get_image_features(pixels)
    torch.testing.assert_close(probe, output.last_hidden_state.mean(dim=(2, 3)))
    torch.testing.assert_close(embeds, F.normalize(output.pooler_output, dim=-1))


def test_keepfit_runs_every_protocol_including_finetune_and_lora(keepfit_checkpoint, synthetic, tmp_path):
    from retvlp.evaluation.finetune import FinetuneSettings

    _, directory = keepfit_checkpoint
    settings = _settings(
        tmp_path,
        tasks=("zero-shot", "linear-probe", "finetune", "lora"),
        seeds=(0,),
        fractions=(0.5, 1.0),
        finetune=FinetuneSettings(max_steps=2, batch_size=4),
    )
    results = evaluate_models(
        {"keepfit": str(directory)},
        [synthetic.paired, synthetic.categorical],
        test_data=[synthetic.test],
        settings=settings,
        output_dir=tmp_path / "report",
    )
    tasks = {(r["task"], r["fraction"]) for r in results["results"]}
    assert tasks == {("zero-shot", None)} | {
        (t, f) for t in ("linear-probe", "finetune", "lora") for f in (0.5, 1.0)
    }
    assert (
        tmp_path / "report" / "finetuned" / "keepfit-lora-fraction1-seed0" / "adapter" / "adapter_config.json"
    ).exists()
    assert (
        tmp_path / "report" / "finetuned" / "keepfit-finetune-fraction1-seed0" / "model" / "config.json"
    ).exists()


def test_multi_label_data_gets_multi_label_metrics(tiny_checkpoint, synthetic, tmp_path):
    from retvlp.evaluation.finetune import FinetuneSettings

    _, _, directory = tiny_checkpoint
    images = sorted((synthetic.root / "images").glob("*.png"))
    rng = np.random.default_rng(0)
    lines = ["image,label,patient_id"]
    for i, image in enumerate(images):
        labels = [c for c in ("glaucoma", "cataract", "normal") if rng.random() < 0.5] or ["normal"]
        lines.append(f"{image},{'|'.join(labels)},P{i // 2}")
    manifest = tmp_path / "multi.csv"
    manifest.write_text("\n".join(lines) + "\n")
    manifest = spec_within(manifest, synthetic.root)
    results = evaluate_models(
        {"tiny": str(directory)},
        manifest,
        settings=_settings(
            tmp_path, tasks=("zero-shot", "linear-probe", "finetune"), seeds=(0,), fractions=(1.0,),
            finetune=FinetuneSettings(max_steps=2, batch_size=4),
        ),
    )  # fmt: skip
    assert results["dataset"]["multi_label"]
    for row in results["results"]:
        assert "quadratic_kappa" not in row["metrics"] and "roc_auc" in row["metrics"], row["task"]
    with pytest.raises(ValueError, match="single-label"):
        evaluate_models({"tiny": str(directory)}, manifest, settings=_settings(tmp_path, tasks=("few-shot",)))
