"""Load saved artifacts with ``trust_remote_code=True`` and run each on its saved inputs (a script, and the helper
the tests use to flatten outputs the same way).

    python remote_load_probe.py SPEC.json OUT_DIR

`SPEC.json` (written by `checkpoint_artifacts.save_artifacts`) names, per artifact, its directory, the Auto class
to load it with, the keyword arguments, what to call and the safetensors file of its inputs. For each artifact the
script writes `OUT_DIR/<name>.safetensors` (every tensor of the output, flattened) and `OUT_DIR/report.json` (the
class that was loaded, or the error). It must run where retvlp is not installed — a throw-away environment with
only torch, transformers, safetensors, numpy and Pillow (and peft with accelerate for the LoRA adapters) — so it imports nothing of this repository, and it refuses
`import retvlp` (only the checkpoints' own code may run).
"""

import json
import sys
import traceback
from pathlib import Path


def flatten(output, prefix: str = "") -> dict:
    """Every tensor of a model output (a `ModelOutput`, tuple or tensor; nested outputs too) under a dotted name."""
    import torch

    tensors = {}
    if isinstance(output, torch.Tensor):
        tensors[prefix or "output"] = output.detach().contiguous()
    elif hasattr(output, "keys") and hasattr(output, "__getitem__"):  # ModelOutput, BatchFeature, dict
        for key in output.keys():
            tensors.update(flatten(output[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(output, (tuple, list)):
        for index, item in enumerate(output):
            tensors.update(flatten(item, f"{prefix}.{index}" if prefix else str(index)))
    return tensors


def run_artifact(entry: dict, inputs: dict):
    """Load one artifact as `entry` says and return its output on `inputs`, plus the loaded class's name."""
    import numpy as np
    import torch
    import transformers

    if entry["call"] == "peft_adapter":
        # as the adapter's card says: the classifier config saved with it (class names, head size), its base by
        # the path it names, then the PEFT weights
        from peft import PeftModel

        config = transformers.AutoConfig.from_pretrained(entry["directory"], trust_remote_code=True)
        base_path = json.loads((Path(entry["directory"]) / "adapter_config.json").read_text())
        base = transformers.AutoModelForImageClassification.from_pretrained(
            base_path["base_model_name_or_path"], config=config, trust_remote_code=True
        )
        loaded = PeftModel.from_pretrained(base, entry["directory"])
        name = f"{type(base).__module__}.{type(base).__name__}"
    else:
        auto_class = getattr(transformers, entry["auto_class"])
        loaded = auto_class.from_pretrained(
            entry["directory"], trust_remote_code=True, **entry.get("load_kwargs", {})
        )
        name = f"{type(loaded).__module__}.{type(loaded).__name__}"
    if entry["call"] == "processor":
        images = [np.asarray(image) for image in inputs["images"]]
        return loaded(text=entry["texts"], images=images, return_tensors="pt"), name
    model = loaded.eval()
    if entry["call"] == "released_model":
        model = model.released_model
    with torch.no_grad():
        return model(**inputs, **entry.get("call_kwargs", {})), name


def main(spec_path: str, out_dir: str) -> int:
    sys.modules["retvlp"] = None  # `import retvlp` fails: only the checkpoints' own code may run
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"transformers": transformers.__version__, "torch": torch.__version__, "artifacts": {}}
    for name, entry in spec.items():
        try:
            inputs = load_file(entry["inputs"])
            output, loaded_class = run_artifact(entry, inputs)
            save_file(flatten(output), str(out / f"{name}.safetensors"))
            report["artifacts"][name] = {"ok": True, "class": loaded_class}
        except Exception as error:  # reported per artifact: the others still run
            report["artifacts"][name] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-4000:],
            }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v.get("class") or v.get("error") for k, v in report["artifacts"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
