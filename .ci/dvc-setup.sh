#!/usr/bin/env bash
# Make the checkout usable by DVC (git repo + dvc init) without touching an existing setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -d .git ]; then git init -q; fi
if [ ! -d .dvc ]; then dvc init -q; fi
dvc config core.analytics false
dvc config core.autostage false
