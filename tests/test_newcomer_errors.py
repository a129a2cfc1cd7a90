"""Errors a newcomer can act on (issue 25, item 4): one clean message under `accelerate launch -q`, "did you
mean" for misspelt config keys, flags anywhere among the overrides, the data problems of a run with no usable
row (with `--allowed-root` to fix the commonest), a warm-up longer than the run refused, `retvlp evaluate`
stopping on images it cannot use, and an in-memory Dataset given as `hf_dataset`."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_config, tiny_pretrain_dict

from retvlp.cli import main as cli_main
from retvlp.data.loading import read_training_manifests
from retvlp.evaluation.data import read_labelled_records
from retvlp.training.config import ConfigError, PretrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    """training/pretrain.py as a module."""
    spec = importlib.util.spec_from_file_location("pretrain_entry_point", REPO / "training" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images_of(synthetic, count):
    return sorted((synthetic.root / "images").glob("*.png"))[:count]


# ------------------------------------------------------------------------------ (a) accelerate launch -q
def test_the_readme_launches_the_demos_quietly():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "HF_HUB_OFFLINE=1 accelerate launch -q training/pretrain.py\n" in readme
    assert (
        "accelerate launch -q training/pretrain.py --config training/configs/keepfit_tiny_cpu.yaml" in readme
    )


def test_a_config_error_under_accelerate_launch_q_is_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [{path: x.csv}]\n  imag_size: 3\n")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "training" / "pretrain.py"), "--config", str(bad),
    ]  # fmt: skip
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # no user accelerate config
        "RETVLP_MALLOC_TUNED": "0",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count("unknown key(s) ['imag_size'] in section 'data' (did you mean 'image_size'?)") == 1
    assert "Traceback" not in output and "CalledProcessError" not in output


# ------------------------------------------------------------------------------ (b) did you mean
@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"imag_size": 3}}, r"unknown key\(s\) \['imag_size'\] in section 'data' \(did you mean 'image_size'\?\)"),
        ({"optim": {"image_size": 3}}, r"in section 'optim' \(did you mean data\.image_size\?\)"),
        ({"optm": {}}, r"unknown section 'optm' \(did you mean 'optim'\?\)"),
        ({"model": {"family": "maskedclp"}}, r"model\.family='maskedclp' is not available \(did you mean 'maskedclip'\?\)"),
        ({"maskedclip": {"paired_batch": 2}}, r"\(did you mean 'paired_batch_size'\?\)"),
        ({"stages": {"text_mln": {"config": "x.yaml"}}}, r"stages\.text_mln: unknown stage \(did you mean 'text_mlm'\?\)"),
        ({"stages": {"text_mlm": {"confg": "x.yaml"}}}, r"in stages\.text_mlm \(did you mean 'config'\?\)"),
    ],
)  # fmt: skip
def test_unknown_keys_say_what_was_meant(sections, message):
    raw = {"data": {"train": [{"path": "rows.csv"}]}, "optim": {"max_steps": 10}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.max_step=3", r"has no key 'max_step' \(did you mean 'max_steps'\?\)"),
        ("optim.image_size=3", r"has no key 'image_size' \(did you mean data\.image_size\?\)"),
        ("optm.lr=1", r"unknown section 'optm' \(did you mean 'optim'\?\)"),
        ("optim.zzz=1", r"has no key 'zzz'; valid keys"),  # nothing close: no guess
    ],
)
def test_unknown_override_keys_say_what_was_meant(override, message):
    config = PretrainConfig.from_dict({"data": {"train": [{"path": "rows.csv"}]}, "optim": {"max_steps": 10}})
    with pytest.raises(ConfigError, match=message):
        config.apply_overrides([override])


# ------------------------------------------------------------------------------ (c) flags anywhere
def test_flags_may_follow_the_overrides(script):
    args = script.parse_args(
        ["--config", "x.yaml", "optim.max_steps=20", "--no-progress", "run.seed=3", "--allowed-root", "/a"]
    )
    assert args.overrides == ["optim.max_steps=20", "run.seed=3"]
    assert args.no_progress and args.allowed_roots == ["/a"] and args.config == "x.yaml"


# ------------------------------------------------------------------------------ (d) no usable records
def test_a_run_without_usable_rows_lists_the_problems_as_validate_data_does(
    script, synthetic, tmp_path, monkeypatch, capsys
):
    # The commonest layout: a manifest of absolute paths into another folder (outside its data roots).
    manifest = tmp_path / "manifests" / "pairs.csv"
    manifest.parent.mkdir()
    rows = [f"{image},a fundus photograph" for image in images_of(synthetic, 3)]
    manifest.write_text("image,text\n" + "\n".join(rows) + "\n")
    raw = tiny_pretrain_dict(tmp_path, synthetic, optim={"max_steps": 1})
    raw["data"]["train"] = [{"path": str(manifest)}]
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RETVLP_MALLOC_TUNED", "0")  # no re-exec of the test process

    assert cli_main(["validate-data", str(manifest), "--skip-images"]) == 1
    validated = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(validated) == 3 and all("outside-data-root" in line for line in validated)

    assert script.main(["--config", str(config_path), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "no usable records" in error and "--allowed-root" in error
    assert [line for line in error.splitlines() if line.startswith("  ")] == validated  # the same lines

    # the fix the message names: --allowed-root adds to data.allowed_roots, and the rows are read
    config = script.load_config(
        script.parse_args(["--config", str(config_path), "--allowed-root", str(synthetic.root)])
    )
    assert config.data.allowed_roots[-1] == str(synthetic.root)
    (read,) = read_training_manifests(config.data.train, allowed_roots=config.data.allowed_roots)
    assert len(read.records) == 3 and not read.problems


# ------------------------------------------------------------------------------ (e) warm-up longer than the run
def test_a_warmup_not_shorter_than_the_run_is_refused_with_the_fix():
    config = PretrainConfig.from_yaml(REPO / "training" / "configs" / "maskedclip_tiny_cpu.yaml")
    with pytest.raises(ConfigError) as refused:
        config.apply_overrides(["optim.max_steps=20"])  # the demo's 40 warm-up steps
    message = str(refused.value)
    assert "optim.warmup_steps=40 is not shorter than optim.max_steps=20" in message
    assert "optim.warmup_steps=2" in message  # the fix
    config.apply_overrides(["optim.max_steps=20", "optim.warmup_steps=2"])  # and it is accepted


def test_a_warmup_longer_than_an_epoch_based_run_is_refused():
    from retvlp.training.trainer import _warmup_steps

    raw = {"data": {"train": [{"path": "rows.csv"}]}, "optim": {"epochs": 1, "warmup_steps": 10}}
    with pytest.raises(
        ConfigError, match=r"optim\.warmup_steps=10 is not shorter than the run's 5 optimizer"
    ):
        _warmup_steps(PretrainConfig.from_dict(raw), total=5)
    raw["optim"] = {"epochs": 2, "warmup_epochs": 2}
    with pytest.raises(ConfigError, match=r"optim\.warmup_epochs=2 is not shorter than optim\.epochs=2"):
        _warmup_steps(PretrainConfig.from_dict(raw), total=5)
    raw["optim"] = {"epochs": 10, "warmup_epochs": 1}
    assert _warmup_steps(PretrainConfig.from_dict(raw), total=50) == 5


# ------------------------------------------------------------------------------ (f) evaluate and bad images
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from retvlp import FundusImageProcessor, MaskedCLIPModel, MaskedCLIPProcessor
    from retvlp.tokenization import tiny_tokenizer

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("newcomer") / "final"
    MaskedCLIPModel(make_tiny_config()).save_pretrained(directory)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


def test_evaluate_stops_on_images_it_cannot_use_unless_told_to_skip(
    synthetic, tiny_model_dir, tmp_path, capsys
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = [f"{p},{'normal' if i % 2 else 'glaucoma'},P{i}" for i, p in enumerate(images_of(synthetic, 16))]
    manifest = tmp_path / "eval.csv"
    manifest.write_text("image,label,patient_id\n" + "\n".join([*rows, f"{broken},normal,P99"]) + "\n")
    argv = [
        "evaluate", "--bootstrap", "20", "--model", str(tiny_model_dir), "--data", str(manifest), "--allowed-root", str(synthetic.root),
        "--task", "linear-probe", "--seeds", "0", "--fractions", "1", "--no-progress",
        "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert "1 row(s) or image(s)" in error and "broken.png" in error and "bad_image" in error
    assert "--on-bad-sample skip" in error
    assert not (tmp_path / "out" / "results.json").exists()

    assert cli_main([*argv, "--on-bad-sample", "skip"]) == 0
    error = capsys.readouterr().err
    assert "left out 1 row(s) or image(s)" in error and "broken.png" in error


# ------------------------------------------------------------------------------ (g) hf_dataset: <Dataset>
def test_an_in_memory_dataset_given_as_hf_dataset(synthetic):
    datasets = pytest.importorskip("datasets")
    images = images_of(synthetic, 6)
    dataset = datasets.Dataset.from_dict(
        {
            "image": [str(p) for p in images],
            "label": ["normal", "glaucoma"] * 3,
            "patient_id": [f"P{i}" for i in range(6)],
        }
    )
    roots = {"allowed_roots": [str(synthetic.root)]}
    as_hf = read_labelled_records({"hf_dataset": dataset, **roots})
    as_dataset = read_labelled_records({"dataset": dataset, **roots})
    assert len(as_hf) == len(as_dataset) == 6 and as_hf.class_names == as_dataset.class_names
    splits = datasets.DatasetDict({"test": dataset})
    assert len(read_labelled_records({"hf_dataset": splits, "split": "test", **roots})) == 6
    with pytest.raises(ValueError, match="got a list: pass a datasets.Dataset itself"):
        read_labelled_records({"hf_dataset": [1, 2]})
    # pretraining data names its sources (run_config.yaml, fingerprints): an object is refused with the fix
    with pytest.raises(ValueError, match=r"in-memory Dataset\. Save it first \(dataset\.save_to_disk"):
        read_training_manifests([{"hf_dataset": dataset}])
