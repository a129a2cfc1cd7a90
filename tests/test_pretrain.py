"""The pretraining loop: exact resume, atomic checkpoints, NaN stop, bad-sample policies, final checkpoint."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.data.validation import DataValidationError
from retvlp.training import NonFiniteLossError, PretrainConfig, pretrain
from retvlp.training.checkpointing import checkpoint_steps, latest_checkpoint


def tiny_run(tmp_path, synthetic, name="run", **sections) -> PretrainConfig:
    return PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, name, **sections), source="test")


def _tensors(path):
    return load_file(str(path))


def test_straight_run_equals_interrupted_and_resumed_run_bit_for_bit(tmp_path, synthetic):
    straight = pretrain(tiny_run(tmp_path, synthetic, "straight"), show_progress=False)
    assert straight.steps == 6

    config = tiny_run(tmp_path, synthetic, "resumed")
    partial = pretrain(config, show_progress=False, stop_after=3)
    assert partial.steps == 3 and not partial.final_dir.exists()
    assert [step for step, _ in checkpoint_steps(config.run.output_dir)] == [3]
    resumed = pretrain(config, resume="latest", show_progress=False)
    assert resumed.steps == 6

    a = _tensors(straight.output_dir / "checkpoint-6" / "model.safetensors")
    b = _tensors(resumed.output_dir / "checkpoint-6" / "model.safetensors")
    assert any(k.startswith("momentum_vision_model.") for k in a)  # training checkpoints keep M̂
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    optimizer_a = torch.load(straight.output_dir / "checkpoint-6" / "optimizer.bin", weights_only=True)
    optimizer_b = torch.load(resumed.output_dir / "checkpoint-6" / "optimizer.bin", weights_only=True)
    for index, state in optimizer_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], optimizer_b["state"][index]["exp_avg_sq"])
    logs_a = [json.loads(x) for x in (straight.output_dir / "logs.jsonl").read_text().splitlines()]
    logs_b = [json.loads(x) for x in (resumed.output_dir / "logs.jsonl").read_text().splitlines()]
    drop = ("samples_per_s",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in logs_a] == [
        {k: v for k, v in e.items() if k not in drop} for e in logs_b
    ]
    assert [e["step"] for e in logs_a] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "loss_mim", "loss_clip", "loss_mfd", "lr", "samples_per_s"} <= set(logs_a[0])


def test_final_checkpoint_loads_with_auto_classes(tmp_path, synthetic):
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

    from retvlp import MaskedCLIPForPreTraining, MaskedCLIPModel

    result = pretrain(tiny_run(tmp_path, synthetic, optim={"max_steps": 2}), show_progress=False)
    model = AutoModel.from_pretrained(result.final_dir)
    assert type(model) is MaskedCLIPModel
    processor = AutoProcessor.from_pretrained(result.final_dir)
    trained = _tensors(result.output_dir / "checkpoint-2" / "model.safetensors")
    final = _tensors(result.final_dir / "model.safetensors")
    # final/ is the released model: no decoders, no momentum encoder (they stay in training checkpoints only)
    assert set(final) == set(model.state_dict())
    assert not any(k.startswith(("momentum_", "pixel_decoder.", "feature_decoder.")) for k in final)
    assert any(k.startswith("momentum_vision_model.") for k in trained)
    assert len(final) < len(trained)
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[f"maskedclip.{name}"]), name
    # pretraining can continue from final/: the released weights load, the momentum encoder restarts as a copy
    continued = AutoModelForPreTraining.from_pretrained(result.final_dir)
    assert type(continued) is MaskedCLIPForPreTraining
    for name, value in model.state_dict().items():
        assert torch.equal(continued.maskedclip.state_dict()[name], value), name
    for online, momentum in continued._online_and_momentum_pairs():
        assert torch.equal(online, momentum)
    inputs = processor(text=["a fundus photograph of glaucoma"], images=[torch.zeros(3, 32, 32)])
    assert model(**inputs).logits_per_image.shape == (1, 1)
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


def test_kill_during_save_leaves_previous_checkpoint_as_latest(tmp_path, synthetic, monkeypatch):
    from accelerate import Accelerator

    config = tiny_run(tmp_path, synthetic)
    original = Accelerator.save_state
    calls = {"n": 0}

    def dying_save_state(self, output_dir=None, **kwargs):
        calls["n"] += 1
        result = original(self, output_dir, **kwargs)
        if calls["n"] == 2:  # the step-6 save has written its files, the rename has not happened
            raise KeyboardInterrupt("killed during save")
        return result

    monkeypatch.setattr(Accelerator, "save_state", dying_save_state)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, show_progress=False)
    output = tmp_path / "run"
    assert latest_checkpoint(output).name == "checkpoint-3"
    assert (output / ".staging-checkpoint-6").exists()
    monkeypatch.setattr(Accelerator, "save_state", original)
    result = pretrain(config, resume="latest", show_progress=False)
    assert result.steps == 6 and latest_checkpoint(output).name == "checkpoint-6"
    assert not list(output.glob(".staging-*"))


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path, synthetic, monkeypatch):
    from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPForPreTraining

    original = MaskedCLIPForPreTraining.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 9:  # micro-step 9 = optimizer step 5
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedCLIPForPreTraining, "forward", poisoned)
    config = tiny_run(tmp_path, synthetic)
    with pytest.raises(NonFiniteLossError, match=r"step 5.*checkpoint-3"):
        pretrain(config, show_progress=False)
    assert [step for step, _ in checkpoint_steps(config.run.output_dir)] == [3]


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_nonfinite_gradient_with_a_finite_loss_is_never_applied(
    tmp_path, synthetic, monkeypatch, max_grad_norm
):
    """A NaN gradient behind a finite loss, with clipping off or on: the run stops before optimizer.step(), no
    checkpoint holds the poisoned update, and the message (nothing applied, last good checkpoint) is true."""
    from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPForPreTraining

    original = MaskedCLIPForPreTraining.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 9:  # micro-step 9 = optimizer step 5
            # sqrt at 0: the value 0 leaves the loss finite, its infinite slope makes every gradient NaN
            out.loss = out.loss + torch.sqrt(self.maskedclip.logit_scale * 0.0)
        return out

    monkeypatch.setattr(MaskedCLIPForPreTraining, "forward", poisoned)
    config = tiny_run(tmp_path, synthetic, optim={"max_grad_norm": max_grad_norm})
    with pytest.raises(NonFiniteLossError, match=r"step 5.*Nothing was applied.*checkpoint-3"):
        pretrain(config, show_progress=False)
    assert [step for step, _ in checkpoint_steps(config.run.output_dir)] == [3]
    weights = _tensors(tmp_path / "run" / "checkpoint-3" / "model.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_bad_samples_stop_the_run_or_are_skipped_and_listed(tmp_path, synthetic):
    manifest = tmp_path / "extra.jsonl"
    good = json.loads(synthetic.paired.read_text().splitlines()[0])
    image = synthetic.paired.parent / good["image"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[:200])
    rows = [
        {"image": str(tmp_path / "missing.png"), "text": "a fundus"},
        {"image": str(broken), "text": "a fundus"},
        {"image": str(image), "text": "   "},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = [{"path": str(synthetic.paired)}, {"path": str(manifest)}]
    # the run-wide data root: extra.jsonl (in tmp_path) names an image of the synthetic set
    roots = [str(synthetic.root)]
    with pytest.raises(DataValidationError) as error:
        pretrain(
            tiny_run(tmp_path, synthetic, data={"train": train, "allowed_roots": roots}), show_progress=False
        )
    message = str(error.value)
    for kind in ("missing-file", "truncated-image", "empty-caption"):
        assert kind in message
    assert "extra.jsonl" in message

    config = tiny_run(
        tmp_path,
        synthetic,
        "skip",
        data={"train": train, "on_bad_sample": "skip", "allowed_roots": roots},
        optim={"max_steps": 1},
    )
    result = pretrain(config, show_progress=False)
    skipped = [json.loads(x) for x in (result.output_dir / "skipped_samples.jsonl").read_text().splitlines()]
    assert sorted(s["row"] for s in skipped) == [1, 2, 3]
    assert all(s["problems"] for s in skipped)
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    assert summary["skipped_samples"] == 3


def test_config_errors_name_the_key(tmp_path, synthetic):
    from retvlp.training import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bach_size'\] in section 'data'"):
        PretrainConfig.from_dict({"data": {"bach_size": 3, "train": [{"path": "x"}]}})
    with pytest.raises(ConfigError, match="on_bad_sample"):
        tiny_run(tmp_path, synthetic, data={"on_bad_sample": "ignore"})
    config = tiny_run(tmp_path, synthetic)
    with pytest.raises(ConfigError, match="has no key 'max_step'"):
        config.apply_overrides(["optim.max_step=3"])
    config.apply_overrides(["optim.max_steps=9"])
    assert config.optim.max_steps == 9
    config.apply_overrides(["model.config.text_pooling=mean", "model.config.vision_config.patch_size=8"])
    assert config.model.config["text_pooling"] == "mean"
    assert config.model.config["vision_config"]["patch_size"] == 8
    config.apply_overrides(["optim.lr=3e-4"])  # YAML 1.1 would read a dot-less exponent as a string
    assert config.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="holds no mapping"):
        config.apply_overrides(["model.config.text_pooling.x=1"])


def test_trains_from_a_hugging_face_dataset_on_disk(tmp_path, synthetic):
    import datasets

    rows = [json.loads(line) for line in synthetic.paired.read_text().splitlines()]
    table = datasets.Dataset.from_dict(
        {
            "image": [str(synthetic.paired.parent / r["image"]) for r in rows],
            "caption": [r["text"] for r in rows],
            "patient_id": [r["patient_id"] for r in rows],
        }
    ).cast_column("image", datasets.Image())
    table.save_to_disk(tmp_path / "hf")
    train = [
        {"hf_dataset": str(tmp_path / "hf"), "text_column": "caption"},
        {"path": str(synthetic.unpaired)},
    ]
    result = pretrain(
        tiny_run(tmp_path, synthetic, data={"train": train}, optim={"max_steps": 1}), show_progress=False
    )
    assert result.steps == 1 and (result.final_dir / "model.safetensors").exists()


def test_evaluation_after_training_compares_with_random_init(tmp_path, synthetic):
    from retvlp.evaluation.quick import format_results_table

    run = {
        "evaluate": True,
        "evaluation": {
            "probe_train": [{"path": str(synthetic.paired)}],
            "test": [{"path": str(synthetic.test)}],
        },
    }
    from retvlp.run import pretrain_and_evaluate

    config = tiny_run(tmp_path, synthetic, optim={"max_steps": 2}, run=run)
    result = pretrain_and_evaluate(config, show_progress=False)
    saved = json.loads((result.final_dir / "eval_results.json").read_text())
    assert saved == result.evaluation
    test_rows = len(synthetic.test.read_text().splitlines())
    assert saved["num_test"] == test_rows and saved["excluded"]["test"]["bad_images"] == 0
    for name in ("pretrained", "random_init"):
        for protocol in ("zero_shot", "linear_probe"):
            assert 0.0 <= saved[name][protocol]["accuracy"] <= 1.0
    labels = [json.loads(line)["label"] for line in synthetic.test.read_text().splitlines()]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    assert saved["chance_accuracy"] == pytest.approx(majority)
    table = format_results_table(saved)
    assert "| pretrained |" in table and "| random_init |" in table
    # where the time went (printed at the end of training/pretrain.py): each phase once, steps counted
    times = result.times
    assert {"image cache", "training steps", "final model", "evaluation"} <= set(times.seconds)
    assert times.counts["training steps"] == 2 and all(s >= 0 for s in times.seconds.values())
    assert "training steps" in times.summary() and times.summary().endswith(f"total {times.total:.1f} s")


def test_phase_times_count_a_nested_phase_once(monkeypatch):
    from retvlp.training import progress

    clock = iter([0.0, 1.0, 4.0, 10.0, 10.0, 10.5])  # outer opens, inner 1 → 4, outer closes at 10
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    times = progress.PhaseTimes()
    with progress.recording(times):
        with progress.timed("data"):
            with progress.timed("image cache"):
                pass
        with progress.timed("training steps", count=5):
            pass
    assert times.seconds == {"image cache": 3.0, "data": 7.0, "training steps": 0.5}
    assert times.total == 10.5
    assert times.summary(wall=12.5) == (
        "start-up (imports, config) 2.0 s · data 7.0 s · image cache 3.0 s · "
        "training steps 0.5 s (5, 0.100 s each) · total 12.5 s"
    )
    with progress.timed("outside any record"):  # no record open: nothing is kept, nothing fails
        pass
    assert "outside any record" not in times.seconds


def test_zero_shot_accuracy_by_hand():
    import numpy as np

    from retvlp.evaluation.quick import zero_shot_accuracy

    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.9, 0.1]])
    prototypes = np.array([[1.0, 0.0], [0.0, 1.0]])
    # predictions: 0, 1, 1, 0 against labels 0, 1, 0, 0 → 3/4 correct; class 0 recall 2/3, class 1 recall 1
    result = zero_shot_accuracy(images, prototypes, np.array([0, 1, 0, 0]))
    assert result["accuracy"] == 0.75
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_bf16_mixed_precision_run(tmp_path, synthetic):
    result = pretrain(
        tiny_run(tmp_path, synthetic, optim={"max_steps": 2}, run={"mixed_precision": "bf16"}),
        show_progress=False,
    )
    logs = [json.loads(x) for x in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(e["loss"] == e["loss"] for e in logs)
    weights = _tensors(result.output_dir / "checkpoint-2" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # autocast: the weights stay fp32


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_units_warns(tmp_path, synthetic, monkeypatch, caplog, native):
    import retvlp.training.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="retvlp.training.trainer"):
        pretrain(
            tiny_run(tmp_path, synthetic, optim={"max_steps": 1}, run={"mixed_precision": "bf16"}),
            show_progress=False,
        )
    warned = "without native bf16 matrix units" in caplog.text
    assert warned is (not native)
    if warned:
        assert "run.mixed_precision: no" in caplog.text


def test_entry_point_reports_config_errors_without_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "training" / "pretrain.py"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [{path: x.csv}]\n  bach_size: 3\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "RETVLP_MALLOC_TUNED": "0"}
    for args, expected in (
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--config", str(bad)], "unknown key(s) ['bach_size'] in section 'data'"),
    ):
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
        assert done.returncode == 1
        assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a process's environment in /proc")
def test_accelerates_one_thread_default_is_told_from_the_users_setting(monkeypatch):
    """`accelerate launch` (without --cpu) gives its workers OMP_NUM_THREADS=1; the run then uses the cores,
    unless the launcher itself was started with OMP_NUM_THREADS (the user's choice) or no accelerate is involved."""
    import subprocess

    from retvlp.training import trainer

    def launcher(environment):  # a stand-in launcher process whose environment /proc shows
        return subprocess.Popen(["sleep", "30"], env=environment)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    plain, chosen = (
        launcher({"PATH": "/usr/bin:/bin"}),
        launcher({"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}),
    )
    try:
        monkeypatch.setattr(trainer.os, "getppid", lambda: plain.pid)
        assert trainer.omp_threads_from_accelerate_default()
        before = torch.get_num_threads()
        trainer.configure_threads(None)
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
        torch.set_num_threads(before)
        monkeypatch.setattr(trainer.os, "getppid", lambda: chosen.pid)
        assert not trainer.omp_threads_from_accelerate_default()
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
        monkeypatch.setattr(trainer.os, "getppid", lambda: plain.pid)
        assert not trainer.omp_threads_from_accelerate_default()  # not under accelerate: the setting stands
    finally:
        plain.kill()
        chosen.kill()


def test_an_fp32_run_after_a_bf16_one_in_the_same_process():
    """accelerate refuses a second Accelerator with other settings; every run of ours starts a fresh state (a bf16
    pretraining, then an fp32 fine-tune of the evaluation, in one notebook or one test worker)."""
    from accelerate import Accelerator

    from retvlp.runtime import fresh_accelerator

    fresh_accelerator(mixed_precision="bf16")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(mixed_precision="no")  # what the fine-tune did before
    assert fresh_accelerator(mixed_precision="no").mixed_precision == "no"
