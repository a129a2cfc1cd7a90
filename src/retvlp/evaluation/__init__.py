"""Evaluation of pretrained dual encoders (METHODS.md §3): zero-shot, few-shot, linear probe, full and LoRA
fine-tuning, label efficiency, reports. `evaluate_models` runs them; `retvlp evaluate` is its CLI.

    data.py          manifests → labelled records (targets, patient groups, exclusions) → cached pixels
    features.py      one encoder pass → probe features + image embeddings, cached per (weights, data)
    splits.py        group-aware stratified test split, nested label fractions, few-shot draws
    zero_shot.py     prompt-ensemble prototypes and probabilities
    few_shot.py      CLIP-Adapter, Tip-Adapter, Tip-Adapter-F
    linear_probe.py  class-balanced logistic regression (C = 0.316)
    finetune.py      full / LoRA fine-tuning on Accelerate (layer decay, drop-path)
    metrics/         the six metrics as `evaluate` modules shipped in the package; fast_metrics.py: the same in
                     numpy for resampling
    bootstrap.py     patient-grouped percentile intervals; calibration.py (ECE, Brier, temperature),
                     conformal.py (LAC / APS sets), operating_points.py (thresholds at a specificity / sensitivity)
    trust.py         those figures for one result row; calibrated.py: a fine-tuned classifier's calibration.json
    evidence.py      evidence maps: patch-text similarity, attention rollout, spatial class map, Grad-CAM
    runner.py        the harness; report.py: JSON, Markdown, PNG

The names below are imported when first used (`retvlp.lazy.lazy_package`): importing the package loads none
of torch, scikit-learn or datasets.
"""

from ..lazy import lazy_package

lazy_package(
    __name__,
    {
        "FinetuneResult": ".finetune",
        "FinetuneSettings": ".finetune",
        "finetune": ".finetune",
        "TASKS": ".protocols",
        "EvaluationSettings": ".runner",
        "evaluate_models": ".runner",
    },
)

__all__ = ["TASKS", "EvaluationSettings", "FinetuneResult", "FinetuneSettings", "evaluate_models", "finetune"]
