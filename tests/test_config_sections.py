"""Run-config layout: common sections + the family's own section, type checks against the annotations,
the earlier layout (family keys under `data`) still loading, overrides into either place."""

import logging

import pytest
import yaml

from retvlp.training.config import ConfigError, PretrainConfig
from retvlp.training.keepfit_task import KeepFitSection
from retvlp.training.maskedclip_task import MaskedCLIPSection
from retvlp.training.text_mlm_task import TextMLMSection


def raw_config(family="maskedclip", **sections):
    raw = {"model": {"family": family}, "data": {"train": [{"path": "rows.csv"}]}, "optim": {"max_steps": 1}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def test_family_section_holds_the_family_keys():
    config = PretrainConfig.from_dict(
        raw_config(maskedclip={"paired_batch_size": 8, "prompt_templates": ["a photo of {}"]})
    )
    assert isinstance(config.family_settings, MaskedCLIPSection)
    assert config.family_settings.paired_batch_size == 8
    assert config.family_settings.unpaired_batch_size == 16  # default
    assert not hasattr(config.data, "paired_batch_size")  # no union of every family's keys


@pytest.mark.parametrize(
    ("family", "section_class"),
    [("maskedclip", MaskedCLIPSection), ("keepfit", KeepFitSection), ("text-mlm", TextMLMSection)],
)
def test_to_dict_round_trips_through_yaml(family, section_class):
    config = PretrainConfig.from_dict(raw_config(family))
    dumped = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert set(dumped) == {"model", "data", "optim", "run", family}
    again = PretrainConfig.from_dict(dumped)
    assert isinstance(again.family_settings, section_class)
    assert again.to_dict() == config.to_dict()


def test_earlier_layout_moves_family_keys_with_a_warning(caplog):
    raw = raw_config("keepfit", data={"categorical_batch_size": 4, "label_augmentation": 0.25})
    with caplog.at_level(logging.WARNING, logger="retvlp.training.config"):
        config = PretrainConfig.from_dict(raw)
    assert config.family_settings.categorical_batch_size == 4
    assert config.family_settings.label_augmentation == 0.25
    assert "data.categorical_batch_size is a keepfit setting" in caplog.text
    assert "'keepfit:' section" in caplog.text


def test_key_of_another_family_is_refused_with_its_owner():
    with pytest.raises(ConfigError, match=r"data\.mlm_probability is a setting of model\.family=text-mlm"):
        PretrainConfig.from_dict(raw_config("maskedclip", data={"mlm_probability": 0.2}))
    with pytest.raises(ConfigError, match=r"section 'keepfit:' belongs to model\.family=keepfit"):
        PretrainConfig.from_dict(raw_config("maskedclip", keepfit={"paired_batch_size": 2}))


def test_key_given_twice_is_refused():
    raw = raw_config("maskedclip", data={"paired_batch_size": 4}, maskedclip={"paired_batch_size": 8})
    with pytest.raises(ConfigError, match="given twice"):
        PretrainConfig.from_dict(raw)


def test_unknown_keys_and_sections_name_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['paired_batchsize'\] in section 'maskedclip'"):
        PretrainConfig.from_dict(raw_config(maskedclip={"paired_batchsize": 4}))
    with pytest.raises(ConfigError, match="unknown section 'trainer'"):
        PretrainConfig.from_dict({**raw_config(), "trainer": {}})
    with pytest.raises(ConfigError, match="model.family='clip' is not available"):
        PretrainConfig.from_dict(raw_config("clip"))


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"optim": {"lr": "fast"}}, r"optim\.lr expects a number or null, got str \('fast'\)"),
        ({"maskedclip": {"paired_batch_size": 1.5}}, r"maskedclip\.paired_batch_size expects int, got float"),
        ({"run": {"tensorboard": "yes"}}, r"run\.tensorboard expects bool, got str"),
        ({"run": {"save_every": True}}, r"run\.save_every expects int, got bool"),
        ({"data": {"train": {"path": "rows.csv"}}}, r"data\.train expects a list of mappings, got mapping"),
        ({"data": {"crop_scale": [0.5, "all"]}}, r"data\.crop_scale expects a list of numbers"),
        (
            {"maskedclip": {"prompt_templates": "a {}"}},
            r"maskedclip\.prompt_templates expects a list of strings",
        ),
        ({"model": {"config": [1]}}, r"model\.config expects a mapping or null, got list"),
    ],
)
def test_values_are_checked_against_the_annotations(sections, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_dict(raw_config(**sections))


def test_int_is_a_valid_float():
    config = PretrainConfig.from_dict(raw_config(optim={"lr": 1, "epochs": 2}))
    assert config.optim.lr == 1


def test_each_section_validates_itself():
    with pytest.raises(ConfigError, match=r"keepfit\.label_augmentation is a probability"):
        PretrainConfig.from_dict(raw_config("keepfit", keepfit={"label_augmentation": 2.0}))
    with pytest.raises(ConfigError, match=r"keepfit\.modality='MRI'"):
        PretrainConfig.from_dict(raw_config("keepfit", keepfit={"modality": "MRI"}))
    with pytest.raises(ConfigError, match=r"text-mlm\.mlm_probability must be in \(0, 1\)"):
        PretrainConfig.from_dict(raw_config("text-mlm", **{"text-mlm": {"mlm_probability": 1.0}}))
    with pytest.raises(
        ConfigError, match=r"maskedclip\.paired_batch_size and maskedclip\.unpaired_batch_size"
    ):
        PretrainConfig.from_dict(raw_config(maskedclip={"paired_batch_size": 0, "unpaired_batch_size": 0}))
    with pytest.raises(ConfigError, match="excludes model.config"):
        PretrainConfig.from_dict(raw_config("keepfit", model={"pretrained": "x", "config": {}}))
    # The dual encoders take a config plus either tower, both or neither from a checkpoint ...
    for family in ("keepfit", "maskedclip"):
        for towers in (
            {"vision_pretrained": "v"},
            {"text_pretrained": "t"},
            {"vision_pretrained": "v", "text_pretrained": "t"},
        ):
            PretrainConfig.from_dict(raw_config(family, model={"config": {}, **towers}))
    with pytest.raises(
        ConfigError,
        match=r"model\.pretrained \(a whole maskedclip checkpoint.*excludes model\.text_pretrained",
    ):
        PretrainConfig.from_dict(raw_config("maskedclip", model={"pretrained": "x", "text_pretrained": "t"}))
    # ... the families without towers refuse them, by name
    with pytest.raises(
        ConfigError, match=r"model\.vision_pretrained: model\.family=ibq-tokenizer has no vision tower"
    ):
        PretrainConfig.from_dict(raw_config("ibq-tokenizer", model={"vision_pretrained": "v"}))
    with pytest.raises(
        ConfigError, match=r"model\.text_pretrained: model\.family=text-mlm has no text tower"
    ):
        PretrainConfig.from_dict(raw_config("text-mlm", model={"text_pretrained": "t"}))
    # ... and a vocabulary trained for the run cannot feed a pretrained text tower
    with pytest.raises(ConfigError, match=r"model\.tokenizer: build trains a new vocabulary"):
        PretrainConfig.from_dict(raw_config(model={"tokenizer": "build", "text_pretrained": "t"}))


def test_overrides_reach_the_family_section_and_the_earlier_place(caplog):
    config = PretrainConfig.from_dict(raw_config())
    config.apply_overrides(["maskedclip.paired_batch_size=8", "optim.max_steps=3"])
    assert config.family_settings.paired_batch_size == 8 and config.optim.max_steps == 3
    with caplog.at_level(logging.WARNING, logger="retvlp.training.config"):
        config.apply_overrides(["data.unpaired_batch_size=5"])
    assert config.family_settings.unpaired_batch_size == 5
    assert "applied as maskedclip.unpaired_batch_size" in caplog.text
    with pytest.raises(ConfigError, match=r"maskedclip\.paired_batch_size expects int, got str"):
        config.apply_overrides(["maskedclip.paired_batch_size=many"])
    with pytest.raises(ConfigError, match=r"a setting of model\.family=keepfit"):
        PretrainConfig.from_dict(raw_config()).apply_overrides(["data.categorical_batch_size=2"])


def test_family_override_switches_to_that_family_section():
    config = PretrainConfig.from_dict(raw_config())
    config.apply_overrides(["model.family=keepfit"])
    assert isinstance(config.family_settings, KeepFitSection)
    assert "keepfit" in config.to_dict()


def test_repository_configs_use_the_new_layout():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        family = raw["model"]["family"]
        config = PretrainConfig.from_yaml(path)
        own = set(config.to_dict()[family])
        assert not own & set(raw.get("data") or {}), f"{path.name}: family keys under data:"


def test_reading_and_checking_a_run_file_imports_no_torch_transformers_or_datasets():
    """The run config and the families' sections (`<name>_section.py`) are light: a shipped recipe is read and
    checked, and a typo reported, before torch or a model is imported (a second, not the ten of an import)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    code = (
        "import json, sys\n"
        "from retvlp.training.config import ConfigError, PretrainConfig\n"
        "sections = [type(PretrainConfig.from_yaml(p).family_settings).__name__ for p in sys.argv[1:]]\n"
        "try:\n"
        "    PretrainConfig.from_dict({'data': {'train': [], 'bach_size': 3}}, source='typo')\n"
        "except ConfigError as error:\n"
        "    message = str(error)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "print(json.dumps({'sections': sections, 'message': message, 'heavy': heavy}))\n"
    )
    files = [configs / "maskedclip_small_cpu.yaml", configs / "keepfit_resnet50.yaml"]
    done = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sections"] == ["MaskedCLIPSection", "KeepFitSection"]
    assert "unknown key(s) ['bach_size'] in section 'data'" in report["message"]
    assert report["heavy"] == []
