#!/usr/bin/env bash
# Train (or resume) the shipped base model: a `small` CRNN on the `pretrain` corpus (60% everyday
# Chinese from jieba word frequencies + rare characters + English/numbers, 40% the four domains),
# rendered on the fly with 10 training faces; validated on the `public` preset.
#   stage 1: 1.5 M lines, batch 128, AdamW 1.5e-3, cosine;  stage 2: 0.5 M other lines at 3e-4.
# Interrupt it at any time: running it again resumes the unfinished stage exactly (weights,
# optimizer, schedule, data position). Then `bash scripts/ship_base.sh` writes models/base.*.
#
#   bash scripts/train_base.sh                      # CPU: ~24 lines/s with bf16, about a day
#   DEVICE=cuda bash scripts/train_base.sh          # a GPU: ~1,700 lines/s with 14 render workers
# A machine without fontconfig/Debian fonts: scripts/pack_fonts.py, then FEDOCR_FONT_DIR=that folder.
# STAGE1_BUDGET / STAGE2_BUDGET (seconds) fit each stage's schedule to a time limit instead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=models/training
FEDOCR=${FEDOCR:-.venv/bin/fedocr}
DEVICE=${DEVICE:-cpu}
if [ "$DEVICE" = cpu ]; then RUNTIME=(--threads "${THREADS:-$(nproc)}" --workers 0); else RUNTIME=(--workers "${WORKERS:-$(( $(nproc) - 2 ))}"); fi
mkdir -p "$OUT"
common=(--val synth:public:200:424242 --size small --batch-size 128 --bf16 --device "$DEVICE"
        --eval-every 2000 --checkpoint-every 120 "${RUNTIME[@]}")

stage1=(--steps 14000 ${STAGE1_BUDGET:+--time-budget "$STAGE1_BUDGET"})
"$FEDOCR" train --data synth:pretrain:1500000:2 --out "$OUT/stage1.pt" --history "$OUT/history-stage1.jsonl" \
  --lr 1.5e-3 --warmup 500 --seed 2 "${stage1[@]}" "${common[@]}" "$@"

stage2=(--steps 2200 ${STAGE2_BUDGET:+--time-budget "$STAGE2_BUDGET"})
"$FEDOCR" train --data synth:pretrain:500000:3 --out "$OUT/stage2.pt" --history "$OUT/history-stage2.jsonl" \
  --init "$OUT/stage1.pt" --lr 3e-4 --warmup 100 --seed 3 "${stage2[@]}" "${common[@]}" "$@"
