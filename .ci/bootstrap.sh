#!/usr/bin/env bash
# Create (or reuse) the project venv, install exactly the lock files, and make sure the
# default dataset exists. Prints the venv path on the last line of stdout.
# The locks (every transitive package pinned, with hashes) come from `bash .ci/lock.sh`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements.lock"
FROST="$ROOT/requirements-frost.lock" # imagecorruptions without its deps: the -C frost textures only
HASH="$( (cat "$LOCK" "$FROST"; grep -E '^ *(INSTALL|"\$UV")' "$0") | sha256sum | cut -c1-16)"
CACHE="${NSP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nsp}"
VENV="${NSP_VENV:-$CACHE/venv-$HASH}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.nsp-complete" ]; then
  echo "[bootstrap] building venv $VENV (first time: ~2 min with uv, ~6.6 GB)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  # uv, pinned and hashed in the lock, installs the rest (pip does it if uv cannot be had)
  INSTALL_UV=(--require-hashes --no-deps -r /dev/stdin)
  awk '/^uv==/{p=1} p{print} p && !/\\$/{exit}' "$LOCK" \
    | "$VENV/bin/python" -m pip install -q "${INSTALL_UV[@]}" >&2 || true
  UV="$VENV/bin/uv"
  if [ -x "$UV" ]; then
    # the indexes pip is configured with (a local wheel index for torch, say) are searched first
    EXTRA=()
    for u in $("$VENV/bin/python" -m pip config get global.extra-index-url 2>/dev/null || true); do
      EXTRA+=(--extra-index-url "$u")
    done
    "$UV" pip install -q --python "$VENV/bin/python" --require-hashes --no-deps \
      --index-strategy unsafe-best-match "${EXTRA[@]}" -r "$LOCK" -r "$FROST" >&2
  else
    INSTALL_PIP=(--require-hashes --no-deps -r "$LOCK" -r "$FROST")
    "$VENV/bin/python" -m pip install -q "${INSTALL_PIP[@]}" >&2
  fi
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
