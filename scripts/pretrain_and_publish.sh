#!/usr/bin/env bash
# Flagship recipe: pre-train SegFormer-B2 on the iSAID pseudo-labels, then publish
# alps/segformer-b2-isaid-pseudo. Runs on one GPU or many (`accelerate config` decides).
#
#   bash scripts/pretrain_and_publish.sh                       # defaults below
#   DATASET=./isaid-pseudo OUT=./ckpt bash scripts/pretrain_and_publish.sh --max-steps 1000
#
# Extra arguments go to `alps-hf pretrain`. Log in first (`hf auth login` or HF_TOKEN).
set -euo pipefail

# Optimiser settings follow SegFormer's published recipe (AdamW, lr 6e-5, poly schedule); the
# step count is this recipe's choice, not a number from the ALPS paper: adjust to your budget.

DATASET="${DATASET:-alps/isaid-pseudo}"
OUT="${OUT:-./segformer-b2-isaid-pseudo}"
REPO="${REPO:-alps/segformer-b2-isaid-pseudo}"
MODEL="${MODEL:-segformer-b2}"

accelerate launch -m alps_hf.cli pretrain \
  --dataset "$DATASET" \
  --model "$MODEL" \
  --output "$OUT" \
  --crop-size 512 \
  --batch-size 8 \
  --learning-rate 6e-5 \
  --max-steps 80000 \
  --eval-split none \
  "$@"

# Validates the folder (weights load, card parses) before sending anything; one commit.
alps-hf push "$OUT" --repo-id "$REPO"
