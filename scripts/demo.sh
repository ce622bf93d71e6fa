#!/usr/bin/env bash
# The README's main job: the federated story on this machine in a few minutes
# (scripts/fl_demo.sh). scripts/recognizer_demo.sh shows the recognizer alone.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/fl_demo.sh "$@"
