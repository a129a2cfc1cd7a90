#!/usr/bin/env bash
# The documented evaluation of the demo MaskedCLIP (docs/evaluation.md): run after the README's main command
# (which leaves outputs/demo_maskedclip/final). Offline, ~1–2 min on 2 CPU cores. Writes docs/evaluation_demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
model=maskedclip=outputs/demo_maskedclip/final
# Zero-shot, few-shot (1/5/10 shots) and the linear-probe label-efficiency sweep (1/10/100 %), 5 seeds each.
retvlp evaluate --model "$model" --random-init --data demo --task zero-shot,few-shot,linear-probe \
  --seeds 0,1,2,3,4 --maps 1 --output-dir docs/evaluation_demo/frozen --no-progress
# Full fine-tuning and LoRA at 10 % and 100 % of the labels (METHODS §1 "Downstream"), shortened to 5 epochs.
retvlp evaluate --model "$model" --random-init --data demo --task finetune,lora \
  --fractions 0.1,1.0 --seeds 0 --epochs 5 --warmup-epochs 1 --no-save-models \
  --output-dir docs/evaluation_demo/finetuned --no-progress
