#!/usr/bin/env bash
# Run one `fedocr train` stage on a GPU machine from what scripts/pack_device.sh packed (carry
# .gpu), and leave in $OUT what comes back: NAME.fp16.pt and NAME.best.fp16.pt (fp16 weights
# without optimizer state, 6.5 MB each: a full training checkpoint is over the 16 MiB a fetched
# file may have), history-NAME.jsonl and NAME.log. Give --time-budget so the cosine schedule ends
# inside the lease; TRAIN_TIMEOUT (seconds, default 540) stops a stage that overruns: on SIGTERM
# fedocr writes a checkpoint, and that is converted (give the device call TRAIN_TIMEOUT + 60 s).
# DEVICE=cpu PYTHON=.venv/bin/python try it here first.
#   OUT=... bash scripts/device_stage.sh stage12-gpu --init .gpu/START.pt --data ... --time-budget 420
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: device_stage.sh NAME [fedocr train options]}
shift
: "${OUT:?set OUT to the folder whose files come back}"
for made in "$NAME.pt" "$NAME.best.pt" "$NAME.fp16.pt" "$NAME.best.fp16.pt" "$NAME.log" "history-$NAME.jsonl"; do
  [ ! -e "$OUT/$made" ] || { echo "device_stage: $OUT already holds $made: name this stage otherwise" >&2; exit 2; }
done
[ -f .gpu/fonts.tar.xz ] && [ -f .gpu/site.tar.xz ] || { echo "device_stage: no .gpu/*.tar.xz: run scripts/pack_device.sh here and carry .gpu" >&2; exit 2; }
mkdir -p "$OUT"
# unpacked outside the working tree: ~80 MB of fonts left in .gpu would overflow the next call
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar xJf .gpu/fonts.tar.xz -C "$unpacked" && tar xJf .gpu/site.tar.xz -C "$unpacked"
PYTHON=${PYTHON:-python3}   # the GPU machine's own, with its CUDA build of torch
DEVICE=${DEVICE:-cuda}
site=$unpacked/site
# the rapidfuzz wheel is built for Python 3.12; elsewhere the interpreter's own is used
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' && site=$site:$unpacked/site312
export PYTHONPATH=$PWD/src:$site FEDOCR_FONT_DIR=$unpacked/fonts FEDOCR_CACHE=/tmp/fedocr-cache PYTHONUNBUFFERED=1
runtime=(--device "$DEVICE" --workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))")
[ "$DEVICE" = cpu ] || runtime+=(--bf16)
status=0
timeout -k 30 "${TRAIN_TIMEOUT:-540}" "$PYTHON" -m fedocr train --out "$OUT/$NAME.pt" \
  --history "$OUT/history-$NAME.jsonl" "${runtime[@]}" --checkpoint-every 60 "$@" 2>&1 | tee "$OUT/$NAME.log" || status=$?
"$PYTHON" - "$OUT" "$NAME" <<'PY'
import sys
from pathlib import Path
from fedocr.model import compact_checkpoint
out, name = Path(sys.argv[1]), sys.argv[2]
for path in (out / f"{name}.pt", out / f"{name}.best.pt"):
    if path.is_file():
        compact_checkpoint(path, path.with_suffix(".fp16.pt"))
        path.unlink()
        print(f"{path.name} -> {path.with_suffix('.fp16.pt').name}")
PY
if [ "$status" = 124 ]; then  # the tool would report a timed-out call, though the checkpoint came back
  echo "device_stage: stopped by TRAIN_TIMEOUT (${TRAIN_TIMEOUT:-540} s); its last checkpoint is in $OUT" >&2
  exit 3
fi
exit "$status"
