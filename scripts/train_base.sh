#!/usr/bin/env bash
# Train (or resume) the shipped base model: a `small` CRNN on the `pretrain` corpus (60% everyday
# Chinese from jieba word frequencies + rare characters + English/numbers, 40% the four domains),
# rendered on the fly with 10 training faces; validated on the `public` preset every 500 steps.
# Interrupt it at any time: running it again resumes exactly (weights, optimizer, schedule,
# data position). Then `bash scripts/ship_base.sh` writes models/base.pt + models/base.onnx.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=models/training
mkdir -p "$OUT"
exec .venv/bin/fedocr train \
  --data synth:pretrain:1000000:1 --val synth:public:200:424242 \
  --out "$OUT/base-train.pt" --history "$OUT/history.jsonl" \
  --size small --steps 200000 --batch-size 32 --lr 1e-3 --seed 1 \
  --eval-every 500 --checkpoint-every 600 --threads "${THREADS:-$(nproc)}" "$@"
