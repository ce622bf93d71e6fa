#!/usr/bin/env bash
# The operator's SuperLink with TLS and SuperNode authentication.
#   deploy/superlink.sh CERTS_DIR STATE_DIR [PORT=9093]
# CERTS_DIR holds ca.crt, server.pem, server.key (`fedocr fl certs`); STATE_DIR keeps the
# SuperLink database, so a restarted SuperLink keeps runs and node registrations.
set -euo pipefail
CERTS=$(realpath "$1"); STATE=$(realpath -m "$2"); PORT=${3:-9093}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh" "$STATE/flwr"
export PATH="$HERE/../.venv/bin:$PATH"   # the SuperLink starts flower-superexec / flwr-serverapp by name
fedocr fl certs --check --out "$CERTS" --nodes "" >/dev/null   # fail before starting on a bad certificate
mkdir -p "$STATE"
exec flower-superlink --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" \
  --ssl-keyfile "$CERTS/server.key" --database "$STATE/superlink.db" \
  --disable-runtime-dependency-installation --enable-supernode-auth --host 0.0.0.0 --port "$PORT"
