"""`run.compile` (torch.compile of the training model) and `optim.implementation` (AdamW's kernel).

Compiled steps are checked against eager ones: losses and every gradient within float tolerance, and the
steady-state forward of both families traces to one graph (no graph break). Inductor's C++ code generation
costs about a minute on 2 cores even for the tiny model, so one test runs inductor (MaskedCLIP) and the
others AOT autograd without code generation (`aot_eager`: the same traced forward/backward graphs).
"""

import copy
import json

import pytest
import torch
from conftest import tiny_pretrain_dict
from safetensors.torch import load_file
from test_modeling_keepfit import pretraining_batch, tiny_model

from retvlp import MaskedCLIPForPreTraining
from retvlp.training import PretrainConfig, pretrain


def _maskedclip_batch():
    generator = torch.Generator().manual_seed(0)
    return dict(
        pixel_values=torch.randn(4, 3, 32, 32, generator=generator),
        input_ids=torch.randint(5, 400, (4, 9), generator=generator),
        unpaired_pixel_values=torch.randn(3, 3, 32, 32, generator=generator),
        labels=torch.tensor([0, 1, 0, 2]),
        noise=torch.rand(7, 16, generator=generator),
    )


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout draws (eager and AOT autograd consume the generator alike)
    out = model(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same_step(eager, compiled, batch, terms):
    a, grads_a = _step(eager, batch)
    b, grads_b = _step(compiled, batch)
    for name in terms:
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-6, msg=name)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


def _compiled_copy(eager, batch, backend):
    """A copy of `eager` compiled in place, called once eagerly first: transformers installs its output-capturing
    hooks on a model's first call, which graph-breaks and retraces every piece after the break. Every later step
    of a compiled run runs the steady-state graph compared here. MaskedCLIP's cold first call is compiled by the
    training run below; KeepFIT's by its own test (no warm-up there)."""
    compiled = copy.deepcopy(eager)
    with torch.no_grad():
        compiled(**batch)
    compiled.compile(backend=backend)
    return compiled


def test_maskedclip_compiled_with_inductor_matches_eager(tiny_config):
    torch.manual_seed(0)
    eager = MaskedCLIPForPreTraining(tiny_config()).train()
    batch = _maskedclip_batch()
    compiled = _compiled_copy(eager, batch, "inductor")
    _assert_same_step(eager, compiled, batch, ("loss", "loss_mim", "loss_clip", "loss_mfd"))


def test_keepfit_compiled_matches_eager():
    eager = tiny_model().train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager")  # cold: the first call's graph breaks and retraces included
    batch = pretraining_batch()
    _assert_same_step(eager, compiled, batch, ("loss", "loss_itc_categorical", "loss_itc_elite"))


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_steady_state_forward_has_no_graph_break(family, tiny_config):
    if family == "maskedclip":
        torch.manual_seed(0)
        model, batch = MaskedCLIPForPreTraining(tiny_config()).train(), _maskedclip_batch()
    else:
        model, batch = tiny_model().train(), pretraining_batch()
    model(**batch)  # transformers installs its output-capturing hooks on the first call
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def _run(tmp_path, synthetic, name, **run_and_optim):
    raw = tiny_pretrain_dict(
        tmp_path, synthetic, name, optim={"max_steps": 2, **run_and_optim.pop("optim", {})}
    )
    raw["run"].update(run_and_optim)
    return pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)


def _logs(result):
    return [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]


def test_a_compiled_run_trains_like_an_eager_one_and_saves_the_same_names(tmp_path, synthetic):
    eager = _run(tmp_path, synthetic, "eager")
    compiled = _run(tmp_path, synthetic, "compiled", compile=True, compile_backend="aot_eager")
    for a, b in zip(_logs(eager), _logs(compiled), strict=True):
        for key in ("loss", "loss_mim", "loss_clip", "loss_mfd", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    a = load_file(str(eager.output_dir / "checkpoint-2" / "model.safetensors"))
    b = load_file(str(compiled.output_dir / "checkpoint-2" / "model.safetensors"))
    assert a.keys() == b.keys()  # no `_orig_mod.` prefixes: the model is compiled in place
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_adamw_kernels_agree_with_the_reference_loop(tmp_path, synthetic):
    results = {
        kind: _run(tmp_path, synthetic, kind, optim={"implementation": kind})
        for kind in ("for-loop", "foreach", "fused")
    }
    reference = load_file(str(results["for-loop"].output_dir / "checkpoint-2" / "model.safetensors"))
    for kind in ("foreach", "fused"):
        weights = load_file(str(results[kind].output_dir / "checkpoint-2" / "model.safetensors"))
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], rtol=1e-5, atol=1e-6, msg=(kind, key))


def test_bad_compile_and_optimizer_settings_name_the_key(tmp_path, synthetic):
    for section, values, key in (
        ("run", {"compile_mode": "fastest"}, "run.compile_mode"),
        ("optim", {"implementation": "apex"}, "optim.implementation"),
    ):
        raw = tiny_pretrain_dict(tmp_path, synthetic, "bad")
        raw[section].update(values)
        with pytest.raises(Exception, match=key):
            PretrainConfig.from_dict(raw, source="test")
