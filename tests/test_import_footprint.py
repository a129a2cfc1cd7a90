"""`import retvlp` is light (what it loads, never how long it takes: `benchmarks/import_benchmark.py` times it),
its public names still import, and the Auto-class registration it defers happens before any Auto class can
look our model types up, however transformers is reached."""

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import prewarmed
import pytest
import torch
from conftest import make_tiny_config

REPO = Path(__file__).resolve().parents[1]
# Never loaded by `import retvlp`, `retvlp --help` or `training/pretrain.py --help`.
HEAVY = (
    "retvlp.evaluation.runner",
    "retvlp.evaluation.finetune",
    "retvlp.training.trainer",
    "retvlp.maskedclip",
    "retvlp.keepfit",
    "datasets",
    "accelerate",
    "pandas",
    "matplotlib",
    "sklearn",
    "torch",
    "transformers",
)


def run_python(code: str, *args: str, cwd: Path = REPO, torch_imported: bool = False) -> dict:
    """Run `code` in a fresh interpreter (offline) and return the JSON it prints on its last line.
    `torch_imported`: in a process forked from one that has imported torch (tests/prewarmed.py) but not
    transformers nor retvlp — for probes about transformers and retvlp, never about what loads torch."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RETVLP_MALLOC_TUNED": "0"}
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    run = (
        prewarmed.run if torch_imported else functools.partial(subprocess.run, capture_output=True, text=True)
    )
    done = run(command, env=environment, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaded(modules: list[str]) -> list[str]:
    """Which of `HEAVY` (or their submodules) are among `modules`."""
    return sorted({h for h in HEAVY for m in modules if m == h or m.startswith(h + ".")})


def test_import_retvlp_loads_nothing_heavy():
    modules = run_python("import json, sys, retvlp; print(json.dumps(sorted(sys.modules)))")
    assert "retvlp" in modules
    assert loaded(modules) == []
    assert "retvlp.evaluation" not in modules and "retvlp.training" not in modules


def test_the_help_of_both_commands_loads_nothing_heavy():
    code = """
        import json, runpy, sys
        from retvlp.cli import main
        assert main(["--help"]) == 0
        sys.argv = ["training/pretrain.py", "--help"]
        try:
            runpy.run_path("training/pretrain.py", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        print(json.dumps(sorted(sys.modules)))
    """
    assert loaded(run_python(code)) == []


def test_every_public_name_still_imports():
    for package in (
        "retvlp",
        "retvlp.evaluation",
        "retvlp.training",
        "retvlp.model_card",
        "retvlp.synthetic",
    ):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
        assert set(module.__all__) <= set(dir(module)), package
    from retvlp import MaskedCLIPConfig, register_auto_classes  # noqa: F401
    from retvlp.evaluation import finetune

    # The package exports the function `finetune`, which shares its name with its module: importing the module
    # (as the runner does) leaves the package's name bound to the function, as before the package was lazy.
    importlib.import_module("retvlp.evaluation.finetune")
    assert callable(finetune) and importlib.import_module("retvlp.evaluation").finetune is finetune
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        importlib.import_module("retvlp").nothing  # noqa: B018


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny MaskedCLIP release with its processor."""
    from retvlp import FundusImageProcessor, MaskedCLIPModel, MaskedCLIPProcessor
    from retvlp.tokenization import tiny_tokenizer

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("footprint")
    MaskedCLIPModel(make_tiny_config()).save_pretrained(directory)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


def test_auto_classes_load_a_checkpoint_after_a_bare_import(checkpoint):
    code = """
        import json, sys
        import retvlp
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
        directory = sys.argv[1]
        print(json.dumps([type(AutoConfig.from_pretrained(directory)).__name__,
                          type(AutoModel.from_pretrained(directory)).__name__,
                          type(AutoImageProcessor.from_pretrained(directory)).__name__,
                          type(AutoProcessor.from_pretrained(directory)).__name__,
                          type(AutoModel.from_pretrained(directory)).__module__]))
    """
    names = run_python(code, str(checkpoint), torch_imported=True)
    assert names == [
        "MaskedCLIPConfig",
        "MaskedCLIPModel",
        "FundusImageProcessor",
        "MaskedCLIPProcessor",
        "retvlp.maskedclip.modeling_maskedclip",
    ]


@pytest.mark.parametrize(
    "reach",
    [
        # transformers' Auto API reached from inside its modelling code (modeling_utils imports it half-way)
        "import retvlp, transformers.modeling_utils",
        # one of our families imported directly: its classes are marked for remote code before any save
        "import retvlp.maskedclip",
        # transformers' Auto API loaded before retvlp: the registration happens at `import retvlp`
        "import transformers.models.auto.modeling_auto, retvlp",
    ],
)
def test_the_registration_runs_however_transformers_is_reached(reach):
    code = f"""
        import json
        {reach}
        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from retvlp import MaskedCLIPConfig, MaskedCLIPModel
        print(json.dumps({{
            "types": [t for t in ("maskedclip", "maskedclip_vision_model", "keepfit", "ibq_tokenizer")
                      if t in CONFIG_MAPPING],
            "model": AutoModel._model_mapping[MaskedCLIPConfig].__name__,
            "remote_code": [MaskedCLIPConfig._auto_class, MaskedCLIPModel._auto_class],
        }}))
    """
    report = run_python(code, torch_imported=True)
    assert report == {
        "types": ["maskedclip", "maskedclip_vision_model", "keepfit", "ibq_tokenizer"],
        "model": "MaskedCLIPModel",
        "remote_code": ["AutoConfig", "AutoModel"],
    }
