#!/usr/bin/env bash
# The recognizer alone, end to end in a few minutes: synthesize, train, evaluate, recognise.
# Outputs go to demo/ (ignored by git). Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOCR=.venv/bin/fedocr
OUT=${DEMO_DIR:-demo}/recognizer
mkdir -p "$OUT"
STEPS=${DEMO_STEPS:-500}

[ -f "$OUT/train/labels.tsv" ] || $FEDOCR synth --preset digits --n 4000 --seed 1 --out "$OUT/train"
[ -f "$OUT/test/labels.tsv" ] || $FEDOCR synth --preset digits --n 200 --seed 2 --out "$OUT/test"
echo "== training a tiny CRNN for $STEPS steps (resumes if interrupted)"
$FEDOCR train --data "$OUT/train" --out "$OUT/model.pt" --size tiny --steps "$STEPS" --lr 3e-3
echo "== evaluating on 200 held-out lines"
$FEDOCR eval --model "$OUT/model.pt" --data "$OUT/test"
echo "== recognising $OUT/test/images/000000.png (label: $(head -1 "$OUT/test/labels.tsv" | cut -f2))"
$FEDOCR ocr --model "$OUT/model.pt" --json "$OUT/test/images/000000.png"
