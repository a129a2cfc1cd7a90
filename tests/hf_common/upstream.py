"""Fetch transformers' common test suites from the sdist of the INSTALLED release and import them.

The wheel ships no tests, the sdist ships the top level of `tests/`: `test_modeling_common.py` (the
`ModelTesterMixin`) and `test_configuration_common.py` (the `ConfigTester`). The first run downloads the sdist
with `pip download --no-deps --no-binary :all: transformers==<version>`, extracts those two files (and any
file of the sdist's `tests/` tree they import) into `~/.cache/retvlp-hf-common/<version>/tests/` (override the
root with `RETVLP_HF_COMMON_CACHE`), and later runs import them from there without the network. When the sdist
cannot be fetched, `require_upstream()` skips the calling test module with the version and the failed command.

The suites import three modules of the test tree that the sdist does not contain; they are replaced by the
stubs below (minimal, each with the reason). A new transformers release that imports anything else from its
test tree is reported as an error (not a skip), so that the stubs get updated instead of the suite vanishing.
"""

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

SUITE_FILES = ("test_modeling_common.py", "test_configuration_common.py")
PACKAGE = "retvlp_hf_upstream_tests"  # the extracted tests/ directory, imported as a package
READY_MARKER = ".complete"


# ---------------------------------------------------------------------------------------------- stubs
class ExportTesterMixin:
    """Stub of `tests/exporters/test_export.py::ExportTesterMixin` (not in the sdist).

    The real mixin exports every model class through `transformers.exporters` to Dynamo, ONNX, OpenVINO,
    ExecuTorch, AOTI and TensorRT and drives the runtimes (onnxruntime, executorch, ... are not installed
    here). Its torch.export part is replaced by `harness.TorchExportTests.test_torch_export`, which stays
    active for every class.
    """


class GenerationTesterMixin:
    """Stub of `tests/generation/test_utils.py::GenerationTesterMixin` (not in the sdist).

    Not needed: no retvlp model generates (`can_generate()` is False for all of them), so no tester inherits
    it; `test_modeling_common` only uses the class in `issubclass` checks
    (`test_generation_tester_mixin_inheritance`, which stays active).
    """


# `tests/utils/test_configuration_utils.py::config_common_kwargs` (not in the sdist), as in transformers 5.x:
# the generic `PreTrainedConfig` arguments that `ConfigTester.check_config_arguments_init` passes to a config
# and expects back unchanged.
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}

# module of the test tree (relative to tests/) -> the names it must provide
STUBS = {
    "exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
    "generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
    "utils.test_configuration_utils": {"config_common_kwargs": config_common_kwargs},
}


# ---------------------------------------------------------------------------------------------- errors
class UpstreamUnavailable(Exception):
    """The sdist could not be fetched (no network, pip failed, version not on the index): skip."""


class UpstreamIncompatible(Exception):
    """The sdist was fetched but its suites need something this loader does not provide: an error."""


@dataclass(frozen=True)
class Upstream:
    version: str
    directory: Path
    modeling: types.ModuleType  # tests/test_modeling_common.py
    configuration: types.ModuleType  # tests/test_configuration_common.py


def transformers_version() -> str:
    return importlib.metadata.version("transformers")


def cache_dir(version: str) -> Path:
    root = os.environ.get("RETVLP_HF_COMMON_CACHE") or Path.home() / ".cache" / "retvlp-hf-common"
    return Path(root).expanduser() / version


def download_command(version: str, destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"transformers=={version}",
        "-d",
        str(destination),
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "20",
    ]


# ---------------------------------------------------------------------------------------------- fetching
def _find_sdist(directory: Path, version: str) -> Path | None:
    for candidate in sorted(directory.glob(f"transformers-{version}.tar.gz")):
        return candidate
    return None


def _fetch_sdist(version: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(directory, version)
    if found is not None:
        return found
    command = download_command(version, directory)
    shown = " ".join(command[1:]).replace("-m pip", "pip", 1)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UpstreamUnavailable(
            f"transformers {version}: cannot fetch the sdist with its common test suites: `{shown}` failed "
            f"({error})"
        ) from error
    found = _find_sdist(directory, version)
    if result.returncode != 0 or found is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UpstreamUnavailable(
            f"transformers {version}: cannot fetch the sdist with its common test suites: `{shown}` exited with "
            f"{result.returncode}: {' | '.join(tail) or 'no output'}"
        )
    return found


def _relative_imports(source: str) -> list[tuple[str, list[str]]]:
    """`(module relative to the importing file's package, imported names)` of every `from .x import y`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module:
                raise UpstreamIncompatible(
                    f"unsupported relative import `from {'.' * node.level}{node.module}`"
                )
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _extract(sdist: Path, target: Path, version: str) -> None:
    """Extract the suites and what they import from the sdist's `tests/` tree into `target` (a package)."""
    with tarfile.open(sdist) as archive:
        members = {member.name: member for member in archive.getmembers() if member.isfile()}
        prefix = next(
            (
                name[: -len("test_modeling_common.py")]
                for name in members
                if name.endswith("/tests/test_modeling_common.py")
            ),
            None,
        )
        if prefix is None or prefix.count("/") != 2:
            raise UpstreamIncompatible(f"{sdist.name} has no tests/test_modeling_common.py")
        staging = Path(tempfile.mkdtemp(prefix="extract-", dir=target.parent))
        try:
            pending, done = list(SUITE_FILES), set()
            while pending:
                relative = pending.pop()
                if relative in done:
                    continue
                done.add(relative)
                member = members.get(prefix + relative)
                if member is None:
                    raise UpstreamIncompatible(f"{sdist.name} has no tests/{relative}")
                text = archive.extractfile(member).read().decode("utf-8")
                for module, names in _relative_imports(text):
                    if module in STUBS:
                        missing = set(names) - set(STUBS[module])
                        if missing:
                            raise UpstreamIncompatible(
                                f"tests/{relative} imports {sorted(missing)} from .{module}; extend the stub"
                            )
                        continue
                    module_file = module.replace(".", "/") + ".py"
                    if prefix + module_file not in members:
                        raise UpstreamIncompatible(
                            f"transformers {version}: tests/{relative} imports .{module}, which the sdist does "
                            f"not ship and tests/hf_common/upstream.py does not stub"
                        )
                    pending.append(module_file)
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(text, encoding="utf-8")
            for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
                # Empty package markers; `test_configuration_common` also executes tests/__init__.py itself
                # (`direct_transformers_import(Path(__file__).parent)`), as the upstream (empty) file.
                (folder / "__init__.py").touch()
            (staging / READY_MARKER).write_text(sdist.name)
            staging.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / READY_MARKER).exists():  # not just another run that got there first
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)


def _import(directory: Path) -> tuple[types.ModuleType, types.ModuleType]:
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
        for module_name, names in STUBS.items():
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):
                full = ".".join([PACKAGE, *parts[:depth]])
                if full not in sys.modules:
                    module = types.ModuleType(full, "retvlp stub (tests/hf_common/upstream.py)")
                    if depth < len(parts):
                        module.__path__ = []
                    sys.modules[full] = module
            vars(sys.modules[".".join([PACKAGE, *parts])]).update(names)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


@functools.cache
def _load() -> Upstream | Exception:
    version = transformers_version()
    directory = cache_dir(version)
    target = directory / "tests"
    try:
        if not (target / READY_MARKER).exists():
            _extract(_fetch_sdist(version, directory), target, version)
        modeling, configuration = _import(target)
    except UpstreamUnavailable as error:
        return error
    return Upstream(version, target, modeling, configuration)


def require_upstream() -> Upstream:
    """The imported upstream suites; skips the calling test module when the sdist cannot be fetched."""
    loaded = _load()
    if isinstance(loaded, UpstreamUnavailable):
        pytest.skip(str(loaded), allow_module_level=True)
    return loaded
