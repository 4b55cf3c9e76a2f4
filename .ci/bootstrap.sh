#!/usr/bin/env bash
# Create (or reuse) the project venv, install the pinned stack, and make sure the
# default dataset exists. Prints the venv path on the last line of stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements.lock"
HASH="$( (cat "$LOCK"; sed -n '/^dependencies/,/^]/p' "$ROOT/pyproject.toml"; grep -E "pip install.*==" "$0") | sha256sum | cut -c1-16)"
CACHE="${NSP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nsp}"
VENV="${NSP_VENV:-$CACHE/venv-$HASH}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.nsp-complete" ]; then
  echo "[bootstrap] building venv $VENV (first time: ~4 min, ~6.6 GB)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 >&2
  "$VENV/bin/python" -m pip install -q -r "$LOCK" >&2
  # Frost textures for the -C suite ship inside this wheel; the package itself is never imported.
  "$VENV/bin/python" -m pip install -q --no-deps imagecorruptions==1.1.2 >&2
  touch "$VENV/.nsp-complete"
fi
# The package itself is always (re)linked in editable mode: cheap, and the clone may move.
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2

DATA="${NSP_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
if [ ! -e "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing Debian package dataset-fashion-mnist" >&2
    (apt-get install -y -q dataset-fashion-mnist >&2 || { apt-get update -q >&2 && apt-get install -y -q dataset-fashion-mnist >&2; }) \
      || echo "[bootstrap] WARNING: could not install dataset-fashion-mnist; set NSP_DATA_DIR" >&2
  else
    echo "[bootstrap] WARNING: Fashion-MNIST not found in $DATA; set NSP_DATA_DIR (see README)" >&2
  fi
fi
# Headless Chromium for the dashboard's real-browser test (best effort; the test skips without it).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q chromium >&2 || true
fi
echo "$VENV"
