"""Whole recipes in one command (`stages:`, retvlp/training/stages.py): a tiny KeepFIT run that declares its IBQ
codebook and text-MLM stages trains all three in one call, reuses finished stages, refuses a changed one (naming
the key) unless told to rerun it, and a chain killed during its second stage and restarted equals a straight
chain bit for bit."""

import copy
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_pretrain_keepfit import TINY_BERT, ibq_dict, keepfit_dict

from retvlp.training import ConfigError, PretrainConfig, pretrain
from retvlp.training.stages import CAPTIONS_FILE, RECORD_FILE, StageMismatchError
from retvlp.training.text_mlm_task import TextMLMTask

REPO = Path(__file__).resolve().parents[1]


def _stage_files(tmp_path, synthetic) -> tuple[Path, Path]:
    """Tiny stage run files: an IBQ tokenizer (2 steps) and a text MLM (4 steps, checkpoints at 2 and 4). Their
    own data sections are placeholders: the recipe trains them on the main run's images / captions."""
    ibq = ibq_dict(tmp_path, synthetic, "unused_ibq")
    ibq["run"].pop("output_dir")
    mlm = {
        "model": {"family": "text-mlm", "tokenizer": "build", "tokenizer_vocab_size": 150, "max_text_length": 32,
                  "config": dict(TINY_BERT)},
        "data": {"train": [{"path": "captions_of_the_run.jsonl"}], "num_workers": 0},
        "text-mlm": {"text_batch_size": 4},
        "optim": {"lr": 1e-3, "max_steps": 4, "warmup_steps": 1},
        "run": {"save_every": 2, "log_every": 1, "evaluate": False, "tensorboard": False, "num_threads": 1},
    }  # fmt: skip
    paths = tmp_path / "ibq_stage.yaml", tmp_path / "mlm_stage.yaml"
    for path, raw in zip(paths, (ibq, mlm), strict=True):
        path.write_text(yaml.safe_dump(raw))
    return paths


def recipe_dict(tmp_path, synthetic, name="recipe") -> dict:
    """The tiny KeepFIT run (2 steps) that declares both stages and sets none of the keys they supply."""
    ibq_file, mlm_file = _stage_files(tmp_path, synthetic)
    raw = keepfit_dict(
        tmp_path,
        synthetic,
        name,
        optim={"max_steps": 2, "gradient_accumulation_steps": 1},
        run={"save_every": 2},
    )
    raw["model"] = {
        "family": "keepfit",
        "max_text_length": 32,
        "config": {"vision_config": raw["model"]["config"]["vision_config"], "projection_dim": 16,
                   "codebook_size": 32, "code_dim": 8},
    }  # fmt: skip
    raw["stages"] = {"ibq_tokenizer": {"config": str(ibq_file)}, "text_mlm": {"config": str(mlm_file)}}
    return raw


def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _mtimes(run_dir: Path) -> dict:
    return {
        name: (run_dir / "stages" / name / "final" / "model.safetensors").stat().st_mtime_ns
        for name in ("ibq_tokenizer", "text_mlm")
    }


def test_one_call_runs_the_stages_then_reuses_refuses_and_reruns_them(tmp_path, synthetic, caplog):
    raw = recipe_dict(tmp_path, synthetic)
    result = pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    run_dir = tmp_path / "recipe"
    stages = run_dir / "stages"
    # all three trained, in one call; each stage's final/ wired into the run
    assert result.steps == 2 and (result.final_dir / "model.safetensors").is_file()
    for name, steps in (("ibq_tokenizer", 2), ("text_mlm", 4)):
        record = json.loads((stages / name / RECORD_FILE).read_text())
        assert record["status"] == "finished" and record["config"]["optim.max_steps"] == steps
        logs = [json.loads(x) for x in (stages / name / "logs.jsonl").read_text().splitlines()]
        assert logs[-1]["step"] == steps
    run_config = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    assert run_config["model"]["config"]["ibq_tokenizer_path"] == str(stages / "ibq_tokenizer" / "final")
    assert run_config["model"]["text_pretrained"] == str(stages / "text_mlm" / "final")
    assert run_config["model"]["tokenizer"] == str(stages / "text_mlm" / "final")
    # the IBQ stage read the run's images (its own data section named none); the MLM stage the run's captions
    ibq_record = json.loads((stages / "ibq_tokenizer" / RECORD_FILE).read_text())
    assert ibq_record["config"]["data.train"] == raw["data"]["train"]
    assert set(ibq_record["data"]) == {spec["path"] for spec in raw["data"]["train"]}
    captions = [json.loads(x)["text"] for x in (stages / "text_mlm" / CAPTIONS_FILE).read_text().splitlines()]
    paired = [json.loads(x) for x in Path(synthetic.paired).read_text().splitlines() if x.strip()]
    assert captions == [row["text"].strip() for row in paired if row.get("text")]
    # the KeepFIT text tower starts from the MLM stage and the codebook is the IBQ stage's
    codebook = _weights(stages / "ibq_tokenizer" / "final")["quantizer.codebook"]
    assert torch.equal(_weights(run_dir / "checkpoint-2")["appearance_quantizer.codebook"], codebook)

    # a second call reuses both stages: nothing of theirs is written again
    before = _mtimes(run_dir)
    with caplog.at_level(logging.INFO, logger="retvlp.training.stages"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    assert _mtimes(run_dir) == before
    assert caplog.text.count("reusing") == 2

    # a changed stage config is refused, naming the key and both values; nothing is trained
    changed = copy.deepcopy(raw)
    changed["stages"]["text_mlm"]["overrides"] = {"optim.max_steps": 3}
    with pytest.raises(
        StageMismatchError, match=r"stages\.text_mlm: .*optim\.max_steps: 4 -> 3.*--rerun-stages"
    ):
        pretrain(PretrainConfig.from_dict(changed), show_progress=False)
    assert _mtimes(run_dir) == before
    # ... and with --rerun-stages text_mlm it trains again (3 steps); the IBQ stage is still reused
    pretrain(PretrainConfig.from_dict(changed), show_progress=False, rerun_stages="text_mlm")
    after = _mtimes(run_dir)
    assert after["ibq_tokenizer"] == before["ibq_tokenizer"] and after["text_mlm"] != before["text_mlm"]
    logs = [json.loads(x) for x in (stages / "text_mlm" / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    # --resume of the run over a stage trained again in the same call: its checkpoints are stale, refused
    with pytest.raises(ConfigError, match=r"trained over the earlier outputs of stages \['text_mlm'\]"):
        pretrain(
            PretrainConfig.from_dict(changed), show_progress=False, rerun_stages="text_mlm", resume="latest"
        )
    after = _mtimes(run_dir)
    # the corpus is the run's captions, rewritten from its data at every call: an edit by hand is undone
    (stages / "text_mlm" / CAPTIONS_FILE).write_text('{"text": "edited"}\n')
    pretrain(PretrainConfig.from_dict(changed), show_progress=False)
    assert _mtimes(run_dir)["text_mlm"] == after["text_mlm"]


def test_a_chain_killed_in_its_second_stage_resumes_to_the_straight_chain(tmp_path, synthetic, monkeypatch):
    straight = pretrain(
        PretrainConfig.from_dict(recipe_dict(tmp_path, synthetic, "straight")), show_progress=False
    )

    raw = recipe_dict(tmp_path, synthetic, "killed")
    calls = {"n": 0}
    original = TextMLMTask.training_forward

    def dies_in_step_3(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 3:  # the MLM stage's step 3: checkpoint-2 is written, the IBQ stage finished
            raise KeyboardInterrupt("killed")
        return original(self, model, batch, device)

    monkeypatch.setattr(TextMLMTask, "training_forward", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    monkeypatch.setattr(TextMLMTask, "training_forward", original)
    stages = tmp_path / "killed" / "stages"
    assert json.loads((stages / "ibq_tokenizer" / RECORD_FILE).read_text())["status"] == "finished"
    assert json.loads((stages / "text_mlm" / RECORD_FILE).read_text())["status"] == "started"
    assert not (stages / "text_mlm" / "final").exists() and (stages / "text_mlm" / "checkpoint-2").is_dir()
    ibq_mtime = (stages / "ibq_tokenizer" / "final" / "model.safetensors").stat().st_mtime_ns

    # the same command again: the IBQ stage is reused, the MLM stage resumes from step 2, then KeepFIT trains
    resumed = pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    assert (stages / "ibq_tokenizer" / "final" / "model.safetensors").stat().st_mtime_ns == ibq_mtime
    logs = [json.loads(x) for x in (stages / "text_mlm" / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    for part in ("stages/ibq_tokenizer/final", "stages/text_mlm/final", "final", "checkpoint-2"):
        assert _equal(_weights(straight.output_dir / part), _weights(resumed.output_dir / part)), part


def test_stage_declarations_are_checked(tmp_path, synthetic):
    raw = recipe_dict(tmp_path, synthetic)
    bad = copy.deepcopy(raw)
    bad["stages"]["codebook"] = {"config": "x.yaml"}
    with pytest.raises(ConfigError, match=r"stages\.codebook: unknown stage"):
        PretrainConfig.from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["stages"]["text_mlm"]["overide"] = {}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['overide'\] in stages\.text_mlm"):
        PretrainConfig.from_dict(bad)
    maskedclip = {k: v for k, v in raw.items() if k != "keepfit"}
    maskedclip["model"] = {"family": "maskedclip"}
    with pytest.raises(ConfigError, match=r"stages\.ibq_tokenizer .*model\.family=maskedclip"):
        PretrainConfig.from_dict(maskedclip)
    # overrides reach into the stages; null drops one
    config = PretrainConfig.from_dict(raw)
    config.apply_overrides(["stages.text_mlm.overrides.optim.max_steps=7", "stages.ibq_tokenizer=null"])
    assert (
        config.stages["text_mlm"]["overrides"] == {"optim.max_steps": 7}
        and "ibq_tokenizer" not in config.stages
    )
    # a stage whose key the run already sets is not run: the given value wins
    given = copy.deepcopy(raw)
    given["model"]["config"]["ibq_tokenizer_path"] = str(tmp_path / "elsewhere")
    given["stages"] = {"ibq_tokenizer": raw["stages"]["ibq_tokenizer"]}
    from retvlp.training.stages import run_stages

    ran = []
    wired, trained = run_stages(PretrainConfig.from_dict(given), lambda stage, resume: ran.append(stage))
    assert ran == trained == [] and wired.model.config["ibq_tokenizer_path"] == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="not among this run's stages"):
        run_stages(PretrainConfig.from_dict(raw), lambda stage, resume: None, rerun="codebook")


def test_the_entry_point_takes_rerun_stages_and_the_shipped_recipes_declare_their_stages(monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped run files name their stages from the repository root
    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "training" / "pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(
        ["--config", "x.yaml", "--rerun-stages", "text_mlm,ibq_tokenizer", "optim.max_steps=3"]
    )
    assert args.rerun_stages == "text_mlm,ibq_tokenizer" and args.overrides == ["optim.max_steps=3"]
    from retvlp.training.stages import resolve_stage_config

    for name in ("keepfit_tiny_cpu", "keepfit_small_cpu", "keepfit_resnet50"):
        config = PretrainConfig.from_yaml(REPO / "training" / "configs" / f"{name}.yaml")
        assert set(config.stages) == {"ibq_tokenizer", "text_mlm"}, name
        assert config.model.text_pretrained is None and "ibq_tokenizer_path" not in (
            config.model.config or {}
        )
        for stage in config.stages:
            resolved = resolve_stage_config(config, stage)
            assert resolved.run.output_dir == str(Path(config.run.output_dir) / "stages" / stage)
    # the MaskedCLIP CPU recipe starts its text tower from an MLM stage sized like the tower it replaces
    config = PretrainConfig.from_yaml(REPO / "training" / "configs" / "maskedclip_small_cpu.yaml")
    assert set(config.stages) == {"text_mlm"} and config.model.tokenizer is None
    assert "text_config" not in config.model.config  # the sizes come from the stage's checkpoint
    stage = resolve_stage_config(config, "text_mlm")
    assert stage.model.config["intermediate_size"] == 256 and stage.model.tokenizer_vocab_size == 2000
    assert stage.model.max_text_length == config.model.max_text_length


def test_two_processes_run_the_chain_under_one_launcher_and_refuse_a_changed_stage_together(
    tmp_path, synthetic
):
    from test_pretrain_multiprocess import pretrain_on_two_processes

    raw = recipe_dict(tmp_path, synthetic, "two")
    config_path = tmp_path / "two.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    completed = pretrain_on_two_processes(config_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    run_dir = tmp_path / "two"
    for name in ("ibq_tokenizer", "text_mlm"):
        record = json.loads((run_dir / "stages" / name / RECORD_FILE).read_text())
        assert record["status"] == "finished"
        summary = json.loads((run_dir / "stages" / name / "final" / "training_summary.json").read_text())
        assert summary["world_size"] == 2
    assert (run_dir / "final" / "model.safetensors").is_file()

    # a changed stage: both processes stop with the named difference (none waits forever), nothing retrained
    before = _mtimes(run_dir)
    raw["stages"]["ibq_tokenizer"]["overrides"] = {"optim.lr": 0.002}
    config_path.write_text(yaml.safe_dump(raw))
    completed = pretrain_on_two_processes(config_path)
    assert completed.returncode != 0
    assert "optim.lr: 0.001 -> 0.002" in completed.stderr
    assert _mtimes(run_dir) == before


def test_a_maskedclip_run_starts_its_text_tower_from_its_mlm_stage(tmp_path, synthetic):
    """The MaskedCLIP-with-MLM-text recipe: text MLM on the run's captions → MaskedCLIP, in one call."""
    from conftest import tiny_pretrain_dict
    from transformers import AutoTokenizer, BertForMaskedLM

    from retvlp.training.maskedclip_task import MaskedCLIPTask

    _, mlm_file = _stage_files(tmp_path, synthetic)
    raw = tiny_pretrain_dict(
        tmp_path, synthetic, "maskedclip", optim={"max_steps": 1, "gradient_accumulation_steps": 1}
    )
    raw["model"].pop("tokenizer")  # the MLM stage's
    raw["model"]["config"].pop("text_config")  # the MLM stage's tower, its size from its checkpoint
    raw["stages"] = {"text_mlm": {"config": str(mlm_file)}}
    result = pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    assert result.steps == 1
    mlm_final = tmp_path / "maskedclip" / "stages" / "text_mlm" / "final"
    wired = PretrainConfig.from_yaml(tmp_path / "maskedclip" / "run_config.yaml")
    assert wired.model.text_pretrained == wired.model.tokenizer == str(mlm_final) and not wired.stages
    model = MaskedCLIPTask().build_model(wired, AutoTokenizer.from_pretrained(mlm_final))
    trained = BertForMaskedLM.from_pretrained(mlm_final).bert.state_dict()
    text_tower = model.released_model.text_model.state_dict()
    shared = [key for key in text_tower if key in trained]
    assert len(shared) >= len(text_tower) - 2  # all but BERT's pooler, which MLM does not train
    for key in shared:
        assert torch.equal(text_tower[key], trained[key]), key


def test_the_chain_equals_the_three_runs_by_hand(tmp_path, synthetic):
    """One call with `stages:` trains what the three commands of the stage-by-stage recipe train, bit for bit."""
    chained = pretrain(
        PretrainConfig.from_dict(recipe_dict(tmp_path, synthetic, "chained")), show_progress=False
    )

    ibq_file, mlm_file = _stage_files(tmp_path, synthetic)
    ibq = yaml.safe_load(ibq_file.read_text())
    ibq["run"]["output_dir"] = str(tmp_path / "by_hand_ibq")
    ibq_final = pretrain(PretrainConfig.from_dict(ibq), show_progress=False).final_dir
    mlm = yaml.safe_load(mlm_file.read_text())
    mlm["data"]["train"] = [{"path": str(synthetic.paired), "text_column": "text"}]
    mlm["run"]["output_dir"] = str(tmp_path / "by_hand_mlm")
    mlm_final = pretrain(PretrainConfig.from_dict(mlm), show_progress=False).final_dir
    raw = recipe_dict(tmp_path, synthetic, "by_hand")
    del raw["stages"]
    raw["model"].update(tokenizer=str(mlm_final), text_pretrained=str(mlm_final))
    raw["model"]["config"]["ibq_tokenizer_path"] = str(ibq_final)
    by_hand = pretrain(PretrainConfig.from_dict(raw), show_progress=False)

    stages = chained.output_dir / "stages"
    assert _equal(_weights(stages / "ibq_tokenizer" / "final"), _weights(ibq_final))
    assert _equal(_weights(stages / "text_mlm" / "final"), _weights(mlm_final))
    assert _equal(
        _weights(chained.output_dir / "checkpoint-2"), _weights(by_hand.output_dir / "checkpoint-2")
    )


def test_a_stage_named_by_a_relative_or_an_absolute_output_dir_matches_its_record(tmp_path, monkeypatch):
    """The text-MLM stage trains on `<stage folder>/run_captions.jsonl`; its record keeps the path as the run
    named it. The same folder reached through a relative `run.output_dir` (or an absolute one) is the same
    stage, so a later run must not refuse it; a file outside the stage folder still counts by its path."""
    from retvlp.training.stages import differences

    monkeypatch.chdir(tmp_path)
    directory = Path("runs/a/stages/text_mlm")
    absolute = str((tmp_path / directory / "run_captions.jsonl").absolute())
    relative = str(directory / "run_captions.jsonl")
    fingerprint = {"bytes": 10, "sha256": "0" * 64}
    record = {
        "config": {"data.train": [{"path": absolute, "text_column": "text"}], "optim.lr": 1e-3},
        "data": {absolute: fingerprint},
    }
    now = {"data.train": [{"path": relative, "text_column": "text"}], "optim.lr": 1e-3}
    assert differences(record, now, {relative: fingerprint}, directory) == []
    assert differences(record, now, {relative: fingerprint}) != []  # without the folder: compared as written
    elsewhere = {"data.train": [{"path": "/data/other.jsonl", "text_column": "text"}], "optim.lr": 1e-3}
    diffs = differences(record, elsewhere, {"/data/other.jsonl": fingerprint}, directory)
    assert [key for key, _, _ in diffs] == [
        "data.train",
        "data file /data/other.jsonl",
        "data file <stage>/run_captions.jsonl",
    ]
