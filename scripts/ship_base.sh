#!/usr/bin/env bash
# Turn the best checkpoint of the base-model training into the shipped model:
# models/base.pt (fp16 weights, no optimizer state) and models/base.onnx (int8, verified export).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  SRC=$1
  [ -f "$SRC" ] || { echo "ship_base: $SRC: no such checkpoint" >&2; exit 2; }
else  # train_base.sh's last stage: its best validation, else its end
  SRC=models/training/stage2.best.pt
  [ -f "$SRC" ] || SRC=models/training/stage2.pt
fi
.venv/bin/python - "$SRC" <<'PY'
import sys
from fedocr.model import compact_checkpoint
provenance = compact_checkpoint(sys.argv[1], "models/base.pt", shipped_from=sys.argv[1])
print(f"models/base.pt from {sys.argv[1]} (step {provenance.get('steps')}, {provenance.get('lines_seen')} lines)")
PY
# int8 (the MatMuls, activation scales per line; LSTMs fp32): a line reads the same alone or in any batch
.venv/bin/fedocr export --int8 --lines 64 models/base.pt models/base.onnx
