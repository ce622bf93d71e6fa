#!/usr/bin/env bash
# The deployment engine end to end on one machine: certificates, a SuperLink with TLS and node
# authentication, three SuperNodes (hospital, bank, school) each on its own data folder, a
# federated run, then everything stopped by PID (also on Ctrl-C or failure).
#   deploy/local_federation.sh [WORK_DIR=deploy-demo] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-deploy-demo}"); ROUNDS=${2:-3}; PORT=${PORT:-9093}
FEDOCR=.venv/bin/fedocr
mkdir -p "$WORK"
. deploy/env.sh "$WORK/flwr"
export PATH="$PWD/.venv/bin:$PATH"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

[ -f "$WORK/certs/ca.crt" ] || $FEDOCR fl certs --out "$WORK/certs" --hosts 127.0.0.1,localhost --nodes hospital,bank,school
$FEDOCR fl certs --check --out "$WORK/certs" --hosts 127.0.0.1
for org in hospital bank school; do
  [ -f "$WORK/data/$org/labels.tsv" ] || $FEDOCR synth --preset "$org" --n 200 --seed 7 --out "$WORK/data/$org"
done

deploy/superlink.sh "$WORK/certs" "$WORK/state" "$PORT" > "$WORK/superlink.log" 2>&1 & PIDS+=($!)
for _ in $(seq 60); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 1; done
deploy/connect.sh "127.0.0.1:$PORT" "$WORK/certs/ca.crt" "$WORK/flwr"
for org in hospital bank school; do flwr supernode register "$WORK/certs/nodes/$org.pub" fedocr --name "$org" || true; done
i=0
for org in hospital bank school; do
  deploy/supernode.sh "127.0.0.1:$PORT" "$WORK/certs/ca.crt" "$WORK/certs/nodes/$org" "$WORK/data/$org" "$org" \
    $((9100 + i)) > "$WORK/supernode-$org.log" 2>&1 & PIDS+=($!)
  i=$((i + 1))
done
flwr run . fedocr --stream --run-config "num-rounds=$ROUNDS fraction-train=1.0 out-dir=\"$WORK/run\" store=\"$WORK/runs.db\""
$FEDOCR fl show --store "$WORK/runs.db" run
