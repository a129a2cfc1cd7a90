"""Pretraining streamed from prepared shard sets (`data.train: [{shards: URL}]`).

- A run streamed from fsspec's in-memory filesystem, stopped and resumed (from a `file://` URL of the same
  shards, with DataLoader workers), ends bit-identical to the straight run; a resume with other stream
  settings is refused, naming the stream.
- Two `accelerate launch` invocations on localhost (`--num_machines 2 --machine_rank 0/1`, gloo on CPU)
  stream from the shards and match a 1-process run on the same global batch; killed both, relaunched with
  `--resume latest`, they end with the straight run's weights.
- A truncated shard is fatal or skipped by `data.on_bad_sample`, its rows listed by shard and member.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import psutil
import pytest
import torch
import yaml
from conftest import free_port, launch_ranks, pretrain_script, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.data.cache import ImageGeometry
from retvlp.data.manifest import read_manifests
from retvlp.data.shards import prepare_shards
from retvlp.training import ConfigError, PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]
LOGGED = ("loss", "loss_mim", "loss_clip", "loss_mfd", "grad_norm", "lr")


@pytest.fixture(scope="module")
def shard_dir(synthetic, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("streaming") / "shards"
    manifests = read_manifests(
        [
            {"path": str(synthetic.paired)},
            {"path": str(synthetic.categorical)},
            {"path": str(synthetic.unpaired)},
        ]
    )
    prepare_shards(
        manifests, output, geometry=ImageGeometry(size=32), shard_size=8, num_proc=1, show_progress=False
    )
    return output


def _streaming_dict(tmp_path, synthetic, name, url, **sections) -> dict:
    raw = tiny_pretrain_dict(tmp_path, synthetic, name, **sections)
    raw["data"]["train"] = [{"shards": url}]
    raw["data"].update(stream_readers=2, shuffle_buffer=6)
    raw.setdefault("maskedclip", {}).setdefault("unpaired_batch_size", 3)
    if raw["maskedclip"]["unpaired_batch_size"] == 3:  # the tiny run's 3 does not split over 2 readers
        raw["data"]["stream_readers"] = {"paired": 2, "unpaired": 3}
    return raw


def _logs(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def test_a_stream_resumes_bit_identically(tmp_path, synthetic, shard_dir):
    memory = fsspec.filesystem("memory")
    for path in shard_dir.iterdir():
        memory.pipe_file(f"/stream-test/{path.name}", path.read_bytes())
    try:
        run = dict(optim={"max_steps": 6, "gradient_accumulation_steps": 1, "warmup_steps": 1})
        straight = pretrain(
            PretrainConfig.from_dict(
                _streaming_dict(tmp_path, synthetic, "straight", "memory://stream-test", **run)
            ),
            show_progress=False,
        )
        raw = _streaming_dict(tmp_path, synthetic, "resumed", f"file://{shard_dir}", **run)
        pretrain(PretrainConfig.from_dict(raw), show_progress=False, stop_after=3)
        state = json.loads(
            (Path(raw["run"]["output_dir"]) / "checkpoint-3" / "trainer_state.json").read_text()
        )
        positions = state["stream_positions"]
        assert set(positions) == {"paired", "unpaired"} and positions["paired"]["readers"] == 2
        assert [p["offset"] for p in positions["paired"]["positions"]] == [
            6,
            6,
        ]  # 3 steps × 4 rows / 2 readers

        other = dict(raw, data=dict(raw["data"], shuffle_buffer=5))
        with pytest.raises(ValueError, match="stream 'paired' cannot resume exactly"):
            pretrain(PretrainConfig.from_dict(other), resume="latest", show_progress=False)

        raw["data"].update(train=[{"shards": "memory://stream-test"}], num_workers=2)
        resumed = pretrain(PretrainConfig.from_dict(raw), resume="latest", show_progress=False)
    finally:
        memory.rm("/stream-test", recursive=True)
    untimed = [
        [{k: v for k, v in e.items() if k != "samples_per_s"} for e in _logs(r.output_dir)]
        for r in (resumed, straight)
    ]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 6
    a, b = _weights(straight.output_dir / "checkpoint-6"), _weights(resumed.output_dir / "checkpoint-6")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_settings_are_checked(tmp_path, synthetic, shard_dir):
    raw = _streaming_dict(tmp_path, synthetic, "mixed", str(shard_dir))
    raw["data"]["train"].append({"path": str(synthetic.paired)})
    with pytest.raises(ConfigError, match="mixes shard sets"):
        PretrainConfig.from_dict(raw)
    raw = _streaming_dict(tmp_path, synthetic, "geometry", str(shard_dir), optim={"max_steps": 1})
    raw["data"]["image_size"] = 48
    # the model at 48 px too: a model.config that contradicts data.image_size is refused before any data is read
    raw["model"]["config"]["vision_config"] = {**raw["model"]["config"]["vision_config"], "image_size": 48}
    with pytest.raises(ValueError, match=r"prepared with \{'size': 32.*data.image_size"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    raw = _streaming_dict(tmp_path, synthetic, "readers", str(shard_dir), optim={"max_steps": 1})
    raw["data"]["stream_readers"] = 3
    with pytest.raises(ValueError, match="stream_readers=3 must be a multiple"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)


def test_a_truncated_shard_is_fatal_or_skipped_and_listed(tmp_path, synthetic, shard_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in shard_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    tar = broken / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[:-2048])
    raw = _streaming_dict(
        tmp_path, synthetic, "fatal", str(broken), optim={"max_steps": 1, "warmup_steps": 0}
    )
    with pytest.raises(ValueError, match="shard-00001.tar: truncated-shard"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    raw = _streaming_dict(tmp_path, synthetic, "skip", str(broken), optim={"max_steps": 1, "warmup_steps": 0})
    raw["data"]["on_bad_sample"] = "skip"
    result = pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    rows_in_shard = json.loads((broken / "index.json").read_text())["shards"][1]["rows"]
    listed = [
        json.loads(line) for line in (result.output_dir / "skipped_samples.jsonl").read_text().splitlines()
    ]
    assert len(listed) == rows_in_shard
    assert all(
        "shard-00001.tar:" in entry["image"] and "truncated-shard" in entry["problems"][0] for entry in listed
    )
    summary = json.loads((result.output_dir / "final" / "training_summary.json").read_text())
    assert summary["skipped_samples"] == rows_in_shard


# ---------------------------------------------------------------------------------------------- two machines


def _launch_two_machines(config_path: Path, *extra: str) -> list[subprocess.Popen]:
    """`accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1` for R = 0, 1: one
    process per "machine", gloo over localhost."""
    environment = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RETVLP_MALLOC_TUNED": "0",
        "PYTHONPATH": str(REPO / "src"),
    }
    port = str(free_port())
    launched = []
    for rank in (0, 1):
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
            str(REPO / "training" / "pretrain.py"), "--config", str(config_path), "--no-progress", *extra,
        ]  # fmt: skip
        launched.append(
            subprocess.Popen(
                command,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return launched


def test_two_machines_on_localhost_match_one_process_and_resume_after_a_kill(tmp_path, synthetic, shard_dir):
    # 30 steps: several passes over the shards, and 26 steps of margin between checkpoint-4 and the kill
    run = dict(optim={"max_steps": 30, "gradient_accumulation_steps": 1, "warmup_steps": 2})
    single = _streaming_dict(
        tmp_path,
        synthetic,
        "single",
        str(shard_dir),
        maskedclip={"paired_batch_size": 4, "unpaired_batch_size": 2},
        **run,
    )
    single["run"]["save_every"] = 4
    single_result = pretrain(PretrainConfig.from_dict(single), show_progress=False)

    raw = _streaming_dict(
        tmp_path,
        synthetic,
        "nodes",
        f"file://{shard_dir}",
        maskedclip={"paired_batch_size": 2, "unpaired_batch_size": 1},
        **run,
    )
    raw["run"]["save_every"] = 4
    config_path = tmp_path / "nodes.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    output_dir = Path(raw["run"]["output_dir"])

    launched = _launch_two_machines(config_path)
    deadline = time.time() + 240
    while not (output_dir / "checkpoint-4").exists():
        assert time.time() < deadline and all(p.poll() is None for p in launched), (
            "no checkpoint-4 before the kill"
        )
        time.sleep(0.05)
    for (
        process
    ) in launched:  # kill both machines: launcher and workers (torch's agent starts them in new sessions)
        tree = psutil.Process(process.pid)
        for member in [*tree.children(recursive=True), tree]:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGKILL)
    for process in launched:
        process.communicate()
    assert not (output_dir / "final").exists(), "the run ended before it was killed"
    killed_at = len(_logs(output_dir))
    assert killed_at < 30

    # The resume on ranks forked as the launcher starts them on two machines (the launch above is the real one;
    # a relaunch would import torch and transformers in four more interpreters)
    resumed = launch_ranks(
        pretrain_script().main,
        ["--config", str(config_path), "--no-progress", "--resume", "latest"],
        machines=2,
        env={"PYTHONPATH": str(REPO / "src")},
    )
    assert resumed.returncodes == [0, 0], (resumed.stdout + resumed.stderr)[-4000:]
    one, two = _logs(single_result.output_dir), _logs(output_dir)
    assert [entry["step"] for entry in two] == list(range(1, 31))
    for a, b in zip(one, two, strict=True):
        for key in LOGGED:
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (a["step"], key)
    summary = json.loads((output_dir / "final" / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    a, b = _weights(single_result.output_dir / "checkpoint-30"), _weights(output_dir / "checkpoint-30")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.parametrize("name", ["fsdp_vitl16", "deepspeed_zero2_vitl16", "multinode_cpu_localhost"])
def test_the_documented_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "training" / "accelerate" / f"{name}.yaml"))
    expected = {
        "fsdp_vitl16": "FSDP",
        "deepspeed_zero2_vitl16": "DEEPSPEED",
        "multinode_cpu_localhost": "MULTI_CPU",
    }
    assert str(config.distributed_type).endswith(expected[name])
    if name == "fsdp_vitl16":  # the layer classes it wraps exist under these names
        from transformers.models.bert.modeling_bert import BertLayer
        from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer

        from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPLayer

        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert wrapped == [MaskedCLIPLayer.__name__, ViTMAELayer.__name__, BertLayer.__name__]


@pytest.mark.parametrize("family", ["keepfit", "ibq-tokenizer"])
def test_the_other_image_families_stream_and_resume_exactly(tmp_path, synthetic, family):
    from test_pretrain_keepfit import ibq_dict, keepfit_dict

    output = tmp_path / "shards"
    manifests = read_manifests(
        [
            {"path": str(synthetic.paired)},
            {"path": str(synthetic.categorical)},
            {"path": str(synthetic.unpaired)},
        ]
    )
    geometry = ImageGeometry(size=32, pad_to_square=family == "keepfit")
    prepare_shards(manifests, output, geometry=geometry, shard_size=8, num_proc=1, show_progress=False)

    def config(name: str) -> PretrainConfig:
        raw = (keepfit_dict if family == "keepfit" else ibq_dict)(tmp_path, synthetic, name)
        raw["data"]["train"] = [{"shards": f"file://{output}"}]
        raw["data"]["shuffle_buffer"] = 5
        raw["optim"].update(max_steps=4, gradient_accumulation_steps=1, warmup_steps=1)
        raw["run"].update(save_every=2)
        return PretrainConfig.from_dict(raw)

    straight = pretrain(config("straight"), show_progress=False)
    pretrain(config("resumed"), show_progress=False, stop_after=2)
    resumed = pretrain(config("resumed"), resume="latest", show_progress=False)
    assert "stream_positions" in json.loads(
        (resumed.output_dir / "checkpoint-4" / "trainer_state.json").read_text()
    )
    a, b = _weights(straight.output_dir / "checkpoint-4"), _weights(resumed.output_dir / "checkpoint-4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
