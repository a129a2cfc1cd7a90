"""Checkpoints saved by the current code load, with their own code and without retvlp, on the oldest and the newest
transformers release the package declares, and give the saving process's outputs (to 1e-5).

Every artifact kind (`checkpoint_artifacts.py`: MaskedCLIP and KeepFIT released models, pretraining checkpoints,
fine-tuned classifiers, LoRA adapters and processors, the IBQ tokenizer) is saved here, then `remote_load_probe.py` loads each with
`Auto*.from_pretrained(dir, trust_remote_code=True)` in a throw-away virtual environment that holds only torch,
transformers, safetensors, numpy and Pillow — created WITHOUT the system site packages, so neither retvlp nor this
interpreter's transformers is visible — and runs it on the saved inputs.

The environments are built once and cached under `~/.cache/retvlp-test-venvs/` (override with
`RETVLP_TEST_VENVS`): one virtual environment per (torch, Python) with torch (the local CPU wheel,
`pip install torch==<this torch>`), safetensors, numpy and Pillow (measured: 70-110 s, 1 GB, on 2 cores), and per
transformers release a `pip install --target` folder with transformers and its dependencies from the package index
(40-45 s, 280 MB), which the probe puts first on its path, followed by one folder with this interpreter's peft and
accelerate releases (`--no-deps`, for the LoRA adapters). A first run therefore costs about 3 minutes and needs the
index; later runs only save and load the checkpoints (about 25 s for both versions). When an environment is not
cached and cannot be built (no network, the index unreachable, the version not on it), the test is skipped with
the reason and pip's last lines, like `tests/hf_common`. `RETVLP_SKIP_CROSS_VERSION=1` skips it outright;
`RETVLP_CROSS_VERSIONS=5.4.0,5.10.0` runs other versions instead (an experiment; measured with this code: 5.4.0,
5.5.0, 5.10.0, 5.20.0, 5.21.0 and 5.22.0 load every artifact and agree exactly; 5.0.0 and 5.3.0 fail — their
`PreTrainedConfig` is not a dataclass, which the `@strict` configuration classes of all three families need, and
their image-processor base lacks `_set_attributes`).
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("remote_load_probe.py")
READY_MARKER = ".complete"
ATOL = 1e-5
# what the throw-away environment holds besides torch and transformers (the processor needs Pillow and numpy)
EXTRA_PACKAGES = ("safetensors", "numpy", "pillow")


def declared_range() -> tuple[str, str]:
    """(oldest, upper bound) of transformers in pyproject.toml's dependencies, e.g. ("5.23", "5.26")."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"transformers\s*>=\s*([0-9.]+)\s*,\s*<\s*([0-9.]+)', text)
    assert match, "pyproject.toml declares no transformers range of the form >=A,<B"
    return match.group(1), match.group(2)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def versions_to_test() -> list[str]:
    """The declared oldest release (pyproject's lower bound, as X.Y.0) and the installed one (the newest the suite
    runs on; `test_the_installed_transformers_is_in_the_declared_range`); or RETVLP_CROSS_VERSIONS."""
    chosen = os.environ.get("RETVLP_CROSS_VERSIONS")
    if chosen:
        return [v.strip() for v in chosen.split(",") if v.strip()]
    oldest, _ = declared_range()
    oldest = oldest if oldest.count(".") == 2 else f"{oldest}.0"
    return sorted({oldest, importlib.metadata.version("transformers")}, key=_release)


def test_the_installed_transformers_is_in_the_declared_range():
    oldest, upper = declared_range()
    installed = importlib.metadata.version("transformers")
    assert _release(oldest) <= _release(installed) < _release(upper), (
        f"the installed transformers {installed} is outside the declared range >={oldest},<{upper}"
    )


def venv_root() -> Path:
    root = os.environ.get("RETVLP_TEST_VENVS") or Path.home() / ".cache" / "retvlp-test-venvs"
    return Path(root).expanduser()


def torch_requirement() -> str:
    """This interpreter's torch release (the local CPU wheel: `+cpu` is dropped, pip finds it by version)."""
    return f"torch=={torch.__version__.split('+')[0]}"


def venv_python(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


class EnvironmentUnavailable(Exception):
    """The environment could not be built (no network, index unreachable, version not on the index): skip."""


def _pip_install(python: Path, arguments: list[str], what: str) -> None:
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--retries",
        "1",
    ]
    command += ["--timeout", "60", *arguments]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    except (subprocess.SubprocessError, OSError) as error:
        raise EnvironmentUnavailable(f"installing {what}: {error}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise EnvironmentUnavailable(f"installing {what}: `pip {' '.join(command[3:])}` failed:\n{tail}")


def _build_once(directory: Path, build) -> Path:
    """`build(folder)` into a temporary sibling of `directory`, renamed to it when complete (a READY_MARKER file
    records how long it took); a complete `directory` is reused as it is."""
    if (directory / READY_MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = directory.with_name(f"{directory.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    try:
        build(building)
        (building / READY_MARKER).write_text(json.dumps({"built_in_s": round(time.monotonic() - started, 1)}))
        shutil.rmtree(directory, ignore_errors=True)
        building.rename(directory)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return directory


def ensure_environment(transformers_version: str) -> tuple[Path, Path]:
    """(interpreter, PYTHONPATH folder) of a throw-away environment with transformers==`transformers_version`.

    The interpreter is a virtual environment without the system site packages holding only this torch release and
    EXTRA_PACKAGES (built once, ~1 GB, shared by every version); each transformers release and its dependencies
    are installed with `pip --target` into their own folder (~45 s, ~280 MB), put first on the path when the probe
    runs. Both are cached under `venv_root()`."""
    python_tag = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    root = venv_root()

    def build_base(folder: Path) -> None:
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, text=True
            )
        except (subprocess.SubprocessError, OSError) as error:
            raise EnvironmentUnavailable(f"creating a virtual environment: {error}") from error
        _pip_install(venv_python(folder), [torch_requirement(), *EXTRA_PACKAGES], "torch")

    base = _build_once(root / f"base-{torch_requirement().replace('==', '-')}-{python_tag}", build_base)
    python = venv_python(base)

    def build_transformers(folder: Path) -> None:
        folder.mkdir(parents=True)
        _pip_install(
            python, ["--target", str(folder), f"transformers=={transformers_version}"], "transformers"
        )

    return python, _build_once(root / f"transformers-{transformers_version}-{python_tag}", build_transformers)


def ensure_peft(python: Path) -> Path:
    """A `pip --target` folder with this interpreter's peft and accelerate releases and psutil, without their
    dependencies (`--no-deps`: torch is the environment's, huggingface_hub, pyyaml, packaging and tqdm come with
    each transformers folder); put on the path after the transformers folder, for the LoRA adapters."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("peft", "accelerate", "psutil")]
    python_tag = f"py{sys.version_info[0]}.{sys.version_info[1]}"

    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        _pip_install(python, ["--target", str(folder), "--no-deps", *pins], "peft")

    name = "-".join(pin.replace("==", "-") for pin in pins[:2])
    return _build_once(venv_root() / f"{name}-{python_tag}", build)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from checkpoint_artifacts import save_artifacts

    root = tmp_path_factory.mktemp("artifacts")
    return root, save_artifacts(root)


def compare(root: Path, out: Path, report: dict) -> list[str]:
    """Per artifact: loaded, not from retvlp, and every output tensor equal to the saving process's (to ATOL)."""
    problems = []
    for name, entry in report["artifacts"].items():
        if not entry["ok"]:
            problems.append(f"{name}: {entry['error']}\n{entry['traceback']}")
            continue
        if entry["class"].startswith("retvlp"):
            problems.append(f"{name}: loaded retvlp's class {entry['class']}, not the checkpoint's code")
        expected, got = (
            load_file(root / "expected" / f"{name}.safetensors"),
            load_file(out / f"{name}.safetensors"),
        )
        if expected.keys() != got.keys():
            problems.append(f"{name}: outputs {sorted(got)} instead of {sorted(expected)}")
            continue
        for key in expected:
            a, b = expected[key], got[key]
            if a.shape != b.shape or a.dtype != b.dtype:
                problems.append(
                    f"{name}.{key}: {tuple(b.shape)} {b.dtype} instead of {tuple(a.shape)} {a.dtype}"
                )
            elif a.is_floating_point() and not torch.allclose(a, b, rtol=0, atol=ATOL):
                problems.append(f"{name}.{key}: max |difference| {(a - b).abs().max().item():.3g} > {ATOL}")
            elif not a.is_floating_point() and not torch.equal(a, b):
                problems.append(f"{name}.{key}: differs")
    return problems


@pytest.mark.skipif(
    bool(os.environ.get("RETVLP_SKIP_CROSS_VERSION")), reason="RETVLP_SKIP_CROSS_VERSION is set"
)
@pytest.mark.parametrize("transformers_version", versions_to_test())
def test_saved_artifacts_load_with_remote_code_on_a_declared_transformers(
    transformers_version, artifacts, tmp_path
):
    root, spec = artifacts
    try:
        python, packages = ensure_environment(transformers_version)
        peft_packages = ensure_peft(python)
    except EnvironmentUnavailable as error:
        pytest.skip(str(error))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(packages), str(peft_packages)]),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [str(python), str(PROBE), str(root / "spec.json"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["transformers"] == transformers_version  # the environment's own release, not ours
    assert set(report["artifacts"]) == set(spec)
    problems = compare(root, out, report)
    assert not problems, f"transformers {transformers_version}:\n" + "\n".join(problems)
