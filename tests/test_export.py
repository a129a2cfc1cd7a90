"""`retvlp export`: each tower of a tiny MaskedCLIP and KeepFIT checkpoint as a torch.export program (and, with
the `export` extra installed, an ONNX graph) giving the eager model's embeddings; the zero-shot prototype matrix
and export.json let the image tower classify alone, without retvlp or transformers; bad requests are refused
with a clear message and exit code 2."""

import json
import sys
import textwrap

import numpy as np
import prewarmed
import pytest
import torch
from conftest import make_tiny_config

from retvlp import (
    FundusImageProcessor,
    KeepFitConfig,
    KeepFitForImageClassification,
    KeepFitModel,
    KeepFitProcessor,
    MaskedCLIPForImageClassification,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
)
from retvlp.cli import main
from retvlp.tokenization import tiny_tokenizer

KEEPFIT = dict(
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
        "vocab_size": 300,  # tiny_tokenizer()'s size
    },
    projection_dim=16,
    codebook_size=64,
    code_dim=8,
)
SIZES = {"maskedclip": 32, "keepfit": 48}
CLASSES = ["glaucoma", "diabetic retinopathy", "normal"]
ATOL = 1e-5


def _save(directory, model, processor_class, size):
    model.save_pretrained(directory)
    processor_class(FundusImageProcessor(size=size), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Released tiny checkpoints with their processors, by family."""
    root = tmp_path_factory.mktemp("export_checkpoints")
    torch.manual_seed(0)
    return {
        "maskedclip": _save(
            root / "maskedclip", MaskedCLIPModel(make_tiny_config()), MaskedCLIPProcessor, SIZES["maskedclip"]
        ),
        "keepfit": _save(
            root / "keepfit", KeepFitModel(KeepFitConfig(**KEEPFIT)), KeepFitProcessor, SIZES["keepfit"]
        ),
    }


def eager(directory):
    from transformers import AutoModel

    return AutoModel.from_pretrained(directory).eval()


def image_batch(family, batch=5, seed=3):
    size = SIZES[family]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text_batch(batch=4, length=11, seed=4):
    """Padded rows of other lengths than the export traced with."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 300, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        attention_mask[row, length - 2 * row :] = 0
    return input_ids, attention_mask


def expected_outputs(model, family):
    pixels = image_batch(family)
    input_ids, attention_mask = text_batch()
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return {"image": ((pixels,), image.numpy()), "text": ((input_ids, attention_mask), text.numpy())}


@pytest.fixture(scope="module")
def torch_exports(checkpoints, tmp_path_factory):
    """Both towers of both families exported with torch.export, the prototypes of CLASSES with them."""
    out = {}
    for family, directory in checkpoints.items():
        target = tmp_path_factory.mktemp(f"export_{family}")
        args = ["export", str(directory), "--tower", "image,text", "--classes", ",".join(CLASSES)]
        assert main([*args, "--output", str(target)]) == 0
        out[family] = target
    return out


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_the_exported_programs_give_the_eager_embeddings(checkpoints, torch_exports, family):
    directory = torch_exports[family]
    manifest = json.loads((directory / "export.json").read_text())
    for tower, (inputs, expected) in expected_outputs(eager(checkpoints[family]), family).items():
        program = torch.export.load(str(directory / manifest["towers"][tower]["file"]))
        with torch.no_grad():
            got = program.module()(*inputs).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        assert manifest["towers"][tower]["check"]["max_abs_difference"] <= ATOL


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_the_manifest_and_prototypes_classify_as_the_zero_shot_evaluation(checkpoints, torch_exports, family):
    from retvlp.evaluation.features import class_prototypes, logit_scale_of
    from retvlp.evaluation.zero_shot import prompt_ensembles, zero_shot_probabilities

    directory = torch_exports[family]
    manifest = json.loads((directory / "export.json").read_text())
    preprocessing = manifest["preprocessing"]
    assert preprocessing["image_size"] == SIZES[family]
    assert preprocessing["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert preprocessing["image_std"] == pytest.approx([0.229, 0.224, 0.225])
    zero_shot = manifest["zero_shot"]
    assert zero_shot["classes"] == CLASSES and zero_shot["shape"] == [3, manifest["projection_dim"]]
    model = eager(checkpoints[family])
    processor = MaskedCLIPProcessor.from_pretrained(checkpoints[family])
    expected = class_prototypes(model, processor.tokenizer, prompt_ensembles(CLASSES), max_length=16)
    prototypes = np.load(directory / zero_shot["prototypes"])
    np.testing.assert_allclose(prototypes, expected, rtol=0, atol=ATOL)
    assert zero_shot["logit_scale"] == pytest.approx(logit_scale_of(model))
    # classifying with the exported image tower alone, as export.json's usage line says
    pixels = image_batch(family)
    embeds = torch.export.load(str(directory / "image_encoder.pt2")).module()(pixels).detach().numpy()
    embeds /= np.linalg.norm(embeds, axis=-1, keepdims=True)
    logits = zero_shot["logit_scale"] * embeds @ prototypes.T
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    with torch.no_grad():
        eager_embeds = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
    reference = zero_shot_probabilities(eager_embeds.numpy(), expected, logit_scale_of(model))
    np.testing.assert_allclose(probabilities, reference, rtol=0, atol=1e-5)


STANDALONE = textwrap.dedent(
    """
    import json, sys
    sys.modules["retvlp"] = None  # neither retvlp nor transformers may be imported: torch and numpy only
    sys.modules["transformers"] = None
    import numpy as np, torch
    directory, inputs = sys.argv[1], np.load(sys.argv[2])
    manifest = json.load(open(f"{directory}/export.json"))
    image = torch.export.load(f"{directory}/{manifest['towers']['image']['file']}").module()
    text = torch.export.load(f"{directory}/{manifest['towers']['text']['file']}").module()
    embeds = image(torch.from_numpy(inputs["pixels"])).detach().numpy()
    texts = text(torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])).detach().numpy()
    embeds /= np.linalg.norm(embeds, axis=-1, keepdims=True)
    prototypes = np.load(f"{directory}/{manifest['zero_shot']['prototypes']}")
    scores = manifest["zero_shot"]["logit_scale"] * embeds @ prototypes.T
    print(json.dumps({"image": embeds.tolist(), "text": texts.tolist(), "scores": scores.tolist()}))
    """
)


def test_the_artifacts_run_without_retvlp_or_transformers(checkpoints, torch_exports, tmp_path):
    family = "maskedclip"
    outputs = expected_outputs(eager(checkpoints[family]), family)
    (pixels,), image = outputs["image"]
    (input_ids, attention_mask), text = outputs["text"]
    np.savez(
        tmp_path / "inputs.npz",
        pixels=pixels.numpy(),
        input_ids=input_ids.numpy(),
        attention_mask=attention_mask.numpy(),
    )
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    done = prewarmed.run(
        [sys.executable, str(script), str(torch_exports[family]), str(tmp_path / "inputs.npz")],
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    normalised = image / np.linalg.norm(image, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.array(report["image"]), normalised, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(report["text"]), text, rtol=0, atol=ATOL)
    assert np.array(report["scores"]).shape == (len(pixels), len(CLASSES))


# --------------------------------------------------------------------------- ONNX (the `export` extra)
@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_onnx_graphs_give_the_eager_embeddings(checkpoints, tmp_path, family):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    target = tmp_path / "onnx"
    assert main(["export", str(checkpoints[family]), "--format", "onnx", "--tower", "image", "--tower", "text",
                 "--output", str(target)]) == 0  # fmt: skip
    manifest = json.loads((target / "export.json").read_text())
    for tower, (inputs, expected) in expected_outputs(eager(checkpoints[family]), family).items():
        entry = manifest["towers"][tower]
        session = onnxruntime.InferenceSession(
            str(target / entry["file"]), providers=["CPUExecutionProvider"]
        )
        feed = {i.name: tensor.numpy() for i, tensor in zip(session.get_inputs(), inputs, strict=True)}
        assert (
            list(feed) == list(entry["inputs"]) and session.get_outputs()[0].name == entry["output"]["name"]
        )
        np.testing.assert_allclose(session.run(None, feed)[0], expected, rtol=0, atol=ATOL)
        assert entry["check"]["max_abs_difference"] <= ATOL


def test_onnx_without_its_packages_names_the_extra(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` raises ImportError
    args = ["export", str(checkpoints["maskedclip"]), "--format", "onnx", "--tower", "image"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    assert 'pip install "retvlp[export]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad requests
@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_bad")
    torch.manual_seed(0)
    no_clip = _save(
        root / "no_clip", MaskedCLIPModel(make_tiny_config(use_clip=False)), MaskedCLIPProcessor, 32
    )
    keepfit_classifier = root / "keepfit_classifier"
    KeepFitForImageClassification(KeepFitConfig(**KEEPFIT, num_labels=3)).save_pretrained(keepfit_classifier)
    KeepFitProcessor(FundusImageProcessor(size=48), tiny_tokenizer()).save_pretrained(keepfit_classifier)
    vision_config = make_tiny_config().vision_config
    vision_config.num_labels = 3
    maskedclip_classifier = root / "maskedclip_classifier"
    MaskedCLIPForImageClassification(vision_config).save_pretrained(maskedclip_classifier)
    (root / "empty").mkdir()
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
    )
    return {
        "no_clip": no_clip,
        "keepfit_classifier": keepfit_classifier,
        "maskedclip_classifier": maskedclip_classifier,
        "empty": root / "empty",
        "bert": root / "bert",
    }


@pytest.mark.parametrize(
    "model, extra, message",
    [
        ("maskedclip", ["--tower", "audio"], "unknown tower 'audio': choose from image, text"),
        ("maskedclip", ["--tower", "image", "--format", "tflite"], "invalid choice: 'tflite'"),
        ("empty", ["--tower", "image"], "is not a model folder: it has no config.json"),
        ("bert", ["--tower", "image"], "is not a retvlp MaskedCLIP or KeepFIT checkpoint (model_type 'bert'"),
        (
            "no_clip",
            ["--tower", "text"],
            "has no text tower: its MaskedCLIPModel was built without the CLIP branch",
        ),
        ("no_clip", ["--tower", "image"], "has no CLIP image embedding"),
        ("keepfit_classifier", ["--tower", "text"], "holds no weights of the text tower"),
        (
            "keepfit_classifier",
            ["--tower", "image", "--classes", "a,b"],
            "KeepFitForImageClassification checkpoint",
        ),
        ("maskedclip_classifier", ["--tower", "image"], "MaskedCLIP vision-only checkpoint"),
    ],
)
def test_bad_requests_exit_2_with_a_clear_message(
    checkpoints, bad_checkpoints, tmp_path, capsys, model, extra, message
):
    directory = {**checkpoints, **bad_checkpoints}[model]
    assert main(["export", str(directory), *extra, "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written
