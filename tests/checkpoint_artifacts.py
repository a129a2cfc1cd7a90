"""Every kind of artifact the current code saves with its own code (`trust_remote_code`), tiny, with the inputs to
run each on, and the outputs the saving process computes: for the import rule of the shipped code
(`test_checkpoint_code_imports.py`) and the cross-version load test (`test_cross_version_load.py`).

`save_artifacts(root)` writes `root/<name>/` (the artifact), `root/inputs/<name>.safetensors`,
`root/expected/<name>.safetensors` (the outputs here, flattened like `remote_load_probe.flatten` does) and
`root/spec.json` (what `remote_load_probe.py` loads and calls). The LoRA adapters (`call: "peft_adapter"`) are saved
as `retvlp evaluate` saves them (`save_finetuned`: the classifier's config and code, the PEFT files, the absolute
path of their base, here the saved classifier of the same family); loading them needs peft where they load.
"""

import json
from pathlib import Path

import torch
from conftest import make_tiny_config
from remote_load_probe import flatten
from safetensors.torch import save_file
from test_modeling_keepfit import TINY_IBQ
from test_modeling_keepfit import tiny_config as keepfit_config

from retvlp import (
    FundusImageProcessor,
    IBQTokenizerConfig,
    IBQTokenizerModel,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitProcessor,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPProcessor,
)
from retvlp.evaluation.finetune import FinetuneSettings, lora_wrap, save_finetuned
from retvlp.keepfit import keepfit_image_processor
from retvlp.tokenization import tiny_tokenizer

TEXTS = ["optic disc cupping", "a normal fundus", "hard exudates near the macula"]


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights away from their initial values (a loaded model that silently re-initialised a part would differ)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.is_floating_point() and "logit_" not in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _lora_adapter(classifier: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The family's default LoRA on a copy of `classifier`, its B matrices and saved head moved off their initial
    values (B starts at zero: an adapter that failed to load would then look like a loaded one)."""
    import copy

    adapter = lora_wrap(
        copy.deepcopy(classifier), FinetuneSettings(method="lora", lora_rank=4, lora_dropout=0.0)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return adapter.eval()


def _dual_inputs(image_size: int, vocab: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(3, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return dict(
        pixel_values=torch.randn(3, 3, image_size, image_size, generator=generator),
        input_ids=torch.randint(5, vocab, (3, 7), generator=generator),
        attention_mask=attention_mask,
    )


def _build() -> dict:
    """name → (object to save, how to load and call it, inputs, extra spec fields)."""
    torch.manual_seed(0)
    maskedclip = _randomized(MaskedCLIPForPreTraining(make_tiny_config()), 1).eval()
    torch.manual_seed(1)
    maskedclip_classifier = _randomized(
        MaskedCLIPForImageClassification(make_tiny_config(vision={"num_labels": 3}).vision_config), 2
    ).eval()
    torch.manual_seed(2)
    keepfit = _randomized(KeepFitForPreTraining(keepfit_config()), 3).eval()
    torch.manual_seed(3)
    keepfit_classifier = _randomized(KeepFitForImageClassification(keepfit_config(num_labels=4)), 4).eval()
    torch.manual_seed(4)
    ibq = _randomized(IBQTokenizerModel(IBQTokenizerConfig(**TINY_IBQ)), 5).eval()

    generator = torch.Generator().manual_seed(7)
    maskedclip_pretraining_inputs = dict(
        _dual_inputs(32, 400, seed=1),
        unpaired_pixel_values=torch.randn(2, 3, 32, 32, generator=generator),
        noise=torch.rand(5, 16, generator=generator),
    )
    keepfit_pretraining_inputs = dict(
        _dual_inputs(64, 300, seed=2),
        labels=torch.tensor([0, 1, 0]),
        elite_pixel_values=torch.randn(2, 3, 64, 64, generator=generator),
        elite_input_ids=torch.randint(5, 300, (2, 9), generator=generator),
        elite_attention_mask=torch.ones(2, 9, dtype=torch.long),
    )
    maskedclip_adapter = _lora_adapter(maskedclip_classifier, 6)
    keepfit_adapter = _lora_adapter(keepfit_classifier, 7)
    images = torch.randint(0, 256, (2, 40, 50, 3), dtype=torch.uint8, generator=generator)
    tokenizer = tiny_tokenizer()
    return {
        "maskedclip_released": (
            maskedclip.released_model,
            dict(auto_class="AutoModel", call="model"),
            _dual_inputs(32, 400),
        ),
        "maskedclip_pretraining": (
            maskedclip,
            dict(auto_class="AutoModelForPreTraining", call="model"),
            maskedclip_pretraining_inputs,
        ),
        "maskedclip_released_in_pretraining_checkpoint": (
            None,  # the same directory, its released model through the pretraining class
            dict(
                auto_class="AutoModelForPreTraining",
                call="released_model",
                directory="maskedclip_pretraining",
            ),
            _dual_inputs(32, 400, seed=3),
        ),
        "maskedclip_classifier": (
            maskedclip_classifier,
            dict(auto_class="AutoModelForImageClassification", call="model"),
            dict(pixel_values=_dual_inputs(32, 400, seed=4)["pixel_values"]),
        ),
        "maskedclip_lora_adapter": (
            maskedclip_adapter,
            dict(call="peft_adapter", base="maskedclip_classifier"),
            dict(pixel_values=_dual_inputs(32, 400, seed=8)["pixel_values"]),
        ),
        "maskedclip_processor": (
            MaskedCLIPProcessor(FundusImageProcessor(size=32), tokenizer, max_length=16),
            dict(auto_class="AutoProcessor", call="processor", texts=TEXTS),
            dict(images=images),
        ),
        "keepfit_released": (
            keepfit.released_model,
            dict(auto_class="AutoModel", call="model"),
            _dual_inputs(64, 300),
        ),
        "keepfit_pretraining": (
            keepfit,
            dict(auto_class="AutoModelForPreTraining", call="model"),
            keepfit_pretraining_inputs,
        ),
        "keepfit_classifier": (
            keepfit_classifier,
            dict(auto_class="AutoModelForImageClassification", call="model"),
            dict(pixel_values=_dual_inputs(64, 300, seed=5)["pixel_values"]),
        ),
        "keepfit_lora_adapter": (
            keepfit_adapter,
            dict(call="peft_adapter", base="keepfit_classifier"),
            dict(pixel_values=_dual_inputs(64, 300, seed=9)["pixel_values"]),
        ),
        "keepfit_processor": (
            KeepFitProcessor(keepfit_image_processor(size=64), tokenizer),
            dict(auto_class="AutoProcessor", call="processor", texts=TEXTS),
            dict(images=images),
        ),
        "ibq_tokenizer": (
            ibq,
            dict(auto_class="AutoModel", call="model", call_kwargs={"return_loss": True}),
            dict(pixel_values=torch.randn(2, 3, 32, 32, generator=generator)),
        ),
    }


def _reference_output(saved, entry: dict, inputs: dict, models: dict):
    """The output of the saving process's own object, called as `remote_load_probe.run_artifact` calls the
    loaded one."""
    if entry["call"] == "processor":
        return saved(
            text=entry["texts"], images=[image.numpy() for image in inputs["images"]], return_tensors="pt"
        )
    model = saved if saved is not None else models[entry["directory"]]
    if entry["call"] == "released_model":
        model = model.released_model
    with torch.no_grad():
        return model(**inputs, **entry.get("call_kwargs", {}))


def save_artifacts(root: Path) -> dict:
    """Save every artifact under `root`; returns the spec (also written to `root/spec.json`)."""
    root = Path(root)
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    (root / "expected").mkdir(exist_ok=True)
    built = _build()
    saved_objects = {name: obj for name, (obj, _, _) in built.items() if obj is not None}
    spec = {}
    for name, (obj, entry, inputs) in built.items():
        entry = dict(entry)
        directory = entry.pop("directory", name)
        if entry["call"] == "peft_adapter":
            # as `retvlp evaluate` saves one: its base is named by absolute path
            entry["base"] = str((root / entry["base"]).resolve())
            save_finetuned(obj, root / directory, base_model=entry["base"])
        elif obj is not None:
            obj.save_pretrained(root / directory)
        torch.manual_seed(0)  # as the probe does before it runs anything
        expected = flatten(_reference_output(obj, {**entry, "directory": directory}, inputs, saved_objects))
        save_file(
            {k: v.contiguous() for k, v in inputs.items()}, str(root / "inputs" / f"{name}.safetensors")
        )
        save_file(expected, str(root / "expected" / f"{name}.safetensors"))
        spec[name] = {
            **entry,
            "directory": str(root / directory),
            "inputs": str(root / "inputs" / f"{name}.safetensors"),
        }
    (root / "spec.json").write_text(json.dumps(spec, indent=1))
    return spec
