# Source this before any Flower command of a fedocr federation (notes/flower-1.42.md):
#   . deploy/env.sh [FLWR_HOME]
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # else the SuperLink runs `uv sync` per run
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_HOME="${1:-${FLWR_HOME:-$HOME/.fedocr/flwr}}"   # SuperLink connections live in $FLWR_HOME/config.toml
mkdir -p "$FLWR_HOME"
