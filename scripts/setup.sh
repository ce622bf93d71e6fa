#!/usr/bin/env bash
# Set up fedocr on a fresh Debian machine: system fonts (+ chromium for the web-page test),
# a .venv with the CPU build of torch and the package itself, and the dashboard's chart library
# (vendored from npm). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fonts-noto-cjk fonts-wqy-zenhei fonts-wqy-microhei
  fonts-arphic-ukai fonts-arphic-uming fonts-arphic-gkai00mp fonts-arphic-gbsn00lp
  fonts-lxgw-wenkai fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fontconfig
  fonts-noto-cjk-extra fonts-urw-base35 fonts-crosextra-carlito fonts-crosextra-caladea fonts-noto-core
  chromium
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The dashboard's charts: uPlot from npm, vendored into the package's static files (committed, so a
# wheel ships them and nothing is fetched at run time). Pinned; re-fetched only when missing.
UPLOT_VERSION=1.6.32
VENDOR=src/fedocr/serve/static/vendor
if [ ! -f "$VENDOR/uPlot.iife.min.js" ] || [ ! -f "$VENDOR/uPlot.min.css" ]; then
  # npm is needed only here (the files are committed); the machine's own Node.js brings it
  # (Debian's separate npm package conflicts with NodeSource's nodejs, so it is not installed here).
  command -v npm >/dev/null || { echo "setup: $VENDOR is missing and npm is not installed: install Node.js (with npm) and run again" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
  mkdir -p "$VENDOR"
  cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$VENDOR/"
  cp "$tmp/package/LICENSE" "$VENDOR/uPlot.LICENSE"
  rm -rf "$tmp"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: this version resolves to the CPU wheel here; the constraint keeps any
# other package from pulling a CUDA build or torchvision.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev]"
# `source .venv/bin/activate` then gives `flwr run .` what it needs here: the flower-* commands on
# PATH (activate does that), no per-run `uv sync` of the app's dependencies (offline it fails,
# online it pulls a CUDA torch), no telemetry or update check.
if ! grep -q "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION" .venv/bin/activate; then
  printf '\n# fedocr: settings for Flower (scripts/setup.sh)\nexport FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0\n' >> .venv/bin/activate
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
