#!/usr/bin/env bash
# One organisation's SuperNode, pointed at its own data folder (labels.tsv, LMDB or a label file).
#   deploy/supernode.sh SUPERLINK_HOST:PORT CA_CERT NODE_KEY DATA_DIR NAME [LOCAL_PORT=9094]
# NODE_KEY is this organisation's ECDSA P-384 private key in OpenSSH format; the operator must
# have registered its .pub with `flwr supernode register`. The images never leave DATA_DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"
export PATH="$HERE/../.venv/bin:$PATH"   # the SuperNode starts flwr-clientapp by name
DATA=$(realpath "$4")
[ -e "$DATA" ] || { echo "supernode.sh: $DATA: no such data set" >&2; exit 3; }
exec flower-supernode --superlink "$1" --root-certificates "$(realpath "$2")" \
  --auth-supernode-private-key "$(realpath "$3")" --port "${6:-9094}" \
  --node-config "data-path=\"$DATA\" name=\"$5\""
