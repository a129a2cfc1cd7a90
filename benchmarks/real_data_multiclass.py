"""The multi-class real-data table (issue 23): every row of `ROWS`, per seed, on TVHL's four-class task.

Run through `python benchmarks/real_data_learning.py [--quick]` (see its docstring); this module holds the rows,
the per-(row, seed) run with its resume file, the aggregation over seeds and the targets.

A row is a recipe file plus overrides (dotted keys, as on the command line of `training/pretrain.py`) and the
stages it needs first (`text_mlm`: the package's text-MLM stage on the training captions, whose output becomes the
text tower and tokenizer; `ibq`: the IBQ codebook, for KeepFIT). `random_init` pretrains nothing: it evaluates the
shipped MaskedCLIP architecture at seeded random weights.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tvhl_manifests import CAPTION_PREFIXES, MULTICLASS_CLASSES, write_multiclass_manifests, write_text_corpus

REPO = Path(__file__).resolve().parents[1]
MASKEDCLIP_RECIPE = "training/configs/maskedclip_small_cpu.yaml"
KEEPFIT_RECIPE = "training/configs/keepfit_small_cpu.yaml"


@dataclass(frozen=True)
class Row:
    recipe: str | None
    overrides: dict = field(default_factory=dict)
    stages: tuple[str, ...] = ()
    term: str | None = "loss_clip"
    what: str = ""
    reference: str | None = (
        None  # "supervised" / "pixels": a ceiling row that pretrains nothing (see run_row)
    )


ROWS: dict[str, Row] = {
    "maskedclip": Row(MASKEDCLIP_RECIPE, what="the shipped recipe (text tower from its text-MLM stage)"),
    "maskedclip_fresh_text": Row(
        MASKEDCLIP_RECIPE,
        {
            "stages": {},
            "data.balance_classes": [],
            "model.tokenizer": "build",
            "model.tokenizer_vocab_size": 2000,
            "model.config.text_config": {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 256,
                "max_position_embeddings": 64,
            },
        },
        what="the recipe before its text-MLM stage and balanced draw: a text tower from scratch, rows drawn uniformly",
    ),
    "maskedclip_batch256": Row(
        MASKEDCLIP_RECIPE,
        {
            "optim.gradient_accumulation_steps": 8,
            "optim.contrastive_accumulation": True,
        },
        what="contrastive batch 256 (8 × 32, embeddings cached across micro-batches)",
    ),
    "maskedclip_sigmoid": Row(
        MASKEDCLIP_RECIPE, {"model.config.contrastive_loss": "sigmoid"}, what="sigmoid (SigLIP) loss"
    ),
    "maskedclip_cold_temperature": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.logit_scale_init_value": 0.0, "optim.logit_scale_lr_multiplier": 30.0},
        what="the contrastive scale starts at exp(0) = 1 (not 1/0.07) and learns at 30 × lr",
    ),
    "mae_only": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.use_clip": False, "model.config.use_mfd": False},
        term=None,
        what="L_mim only",
    ),
    "clip_only": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.use_mim": False, "model.config.use_mfd": False},
        what="L_lg_clip only",
    ),
    "maskedclip_uniform": Row(
        MASKEDCLIP_RECIPE,
        {"data.balance_classes": []},
        what="the shipped recipe with paired rows drawn uniformly (the papers'; the recipe before this round)",
    ),
    "maskedclip_192px": Row(
        MASKEDCLIP_RECIPE,
        {"data.image_size": 192, "model.config.vision_config.patch_size": 16},
        what="192 px photographs in 16 px patches: the same 144 tokens as 96 px in 8 px patches",
    ),
    # The bridge and the image pooling (issue 23: "the bridge and projection init"): a from-scratch ViT's [CLS]
    # output, like a from-scratch BERT's, is nearly the same for every input at init; the patch mean is not.
    "maskedclip_mean_image": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.clip_image_pooling": "mean"},
        what="the CLIP image embedding from the mean of the bridge's patch tokens instead of its [CLS] token",
    ),
    # The balance of the two terms in the shared ViT: with λ_clip = 1 L_lg_clip's gradient in E_I is ~10⁴ × L_mim's
    # at init and ~8 × at step 300 (benchmarks/gradient_balance.py), so AdamW follows L_lg_clip alone.
    "maskedclip_lambda_clip_0.1": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.lambda_clip": 0.1},
        what="λ_clip = 0.1 (the recipe's 1, the paper's 0.01): L_mim and L_lg_clip of similar weight in E_I",
    ),
    "mae_clip": Row(
        MASKEDCLIP_RECIPE,
        {"model.config.use_bridge": False, "model.config.use_mfd": False},
        what="no bridge and no L_mfd (the paper's Table 2 'MAE+CLIP'): L_mim and L_lg_clip on the encoder itself",
    ),
    "random_init": Row(None, term=None, what="the MaskedCLIP architecture at random weights"),
    # What the labels themselves allow at this budget: no pretraining, the probe-train labels only.
    "supervised": Row(
        None,
        term=None,
        reference="supervised",
        what="the MaskedCLIP image tower fine-tuned from random init on 100 % of the labels (cross-entropy)",
    ),
    "pixels": Row(
        None,
        term=None,
        reference="pixels",
        what="logistic regression (balanced class weights) on 8 × 8 pixels + colour histograms",
    ),
    "keepfit": Row(
        KEEPFIT_RECIPE,
        stages=("text_mlm", "ibq"),
        term="loss_itc_categorical",
        what="KeepFIT V2's three-stage recipe",
    ),
    "keepfit_balanced": Row(
        KEEPFIT_RECIPE,
        {"data.balance_classes": ["categorical"]},
        stages=("text_mlm", "ibq"),
        term="loss_itc_categorical",
        what="KeepFIT V2's recipe with class-balanced categorical batches (measured, not adopted: docs/real_data.md §1)",
    ),
}
QUICK_ROWS = ("maskedclip", "random_init")


def set_dotted(raw: dict, key: str, value) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def build_config(recipe: str, overrides: dict):
    from retvlp.training import PretrainConfig

    raw = yaml.safe_load((REPO / recipe).read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return PretrainConfig.from_dict(raw, source=recipe)


def contrastive_figures(logs_path: Path, term: str | None) -> dict:
    """The contrastive term at the first log step and over the last fifth, against its collapse reference — ln B
    for the softmax loss (with its label-guided floor), the loss of a constant embedding for the sigmoid one —;
    whether the collapse guard warned."""
    logs = [json.loads(line) for line in logs_path.read_text().splitlines() if line]
    figures = {"guard_warned": any(entry.get("collapse/warned") for entry in logs)}
    if term is None:
        return figures
    reference = f"{term}/ln_batch"
    if not any(reference in entry for entry in logs):
        reference = f"{term}/constant"  # the sigmoid loss
    rows = [entry for entry in logs if term in entry and reference in entry]
    if not rows:
        return figures
    tail = rows[-max(1, len(rows) // 5) :]
    figures.update(
        reference=reference.rsplit("/", 1)[1],
        first_over_ln_batch=rows[0][term] / rows[0][reference],
        last_over_ln_batch=float(np.mean([r[term] / r[reference] for r in tail])),
        text_mean_cosine=float(np.mean([r[f"{term}/text_mean_cosine"] for r in tail])),
        image_mean_cosine=float(np.mean([r[f"{term}/image_mean_cosine"] for r in tail])),
    )
    if f"{term}/floor" in rows[-1]:
        figures["floor_over_ln_batch"] = float(np.mean([r[f"{term}/floor"] / r[reference] for r in tail]))
    return figures


def _metric(results: dict, task: str, name: str, fraction=None, model: str | None = None):
    for row in results["results"]:
        if (
            (model is None or row["model"] == model)
            and row["task"] == task
            and row.get("fraction") == fraction
        ):
            return row["metrics"][name]["mean"]
    return None


class MulticlassBenchmark:
    """One output folder: manifests, shared stages, one JSON per (row, seed), the aggregated table."""

    def __init__(
        self,
        out: Path,
        data_root: str,
        steps: int | None,
        image_size: int,
        finetune_epochs: float,
        one_acquisition: bool = False,
    ):
        self.out, self.data_root = out, str(data_root)
        self.steps, self.image_size, self.finetune_epochs = steps, image_size, finetune_epochs
        written = write_multiclass_manifests(out / "manifests", data_root, one_acquisition=one_acquisition)
        self.summary = written
        self.spec = {
            name: {"path": path, "allowed_roots": [self.data_root]} for name, path in written["files"].items()
        }
        self.cache = str(out / "cache")
        (out / "rows").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ stages
    def _stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def stage(self, name: str) -> Path:
        """Run a prerequisite stage once (shared by every row and seed) and return its `final/` folder."""
        final = self._stage_dir(name) / "final"
        if final.is_dir():
            return final
        from retvlp.run import pretrain_and_evaluate

        if name == "text_mlm":
            corpus = self.out / "manifests" / "text_corpus.jsonl"
            write_text_corpus(self.spec["paired"]["path"], MULTICLASS_CLASSES, corpus)
            # the MLM tower of the MaskedCLIP recipe's own text-MLM stage (sizes and vocabulary): the KeepFIT row's
            # text tower is the same size as MaskedCLIP's
            declared = yaml.safe_load((REPO / MASKEDCLIP_RECIPE).read_text())["stages"]["text_mlm"]
            config = build_config(
                declared["config"],
                {
                    **declared.get("overrides", {}),
                    "data.train": [{"path": str(corpus), "text_column": "text"}],
                    "run.output_dir": str(self._stage_dir(name)),
                    "run.tensorboard": False,
                },
            )
        elif name == "ibq":
            config = build_config(
                "training/configs/ibq_tokenizer_tiny_cpu.yaml",
                {
                    "data.train": [self.spec["paired"], self.spec["unpaired"]],
                    "data.synthetic": None,
                    "data.image_size": 64,
                    "data.cache_dir": self.cache,
                    "optim.max_steps": 100,
                    "optim.warmup_steps": 10,
                    "run.output_dir": str(self._stage_dir(name)),
                    "run.tensorboard": False,
                    "run.save_every": 100,
                },
            )
        else:
            raise ValueError(f"unknown stage {name!r}")
        start = time.perf_counter()
        pretrain_and_evaluate(config, show_progress=False)
        print(f"  stage {name}: {time.perf_counter() - start:.0f} s", flush=True)
        return final

    # ------------------------------------------------------------------ one row
    def _recorded_steps(self, name: str, seed: int, figures: dict) -> int | None:
        """The steps a cached row was pretrained for: its JSON's, else (rows written before the key) its run's
        run_config.yaml; None for rows that pretrain nothing."""
        if "steps" in figures:
            return figures["steps"]
        run_config = self.out / "runs" / f"{name}_seed{seed}" / "run_config.yaml"
        if ROWS[name].recipe is None or not run_config.is_file():
            return None
        return int(yaml.safe_load(run_config.read_text())["optim"]["max_steps"])

    def steps_for(self, row: Row) -> int:
        """The optimizer steps of a row's pretraining: the invocation's `--steps`, else its recipe's own
        `optim.max_steps` (the shipped budget; a row's overrides may change it); rows that pretrain nothing take
        the MaskedCLIP recipe's, whose architecture they evaluate."""
        if self.steps is not None:
            return self.steps
        recipe = yaml.safe_load((REPO / (row.recipe or MASKEDCLIP_RECIPE)).read_text())
        return int(row.overrides.get("optim.max_steps", recipe["optim"]["max_steps"]))

    def _overrides(self, name: str, row: Row, seed: int) -> dict:
        evaluation = {
            "probe_train": [self.spec["probe_train"]],
            "test": [self.spec["test"]],
            "classes": MULTICLASS_CLASSES,
        }
        steps = self.steps_for(row)
        overrides = {
            "data.classes": MULTICLASS_CLASSES,
            "data.image_size": self.image_size,
            "data.cache_dir": self.cache,
            "optim.max_steps": steps,
            "run.seed": seed,
            "run.output_dir": str(self.out / "runs" / f"{name}_seed{seed}"),
            "run.evaluate": False,
            "run.evaluation": evaluation,
            "run.eval_every": max(1, steps // 4),
            "run.tensorboard": False,
            "run.save_every": steps,
            "run.keep_checkpoints": 1,
        }
        if row.recipe == KEEPFIT_RECIPE:
            elite, categorical = self._keepfit_split()
            overrides["data.train"] = [categorical, elite]
        else:
            overrides["data.train"] = [self.spec["paired"], self.spec["unpaired"]]
        if "text_mlm" in row.stages:
            text = str(self.stage("text_mlm"))
            overrides.update({"model.tokenizer": text, "model.text_pretrained": text})
        if "ibq" in row.stages:
            overrides["model.config.ibq_tokenizer_path"] = str(self.stage("ibq"))
        overrides.update(row.overrides)
        return overrides

    def _keepfit_split(self) -> tuple[dict, dict]:
        """KeepFIT's two sources from the same training photographs: the captions of 30 % of the training
        patients are the elite pairs m, the other patients' photographs are categorical rows p (label → prompt)."""
        elite_path = self.out / "manifests" / "keepfit_elite.csv"
        categorical_path = self.out / "manifests" / "keepfit_categorical.csv"
        if not elite_path.is_file():
            with open(self.spec["paired"]["path"], newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            patients = sorted({r["patient_id"] for r in rows})
            chosen = set(np.random.default_rng(0).permutation(patients)[: round(0.3 * len(patients))])
            for path, keep, columns in (
                (elite_path, True, ["image", "text", "label", "patient_id"]),
                (categorical_path, False, ["image", "label", "patient_id"]),
            ):
                with open(path, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(r for r in rows if (r["patient_id"] in chosen) == keep)
        spec = {"allowed_roots": [self.data_root]}
        return {"path": str(elite_path), **spec}, {"path": str(categorical_path), **spec}

    def run_row(self, name: str, seed: int, finetune: bool) -> dict:
        """Pretrain (unless `random_init`) and evaluate one row at one seed; cached in `rows/<name>_seed<k>.json`."""
        path = self.out / "rows" / f"{name}_seed{seed}.json"
        if path.is_file():
            figures = json.loads(path.read_text())
            steps, recorded = self.steps_for(ROWS[name]), self._recorded_steps(name, seed, figures)
            if recorded not in (None, steps):
                raise SystemExit(
                    f"{path} holds a {recorded}-step run; this invocation trains {name} {steps} steps: give "
                    "--steps to match it, or another --out"
                )
            if "zero_shot_caption_balanced_accuracy" not in figures and self._has_text_tower(name, seed):
                figures.update(self.caption_zero_shot(name, seed))
                path.write_text(json.dumps(figures, indent=2))
            return figures
        from retvlp.evaluation.finetune import FinetuneSettings
        from retvlp.evaluation.runner import EvaluationSettings, evaluate_models
        from retvlp.run import pretrain_and_evaluate

        row = ROWS[name]
        start = time.perf_counter()
        if row.reference is not None:
            figures = self._reference_row(row.reference, seed)
            figures.update(row=name, seed=seed, pretrain_seconds=0.0, seconds=time.perf_counter() - start)
            path.write_text(json.dumps(figures, indent=2))
            print(f"  {name} seed {seed}: {json.dumps(_short(figures))}", flush=True)
            return figures
        figures: dict = {}
        if row.recipe is None:
            # random init: the shipped architecture and tokenizer (those of the maskedclip row at this seed, or of
            # a 1-step run), evaluated at seeded random weights by the evaluation suite
            source = self.out / "runs" / f"maskedclip_seed{seed}" / "final"
            if not source.is_dir():
                source = self.run_architecture_source(seed)
            models, model_name, random_init = {"architecture": str(source)}, "random_init", True
        else:
            config = build_config(row.recipe, self._overrides(name, row, seed))
            result = pretrain_and_evaluate(config, show_progress=False)
            figures = contrastive_figures(result.output_dir / "logs.jsonl", row.term)
            models = {name: str(result.final_dir)}
            model_name, random_init = name, False
        pretrain_seconds = time.perf_counter() - start
        common = dict(
            fractions=(0.1, 1.0),
            seeds=(seed,),
            split_seed=seed,
            save_models=False,
            calibration_fraction=0.0,  # the table's rows predate the calibration split: same pools
            bootstrap=0,
            cache_dir=str(self.out / "feature_cache"),
            show_progress=False,
        )
        tasks = ("linear-probe",) if name == "mae_only" else ("zero-shot", "linear-probe")
        evaluation = evaluate_models(
            models,
            self.spec["probe_train"],
            test_data=self.spec["test"],
            class_names=MULTICLASS_CLASSES,
            settings=EvaluationSettings(tasks=tasks, **common),
            random_init=random_init,
            dataset_name="TVHL four classes (held-out patients)",
        )
        figures.update(
            zero_shot_balanced_accuracy=_metric(
                evaluation, "zero-shot", "balanced_accuracy", model=model_name
            ),
            zero_shot_roc_auc=_metric(evaluation, "zero-shot", "roc_auc", model=model_name),
            linear_probe_roc_auc_10=_metric(evaluation, "linear-probe", "roc_auc", 0.1, model=model_name),
            linear_probe_roc_auc_100=_metric(evaluation, "linear-probe", "roc_auc", 1.0, model=model_name),
            linear_probe_balanced_accuracy_100=_metric(
                evaluation, "linear-probe", "balanced_accuracy", 1.0, model=model_name
            ),
        )
        if "zero-shot" in tasks:
            figures.update(self.caption_zero_shot(name, seed, models, random_init))
        if finetune and row.recipe != KEEPFIT_RECIPE:
            tuned = evaluate_models(
                models,
                self.spec["probe_train"],
                test_data=self.spec["test"],
                class_names=MULTICLASS_CLASSES,
                settings=EvaluationSettings(
                    tasks=("finetune",),
                    finetune=FinetuneSettings(
                        epochs=self.finetune_epochs,
                        warmup_epochs=min(1.0, self.finetune_epochs / 4),
                        batch_size=32,
                    ),
                    **{**common, "fractions": (0.1,)},
                ),
                random_init=random_init,
                dataset_name="TVHL four classes (held-out patients)",
            )
            figures["finetune_roc_auc_10"] = _metric(tuned, "finetune", "roc_auc", 0.1, model=model_name)
        figures.update(
            row=name, seed=seed, pretrain_seconds=pretrain_seconds, seconds=time.perf_counter() - start
        )
        if row.recipe is not None:
            figures["steps"] = self.steps_for(row)
        path.write_text(json.dumps(figures, indent=2))
        print(f"  {name} seed {seed}: {json.dumps(_short(figures))}", flush=True)
        return figures

    def _has_text_tower(self, name: str, seed: int) -> bool:
        row = ROWS.get(name)
        if row is None or row.reference is not None or name == "mae_only":
            return False
        return name == "random_init" or (self.out / "runs" / f"{name}_seed{seed}" / "final").is_dir()

    def caption_zero_shot(
        self, name: str, seed: int, models: dict | None = None, random_init: bool = False
    ) -> dict:
        """Zero-shot with prompts written the way the training captions are ("color fundus photograph, left eye:
        {class}", each caption prefix × both eyes, no expert descriptions) next to the package's default ensembles
        ("A fundus photograph of {class}, <description>": words a text tower trained on these captions alone has
        never seen). CLIP's practice: prompt in the form of the training text."""
        from retvlp.evaluation.runner import EvaluationSettings, evaluate_models

        if models is None:
            if name == "random_init":
                source = self.out / "runs" / f"maskedclip_seed{seed}" / "final"
                if not source.is_dir():
                    source = self.run_architecture_source(seed)
                models, random_init = {"architecture": str(source)}, True
            else:
                models = {name: str(self.out / "runs" / f"{name}_seed{seed}" / "final")}
        templates = [
            f"{prefix.format(eye=eye)} {{}}" for prefix in CAPTION_PREFIXES for eye in ("left", "right")
        ]
        result = evaluate_models(
            models,
            self.spec["probe_train"],
            test_data=self.spec["test"],
            class_names=MULTICLASS_CLASSES,
            settings=EvaluationSettings(
                tasks=("zero-shot",),
                templates=templates,
                include_descriptions=False,
                seeds=(seed,),
                split_seed=seed,
                save_models=False,
                calibration_fraction=0.0,  # the table's rows predate the calibration split: same pools
                bootstrap=0,
                show_progress=False,
            ),
            random_init=random_init,
            dataset_name="TVHL four classes (held-out patients)",
        )
        model = "random_init" if random_init else name
        return {
            "zero_shot_caption_balanced_accuracy": _metric(
                result, "zero-shot", "balanced_accuracy", model=model
            ),
            "zero_shot_caption_roc_auc": _metric(result, "zero-shot", "roc_auc", model=model),
        }

    def _reference_row(self, kind: str, seed: int) -> dict:
        """A ceiling of what the probe-train labels teach without pretraining: `supervised` fine-tunes the shipped
        image tower from random weights on all of them for about the pretraining budget in images; `pixels` fits
        a logistic regression on tiny thumbnails and colour histograms."""
        if kind == "pixels":
            return pixel_baseline(self.spec["probe_train"]["path"], self.spec["test"]["path"], seed)
        from retvlp.evaluation.finetune import FinetuneSettings
        from retvlp.evaluation.runner import EvaluationSettings, evaluate_models

        source = self.out / "runs" / f"maskedclip_seed{seed}" / "final"
        if not source.is_dir():
            source = self.run_architecture_source(seed)
        with open(self.spec["probe_train"]["path"], encoding="utf-8") as handle:
            rows = sum(1 for _ in handle) - 1
        # the pretraining's paired images (the MaskedCLIP recipe's, whose architecture is fine-tuned), in epochs
        epochs = max(1.0, round(self.steps_for(ROWS["maskedclip"]) * 32 / rows))
        tuned = evaluate_models(
            {"architecture": str(source)},
            self.spec["probe_train"],
            test_data=self.spec["test"],
            class_names=MULTICLASS_CLASSES,
            settings=EvaluationSettings(
                tasks=("finetune",),
                fractions=(1.0,),
                seeds=(seed,),
                split_seed=seed,
                save_models=False,
                calibration_fraction=0.0,  # the table's rows predate the calibration split: same pools
                bootstrap=0,
                show_progress=False,
                finetune=FinetuneSettings(epochs=epochs, warmup_epochs=1, batch_size=32, init="random"),
            ),
            random_init=True,
            dataset_name="TVHL four classes (held-out patients)",
        )
        return {
            "reference_balanced_accuracy": _metric(tuned, "finetune", "balanced_accuracy", 1.0),
            "reference_roc_auc": _metric(tuned, "finetune", "roc_auc", 1.0),
            "reference_epochs": epochs,
        }

    def run_architecture_source(self, seed: int) -> Path:
        """A 1-step run of the shipped recipe: the architecture and tokenizer the random-weight rows evaluate."""
        from retvlp.run import pretrain_and_evaluate

        overrides = {
            **self._overrides("random_init_source", ROWS["random_init"], seed),
            "optim.max_steps": 1,
            "optim.warmup_steps": 0,
        }
        overrides["run.eval_every"] = None
        return pretrain_and_evaluate(
            build_config(MASKEDCLIP_RECIPE, overrides), show_progress=False
        ).final_dir


def pixel_baseline(train_manifest: str, test_manifest: str, seed: int, size: int = 8) -> dict:
    """Balanced-class-weight logistic regression on `size` × `size` RGB thumbnails plus 16-bin colour histograms:
    how much of the task lies in global colour and brightness."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    def load(manifest):
        features, labels = [], []
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                with Image.open(row["image"]) as image:
                    rgb = image.convert("RGB")  # decoded once: thumbnail and histograms both read it
                pixels = np.asarray(rgb.resize((size, size)), dtype=np.float32) / 255
                full = np.asarray(rgb, dtype=np.float32) / 255
                histograms = [
                    np.histogram(full[..., c], bins=16, range=(0, 1))[0] / full[..., c].size for c in range(3)
                ]
                features.append(np.concatenate([pixels.reshape(-1), *histograms]))
                labels.append(MULTICLASS_CLASSES.index(row["label"]))
        return np.array(features), np.array(labels)

    train_x, train_y = load(train_manifest)
    test_x, test_y = load(test_manifest)
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=0.01, class_weight="balanced", max_iter=5000, random_state=seed)
    probabilities = model.fit(scaler.transform(train_x), train_y).predict_proba(scaler.transform(test_x))
    return {
        "reference_balanced_accuracy": float(balanced_accuracy_score(test_y, probabilities.argmax(1))),
        "reference_roc_auc": float(roc_auc_score(test_y, probabilities, multi_class="ovr", average="macro")),
    }


def _short(figures: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


COLUMNS = [
    ("last_over_ln_batch", "L_clip / ln B (end; sigmoid: / constant-embedding loss)"),
    ("floor_over_ln_batch", "floor / ln B"),
    ("guard_warned", "guard warned"),
    ("zero_shot_balanced_accuracy", "zero-shot bal. acc"),
    ("zero_shot_roc_auc", "zero-shot ROC-AUC"),
    ("zero_shot_caption_balanced_accuracy", "zero-shot bal. acc, caption-style prompts"),
    ("zero_shot_caption_roc_auc", "zero-shot ROC-AUC, caption-style prompts"),
    ("linear_probe_roc_auc_10", "LP ROC-AUC 10 %"),
    ("linear_probe_roc_auc_100", "LP ROC-AUC 100 %"),
    ("finetune_roc_auc_10", "FT ROC-AUC 10 %"),
    ("linear_probe_balanced_accuracy_100", "LP bal. acc 100 %"),
    ("reference_balanced_accuracy", "no pretraining: bal. acc"),
    ("reference_roc_auc", "no pretraining: ROC-AUC"),
    ("pretrain_seconds", "pretraining s"),
]


def aggregate(results: dict[str, list[dict]]) -> tuple[str, dict]:
    """Mean ± std over seeds per row: the markdown table and the summary."""
    lines = [
        "| row | seeds | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    summary = {}
    for name, runs in results.items():
        cells, row_summary = [], {}
        for key, _ in COLUMNS:
            values = [r[key] for r in runs if r.get(key) is not None]
            if key == "guard_warned":
                text = f"{sum(bool(v) for v in values)} / {len(values)}" if values else "—"
                row_summary[key] = sum(bool(v) for v in values)
            elif not values:
                text = "—"
            else:
                mean, std = float(np.mean(values)), float(np.std(values))
                row_summary[key] = (mean, std)
                digits = 0 if key == "pretrain_seconds" else 3
                text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")
            cells.append(text)
        summary[name] = row_summary
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def check_targets(summary: dict, chance: float) -> list[str]:
    """Issue 23's targets, each with its figure and a verdict (printed, never asserted)."""

    def mean(row, key):
        value = summary.get(row, {}).get(key)
        return value[0] if isinstance(value, tuple) else float("nan")

    lines = ["Targets (issue 23):"]
    for name in ("maskedclip", "keepfit"):
        if name not in summary:
            continue
        warned = summary[name].get("guard_warned", 0)
        ratio = mean(name, "last_over_ln_batch")
        lines.append(
            f"- {name}: collapse guard warned in {warned} run(s) (target 0); contrastive term {ratio:.3f} · ln B "
            f"at the end (target ≤ 0.9: {'met' if ratio <= 0.9 else 'NOT met'})"
        )
        zero_shot = mean(name, "zero_shot_balanced_accuracy")
        lines.append(
            f"- {name}: zero-shot balanced accuracy {zero_shot:.3f} (target ≥ 2 × chance = {2 * chance:.3f}: "
            f"{'met' if zero_shot >= 2 * chance else 'NOT met'})"
        )
    if "maskedclip" in summary and "random_init" in summary:
        lp, base = (
            mean("maskedclip", "linear_probe_roc_auc_100"),
            mean("random_init", "linear_probe_roc_auc_100"),
        )
        lines.append(
            f"- MaskedCLIP LP ROC-AUC 100 %: {lp:.3f} vs random init {base:.3f} + 0.05 "
            f"({'met' if lp >= base + 0.05 else 'NOT met'})"
        )
    ft = {k: mean(k, "finetune_roc_auc_10") for k in ("maskedclip", "clip_only", "mae_only")}
    if not any(math.isnan(v) for v in ft.values()):
        ok = ft["maskedclip"] >= ft["clip_only"] and ft["maskedclip"] >= ft["mae_only"]
        lines.append(
            f"- FT ROC-AUC 10 %: MaskedCLIP {ft['maskedclip']:.3f}, CLIP-only {ft['clip_only']:.3f}, MAE-only "
            f"{ft['mae_only']:.3f} (MaskedCLIP ≥ both, the paper's Table 1: {'met' if ok else 'NOT met'})"
        )
    return lines


def plot_curves(out: Path, names: list[str], seed: int) -> Path:
    """Contrastive term / ln B, embedding cosines and the evaluations during pretraining, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name in names:
        logs_path = out / "runs" / f"{name}_seed{seed}" / "logs.jsonl"
        if not logs_path.is_file():
            continue
        logs = [json.loads(line) for line in logs_path.read_text().splitlines() if line]
        term = ROWS[name].term
        if term:
            reference = (
                f"{term}/ln_batch" if any(f"{term}/ln_batch" in r for r in logs) else f"{term}/constant"
            )
            rows = [r for r in logs if term in r and reference in r]
            steps = [r["step"] for r in rows]
            axes[0].plot(steps, [r[term] / r[reference] for r in rows], label=name)
            axes[1].plot(steps, [r[f"{term}/image_mean_cosine"] for r in rows], label=f"{name} image")
            axes[1].plot(steps, [r[f"{term}/text_mean_cosine"] for r in rows], "--", label=f"{name} text")
        points = [
            (r["step"], r["eval/zero_shot_balanced_accuracy"])
            for r in logs
            if "eval/zero_shot_balanced_accuracy" in r
        ]
        if points:
            axes[2].plot(*zip(*points, strict=True), marker="o", label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].axhline(0.9, color="grey", lw=0.8, ls=":")
    axes[0].set(title="contrastive term / ln B (sigmoid: / a constant embedding's loss)", xlabel="step")
    axes[1].set(title="mean pairwise cosine of the embeddings", xlabel="step")
    axes[2].axhline(0.25, color="grey", lw=0.8, ls=":")
    axes[2].set(title="zero-shot balanced accuracy, held-out patients", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    out = Path(args.out).resolve()
    names = list(QUICK_ROWS) if args.quick else list(args.rows)
    seeds = [0] if args.quick else list(args.pretrain_seeds)
    finetune = not (args.quick or args.no_finetune)
    bench = MulticlassBenchmark(
        out, args.data_root, args.steps, args.image_size, args.finetune_epochs, args.one_acquisition
    )
    budget = (
        f"{args.steps} steps"
        if args.steps
        else "each recipe's steps ("
        + ", ".join(sorted({f"{n} {bench.steps_for(ROWS[n])}" for n in names if ROWS[n].recipe}))
        + ")"
    )
    started = time.perf_counter()
    print(
        f"TVHL four-class task in {out}: rows {', '.join(names)}; seeds {seeds}; {budget} at "
        f"{args.image_size} px; {json.dumps(bench.summary['rows'])}",
        flush=True,
    )
    results = {name: [bench.run_row(name, seed, finetune) for seed in seeds] for name in names}
    table, summary = aggregate(results)
    curves = plot_curves(out, names, seeds[0])
    minutes = (time.perf_counter() - started) / 60
    header = (
        f"TVHL four classes (no DR / NPDR / PDR / DME), {budget} of pretraining at {args.image_size} px, "
        f"pretraining seeds {seeds}; held-out patients; {minutes:.1f} min in this invocation"
    )
    verdicts = check_targets(summary, chance=1 / len(MULTICLASS_CLASSES))
    print("\n" + header + "\n\n" + table + "\n\n" + "\n".join(verdicts) + f"\n\ncurves: {curves}")
    (out / "results.md").write_text(header + "\n\n" + table + "\n\n" + "\n".join(verdicts) + "\n")
    (out / "results.json").write_text(json.dumps({"summary": summary, "rows": results}, indent=2))
    return 0
