#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml: every transitive package pinned, with hashes.
#   requirements.lock        the project + [test] + [setup] extras (uv pip compile)
#   requirements-frost.lock  imagecorruptions, installed without its dependencies (frost textures only)
# Usage: bash .ci/lock.sh [--upgrade | --upgrade-package NAME]   (needs uv; existing pins are kept otherwise)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV="${UV:-$(command -v uv || echo "$(dirname "$(command -v python)")/uv")}"
# the indexes pip is configured with here (torch/torchvision may come from a local wheel index);
# the lock records versions and hashes only, and PyPI serves the same files.
EXTRA=()
for u in $(python3 -m pip config get global.extra-index-url 2>/dev/null || true); do EXTRA+=(--extra-index-url "$u"); done
COMMON=(--generate-hashes --python-version 3.11 --index-strategy unsafe-best-match "${EXTRA[@]}")
"$UV" pip compile pyproject.toml --extra test --extra setup "${COMMON[@]}" -o requirements.lock "$@"
printf 'imagecorruptions==1.1.2\n' >.ci/frost.in
"$UV" pip compile .ci/frost.in --no-deps "${COMMON[@]}" -o requirements-frost.lock "$@"
