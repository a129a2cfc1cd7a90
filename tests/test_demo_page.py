"""`retvlp demo` and its page (`retvlp.evaluation.demo_app`, issue 27 item 6): the pure predict function on tiny
models against `predict_calibrated` and the conformal threshold, the Gradio page end to end through
`gradio_client`, in a headless Chromium where one is installed, the Space files `retvlp push --space-app` stages,
and the one-line message without Gradio. Offline, Gradio analytics off."""

import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, make_tiny_config, run_without_retvlp, save_tiny_maskedclip
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retvlp import FundusImageProcessor, MaskedCLIPForImageClassification  # noqa: E402
from retvlp.cli import main  # noqa: E402
from retvlp.evaluation import demo_app  # noqa: E402
from retvlp.evaluation.calibrated import (  # noqa: E402
    fit_calibration,
    predict_calibrated,
    save_calibration,
)

CLASSES = ["normal", "diabetic retinopathy", "glaucoma"]
REPO = Path(__file__).resolve().parents[1]

HAVE_GRADIO = importlib.util.find_spec("gradio") is not None  # imported only by the tests that serve the page
needs_gradio = pytest.mark.skipif(
    not HAVE_GRADIO, reason='gradio is not installed (an optional extra: pip install "retvlp[demo]")'
)


def _photograph(seed=0, size=48) -> np.ndarray:
    from retvlp.synthetic import render_fundus

    return render_fundus("diabetic retinopathy", np.random.default_rng(seed), size=size)[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny MaskedCLIP release with its processor (a pretraining checkpoint: zero-shot)."""

    directory = tmp_path_factory.mktemp("demo_checkpoint") / "final"
    save_tiny_maskedclip(directory)
    return directory


def _classifier(directory: Path, coverage=(0.8,)) -> Path:
    """A tiny fine-tuned MaskedCLIP classifier saved as `retvlp evaluate` saves one, with a calibration file
    fitted on 40 seeded calibration images (temperature not in the weights: the page must apply it)."""
    from retvlp.evaluation.finetune import save_finetuned

    torch.manual_seed(1)
    vision = make_tiny_config(
        vision={
            "num_labels": 3,
            "id2label": dict(enumerate(CLASSES)),
            "label2id": {c: i for i, c in enumerate(CLASSES)},
        }
    ).vision_config
    model = MaskedCLIPForImageClassification(vision).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)  # scores far enough from uniform for sets of varied sizes
    save_finetuned(model, directory, image_processor=FundusImageProcessor(size=32))
    rng = np.random.default_rng(0)
    images = [_photograph(seed) for seed in range(40)]
    processor = FundusImageProcessor(size=32)
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    probabilities = torch.softmax(logits, dim=-1).numpy()
    targets = rng.integers(0, 3, len(images))
    content = fit_calibration(probabilities, targets, CLASSES, coverage=coverage, methods=("lac", "aps"))
    save_calibration(directory, content)
    return directory


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _classifier(tmp_path_factory.mktemp("demo_classifier") / "model")


# --------------------------------------------------------------------------------------- the pure function
def test_zero_shot_page_probabilities_sum_to_one_and_say_there_is_no_set(checkpoint):
    page = demo_app.load_page_model(checkpoint, CLASSES)
    assert page.kind == "zero-shot" and page.class_names == CLASSES and not page.has_set
    prediction = demo_app.predict_for_page(page, _photograph())
    probabilities, conformal_set, overlay = prediction.as_tuple()
    assert list(probabilities) == CLASSES
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)
    assert conformal_set is None
    assert overlay.shape == (demo_app.DISPLAY_SIZE, demo_app.DISPLAY_SIZE, 3) and overlay.dtype == np.uint8
    assert prediction.map_class == max(probabilities, key=probabilities.get)
    text = demo_app.set_markdown(page, prediction)
    assert "none for this model" in text and "no calibration.json" in text


def test_zero_shot_page_equals_the_zero_shot_computation(checkpoint):
    """The page's probabilities: softmax(exp(τ) cos(image, prototype)) computed here from the model's own parts."""
    import torch.nn.functional as F
    from transformers import AutoModel, AutoProcessor

    from retvlp.evaluation.zero_shot import prompt_ensembles

    page = demo_app.load_page_model(checkpoint, CLASSES)
    photograph = _photograph(3)
    probabilities = demo_app.predict_for_page(page, photograph).probabilities
    model = AutoModel.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        image = F.normalize(model.get_image_features(**processor(images=[photograph])).pooler_output, dim=-1)
        prototypes = []
        for prompts in prompt_ensembles(CLASSES):
            text = processor.tokenizer(
                prompts, padding=True, truncation=True, max_length=16, return_tensors="pt"
            )
            embeds = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
            prototypes.append(F.normalize(embeds.mean(0), dim=-1))
        logits = model.clamped_logit_scale() * image @ torch.stack(prototypes).T
    expected = torch.softmax(logits.double(), dim=-1)[0].numpy()
    np.testing.assert_allclose([probabilities[c] for c in CLASSES], expected, atol=1e-5)


def _aps_set_by_hand(raw: dict, threshold: float) -> list[str]:
    """APS by its definition, in a loop: classes in decreasing probability, each one included while the mass
    ranked above it is still below q̂ (the class that crosses q̂ is in), or when its cumulative mass is ≤ q̂."""
    chosen, before = [], 0.0
    for name in sorted(raw, key=lambda c: -raw[c]):
        total = before + raw[name]
        if before < threshold or total <= threshold:
            chosen.append(name)
        before = total
    return chosen


def _threshold(classifier: Path, method: str) -> float:
    content = json.loads((classifier / "calibration.json").read_text())
    return next(float(e["threshold"]) for e in content["conformal"] if e["method"] == method)


def test_classifier_page_equals_predict_calibrated_and_the_threshold(classifier):
    page = demo_app.load_page_model(classifier, coverage=0.8)
    assert page.kind == "classifier" and page.class_names == CLASSES and page.method == "aps"
    threshold = _threshold(classifier, "aps")
    for seed in range(100, 112):
        photograph = _photograph(seed)
        prediction = demo_app.predict_for_page(page, photograph)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        expected = predict_calibrated(classifier, Image.fromarray(photograph), coverage=0.8, method="aps")
        assert prediction.probabilities == pytest.approx(expected.probabilities[0], abs=1e-12)
        assert prediction.conformal_set == expected.sets[0]
        # The set is what the threshold says (on the model's softmax, which the thresholds were fitted on).
        assert sorted(prediction.conformal_set) == sorted(
            _aps_set_by_hand(expected.raw_probabilities[0], threshold)
        )
    assert page.calibration["temperature"] != 1.0  # the page applied a real temperature
    text = demo_app.set_markdown(page, prediction)
    assert "80% conformal set (APS)" in text and "Calibrated scores" in text


def test_classifier_set_by_hand_for_lac(classifier):
    """LAC by its definition: class k is in the set iff 1 − p_k ≤ q̂ (the file's threshold)."""
    page = demo_app.load_page_model(classifier, coverage=0.8)
    page.method = "lac"
    threshold = _threshold(classifier, "lac")
    for seed in range(200, 206):
        prediction = demo_app.predict_for_page(page, _photograph(seed))
        raw = predict_calibrated(classifier, Image.fromarray(_photograph(seed))).raw_probabilities[0]
        assert set(prediction.conformal_set) == {c for c in CLASSES if 1.0 - raw[c] <= threshold}


def test_a_classifier_without_a_set_at_that_coverage_says_why(classifier, tmp_path):
    page = demo_app.load_page_model(classifier, coverage=0.95)
    assert not page.has_set
    prediction = demo_app.predict_for_page(page, _photograph())
    assert prediction.conformal_set is None
    calibrated = predict_calibrated(classifier, Image.fromarray(_photograph()), coverage=0.8)
    assert prediction.probabilities == pytest.approx(calibrated.probabilities[0], abs=1e-12)
    assert "no conformal set at coverage 0.95 (fitted: aps@0.8, lac@0.8)" in " ".join(page.notes)
    # Too few calibration images for the coverage: the file's own reason is on the page.
    small = _classifier(tmp_path / "small", coverage=(0.99,))
    assert "coverage 0.99 needs 99" in " ".join(demo_app.load_page_model(small, coverage=0.99).notes)
    # No calibration file: the softmax, and the page says so.
    (small / "calibration.json").unlink()
    page = demo_app.load_page_model(small)
    assert page.calibration is None and "No calibration.json" in page.notes[0]
    assert sum(demo_app.predict_for_page(page, _photograph()).probabilities.values()) == pytest.approx(1.0)


def test_classes_are_required_for_a_checkpoint_and_refused_for_a_classifier(checkpoint, classifier):
    with pytest.raises(ValueError, match="name the classes"):
        demo_app.load_page_model(checkpoint)
    with pytest.raises(ValueError, match="its own classes"):
        demo_app.load_page_model(classifier, ["a", "b"])


def test_classifier_class_map_is_the_head_on_each_patch(classifier):
    from transformers import AutoModelForImageClassification

    from retvlp.evaluation.evidence import classifier_class_map

    model = AutoModelForImageClassification.from_pretrained(classifier).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = classifier_class_map(model, pixels)
    assert maps.shape == (2, 3, 4, 4)
    with torch.no_grad():
        tokens = model.vision_model(pixels, apply_layernorm=False).last_hidden_state[:, 1:]
        for b in range(2):
            for n in range(16):
                logits = model.classifier(model.fc_norm(tokens[b, n]))
                torch.testing.assert_close(maps[b, :, n // 4, n % 4], logits, atol=1e-5, rtol=1e-5)


def test_keepfit_classifier_map_averages_to_its_logits():
    """KeepFIT's head is linear on the average-pooled feature map: the class activation map's mean over positions
    is the model's logits exactly."""
    from test_modeling_keepfit import tiny_config as keepfit_tiny_config

    from retvlp.evaluation.evidence import classifier_class_map
    from retvlp.keepfit import KeepFitForImageClassification

    torch.manual_seed(0)
    model = KeepFitForImageClassification(keepfit_tiny_config(num_labels=3)).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    maps = classifier_class_map(model, pixels)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="No classifier evidence map for Linear"):
        classifier_class_map(torch.nn.Linear(2, 2), pixels)


# ----------------------------------------------------------------------------------------------- the CLI
def test_without_gradio_the_command_names_the_extra(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    code = main(["demo", str(checkpoint), "--classes", "a,b"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and 'pip install "retvlp[demo]"' in err, err


def test_demo_usage_errors_exit_2(checkpoint, capsys):
    if not HAVE_GRADIO:
        pytest.skip('gradio is not installed (an optional extra: pip install "retvlp[demo]")')
    assert main(["demo", str(checkpoint)]) == 2
    assert "name the classes" in capsys.readouterr().err
    assert main(["demo", str(checkpoint), "--classes", "a,b", "--coverage", "1.5"]) == 2


# -------------------------------------------------------------------------------------- the served page
@pytest.fixture(scope="module")
def served(classifier):
    """`retvlp demo CLASSIFIER --coverage 0.8 --port P` run in this process (its `launch` told not to block the
    thread); yields the page's URL, closes the server after the module's tests."""
    if not HAVE_GRADIO:
        pytest.skip('gradio is not installed (an optional extra: pip install "retvlp[demo]")')
    import gradio

    launched = []
    original = gradio.Blocks.launch

    def launch(self, *args, **kwargs):
        launched.append(self)
        return original(self, *args, **{**kwargs, "prevent_thread_lock": True, "quiet": True})

    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setattr(gradio.Blocks, "launch", launch)
        assert main(["demo", str(classifier), "--coverage", "0.8", "--port", str(port)]) == 0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                assert response.status == 200
            yield f"http://127.0.0.1:{port}/"
        finally:
            for demo in launched:
                demo.close()


def test_gradio_client_end_to_end(served, classifier, tmp_path):
    from gradio_client import Client, handle_file

    photograph = tmp_path / "eye.png"
    Image.fromarray(_photograph(7)).save(photograph)
    client = Client(served, verbose=False)
    label, text, overlay = client.predict(handle_file(str(photograph)), api_name="/predict")
    expected = predict_calibrated(classifier, str(photograph), coverage=0.8, method="aps")
    confidences = {entry["label"]: entry["confidence"] for entry in label["confidences"]}
    assert set(confidences) == set(CLASSES)
    assert confidences == pytest.approx(expected.probabilities[0], abs=1e-6)
    assert label["label"] == max(expected.probabilities[0], key=expected.probabilities[0].get)
    assert "80% conformal set (APS)" in text
    for name in expected.sets[0]:
        assert f"**{name}**" in text
    with Image.open(overlay) as image:
        assert image.size == (demo_app.DISPLAY_SIZE, demo_app.DISPLAY_SIZE)


def _chromium() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
        None,
    )


def test_headless_browser_upload_wait_screenshot_and_labels(served, tmp_path):
    """In a real headless Chromium, driven over the DevTools protocol: open the page, upload a photograph into
    the file input, press Predict, wait for the result, check the labels on the page and take a screenshot."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (chromium, chromium-browser or google-chrome on PATH)")
    pytest.importorskip("websockets", reason="the DevTools driver needs the websockets package")
    photograph = tmp_path / "eye.png"
    Image.fromarray(_photograph(8)).save(photograph)
    driver = tmp_path / "drive.py"
    driver.write_text(textwrap.dedent(DEVTOOLS_DRIVER))
    done = subprocess.run(
        [sys.executable, str(driver), browser, served, str(photograph), str(tmp_path / "page.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = json.loads(done.stdout.strip().splitlines()[-1])["text"]
    for label in ("Class probabilities", "Evidence map", "conformal set", *CLASSES):
        assert label in text, text[:2000]
    with Image.open(tmp_path / "page.png") as screenshot:
        assert screenshot.size[0] > 300


DEVTOOLS_DRIVER = r"""
import asyncio, base64, json, os, subprocess, sys, tempfile, time, urllib.request

import websockets

browser, url, photograph, screenshot = sys.argv[1:5]
port_file = tempfile.mkdtemp()
process = subprocess.Popen(
    [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
     f"--user-data-dir={port_file}", "--window-size=1280,1400", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(port_file, "DevToolsActivePort")):
        if time.monotonic() > deadline:
            raise SystemExit("Chromium did not open its DevTools port")
        time.sleep(0.2)
    port = open(os.path.join(port_file, "DevToolsActivePort")).read().split()[0]
    time.sleep(0.5)
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
    socket_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    async def drive():
        async with websockets.connect(socket_url, max_size=2**26) as ws:
            counter = 0

            async def call(method, **params):
                nonlocal counter
                counter += 1
                await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("id") == counter:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})

            async def evaluate(expression):
                result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                return result.get("result", {}).get("value")

            await call("Page.enable")
            await call("DOM.enable")
            await call("Page.navigate", url=url)
            for _ in range(200):
                if await evaluate("!!document.querySelector('#photograph input[type=file]')"):
                    break
                await asyncio.sleep(0.2)
            document = await call("DOM.getDocument", depth=-1, pierce=True)
            found = await call(
                "DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#photograph input[type=file]"
            )
            await call("DOM.setFileInputFiles", files=[photograph], nodeId=found["nodeId"])
            for _ in range(200):  # the upload shows the photograph in the input component
                if await evaluate("!!document.querySelector('#photograph img')"):
                    break
                await asyncio.sleep(0.2)
            await evaluate("document.querySelector('#predict').click()")
            for _ in range(300):  # the result: the evidence map image and the conformal-set text
                ready = await evaluate(
                    "!!document.querySelector('#evidence img') && "
                    "document.querySelector('#conformal-set').innerText.includes('conformal set')"
                )
                if ready:
                    break
                await asyncio.sleep(0.2)
            else:
                raise SystemExit("no result on the page")
            await asyncio.sleep(0.5)
            text = await evaluate("document.body.innerText")
            shot = await call("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as stream:
                stream.write(base64.b64decode(shot["data"]))
            print(json.dumps({"text": text}))

    asyncio.run(drive())
finally:
    process.terminate()
    process.wait(timeout=10)
"""


# --------------------------------------------------------------------------------------------- the Space
def test_push_space_app_dry_run_stages_a_space_that_runs_from_its_files(classifier, tmp_path, capsys):
    staged = tmp_path / "staged"
    code = main(
        [
            "push",
            str(classifier),
            "--repo-id",
            "someone/tiny-dr",
            "--space-app",
            "--coverage",
            "0.8",
            "--dry-run",
            str(staged),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for name in ("app.py", "requirements.txt", "README.md", "calibration.json", "model.safetensors"):
        assert (staged / name).is_file() and name in out
    assert "Space" in out
    readme = (staged / "README.md").read_text()
    front = readme.split("---\n")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    assert "retvlp[demo]" in (staged / "requirements.txt").read_text()
    app = (staged / "app.py").read_text()
    assert "trust_remote_code=True" in app and "COVERAGE = 0.8" in app and "NAME = 'tiny-dr'" in app
    # The app, run from the staged folder (the model loaded from it with trust_remote_code=True), answers;
    # `build_demo` stands in for the Gradio page (served above), so this part needs no Gradio.
    built = {}

    def capture(*args, **kwargs):
        built["page"] = demo_app.load_page_model(*args, **kwargs)
        return object()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_app, "build_demo", capture)
        runpy.run_path(str(staged / "app.py"), run_name="space")
    assert built["page"].name == "tiny-dr" and built["page"].kind == "classifier"
    prediction = demo_app.predict_for_page(built["page"], _photograph(9))
    expected = predict_calibrated(staged, Image.fromarray(_photograph(9)), coverage=0.8, method="aps")
    assert prediction.probabilities == pytest.approx(expected.probabilities[0], abs=1e-12)
    assert prediction.conformal_set == expected.sets[0]
    # Without retvlp: the model runs from the Space's own code (trust_remote_code), the page does not, and the
    # import that fails is retvlp's, which requirements.txt installs.
    report = run_without_retvlp(WITHOUT_RETVLP, tmp_path, str(staged))
    assert "retvlp" not in report["class"] and report["class"].endswith("MaskedCLIPForImageClassification")
    assert sum(report["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert report["app"].startswith("ModuleNotFoundError: retvlp"), report["app"]


WITHOUT_RETVLP = """
import json, runpy, sys
sys.modules["retvlp"] = None  # make `import retvlp` fail: only the Space's own files may run
import numpy as np, torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
directory = sys.argv[1]
model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
with torch.no_grad():
    logits = model(**processor(images=[np.full((40, 40, 3), 90, np.uint8)], return_tensors="pt")).logits
try:
    runpy.run_path(directory + "/app.py", run_name="space")
    app = "ran"
except ImportError as error:
    app = f"{type(error).__name__}: {error.name}"
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "app": app,
                  "probabilities": torch.softmax(logits, -1)[0].tolist()}))
"""


def test_space_app_needs_classes_for_a_checkpoint(checkpoint, tmp_path, capsys):
    code = main(
        ["push", str(checkpoint), "--repo-id", "a/b", "--space-app", "--dry-run", str(tmp_path / "s")]
    )
    assert code == 2 and "--classes" in capsys.readouterr().err


def test_help_imports_no_gradio():
    """`retvlp --help` and `retvlp demo --help` stay light: Gradio is imported only when the page is served."""
    code = (
        "import json, sys\n"
        "from retvlp.cli import main\n"
        "assert main(['--help']) == 0 and main(['demo', '--help']) == 0\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'gradio_client'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_space_push_creates_a_gradio_space_in_one_commit(checkpoint):
    """A pretraining checkpoint pushed as a Space: a Space repository with the gradio SDK, one upload of the
    model, the card with the Space keys, app.py with the zero-shot classes and requirements.txt."""
    from test_model_card_and_hub import FakeHfApi

    from retvlp.hub import push_to_hub

    fake = FakeHfApi()
    push_to_hub(
        "me/tiny-space",
        folder=checkpoint,
        api=fake,
        space_app={"classes": CLASSES, "coverage": 0.9, "retvlp_requirement": "retvlp[demo]==0.1.0"},
    )
    assert fake.names() == ["create_repo", "upload_folder"]
    create, upload = fake.calls[0][1], fake.calls[1][1]
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert upload["repo_type"] == "space" and "Gradio Space" in upload["commit_message"]
    assert {"app.py", "requirements.txt", "README.md", "config.json", "model.safetensors"} <= set(
        fake.uploaded
    )
    assert f"CLASSES = {CLASSES!r}" in fake.text("app.py")
    assert fake.text("requirements.txt") == "retvlp[demo]==0.1.0\n"
    import yaml

    meta = yaml.safe_load(fake.text("README.md").split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert "MaskedCLIP" in fake.text("README.md")  # the model card is still the README's body
