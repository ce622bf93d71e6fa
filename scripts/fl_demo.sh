#!/usr/bin/env bash
# The federated story in a few minutes: three organisations (hospital, bank, school) that may not
# share their images fine-tune the shipped base model together on Flower's simulation engine; the
# report table compares the federated model with each organisation alone and with pooled data;
# the federated model then reads a sample document line. Without a base model it
# federates `three-orgs-mini` instead (tiny CRNN from scratch, 22-character vocabulary).
# Outputs go to demo/fl (ignored by git); running it again resumes the federation.
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOCR=.venv/bin/fedocr
OUT=${DEMO_DIR:-demo}/fl
if [ -f models/base.pt ]; then
  PRESET=three-orgs; ROUNDS=${DEMO_ROUNDS:-3}; TRAIN=(--local-epochs 1 --lines 96 --test-lines 60)
  SAMPLE=(--preset hospital --device dot-matrix)   # a prescription slip from the hospital's own printer
else
  PRESET=three-orgs-mini; ROUNDS=${DEMO_ROUNDS:-40}; TRAIN=(--local-epochs 0.5 --lines 320 --test-lines 60)
  SAMPLE=(--preset digits)
fi
mkdir -p "$OUT"
echo "== federating $PRESET for $ROUNDS rounds (resumes if interrupted)"
$FEDOCR fl simulate --preset "$PRESET" --rounds "$ROUNDS" "${TRAIN[@]}" --fraction 1 --out "$OUT/run" --store "$OUT/runs.db"
$FEDOCR fl runs --store "$OUT/runs.db"
[ -f "$OUT/sample/labels.tsv" ] || $FEDOCR synth "${SAMPLE[@]}" --n 3 --seed 11 --out "$OUT/sample"
echo "== the federated model reads $OUT/sample/images/000000.png (label: $(head -1 "$OUT/sample/labels.tsv" | cut -f2))"
$FEDOCR ocr --model "$OUT/run/model.pt" --json "$OUT/sample/images/000000.png"
