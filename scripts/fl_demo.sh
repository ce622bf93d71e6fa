#!/usr/bin/env bash
# The federated story in a few minutes: three organisations (hospital, bank, school) that may not
# share their images train one recognizer together on Flower's simulation engine; the report
# table compares it with each organisation alone and with pooled data; the federated model then
# reads a sample image. Without the shipped base model it uses the small `three-orgs-mini`
# federation (tiny CRNN from scratch, 22-character vocabulary). Outputs go to demo/fl (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOCR=.venv/bin/fedocr
OUT=${DEMO_DIR:-demo}/fl
ROUNDS=${DEMO_ROUNDS:-10}
if [ -f models/base.pt ]; then PRESET=three-orgs; else PRESET=three-orgs-mini; fi
mkdir -p "$OUT"
echo "== federating $PRESET for $ROUNDS rounds (resumes if interrupted)"
$FEDOCR fl simulate --preset "$PRESET" --rounds "$ROUNDS" --local-epochs 2 --lines 320 --test-lines 60 \
  --fraction 1 --out "$OUT/run" --store "$OUT/runs.db"
$FEDOCR fl runs --store "$OUT/runs.db"
[ -f "$OUT/sample/labels.tsv" ] || $FEDOCR synth --preset digits --n 1 --seed 11 --out "$OUT/sample"
echo "== the federated model reads $OUT/sample/images/000000.png (label: $(head -1 "$OUT/sample/labels.tsv" | cut -f2))"
$FEDOCR ocr --model "$OUT/run/model.pt" --json "$OUT/sample/images/000000.png"
