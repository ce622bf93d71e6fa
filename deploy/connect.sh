#!/usr/bin/env bash
# Point the operator's `flwr` CLI at the SuperLink (a "SuperLink connection" named fedocr).
#   deploy/connect.sh SUPERLINK_HOST:PORT CA_CERT [FLWR_HOME]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh" "${3:-}"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedocr"

[superlink.fedocr]
address = "$1"
root-certificates = "$(realpath "$2")"
TOML
echo "wrote $FLWR_HOME/config.toml (connection fedocr -> $1)"
