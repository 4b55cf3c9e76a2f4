#!/usr/bin/env bash
# Make the checkout usable by DVC without touching a committed or existing setup: the DVC project
# files (.dvc/config, .dvc/.gitignore, .dvcignore) are in git, so a fresh clone stays clean.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -e .git ]; then git init -q; fi # a worktree's .git is a file
if [ ! -d .dvc ]; then dvc init -q; fi
# only write the config when a value differs (a rewrite would dirty the committed file)
[ "$(dvc config core.analytics 2>/dev/null)" = false ] || dvc config core.analytics false
[ "$(dvc config core.autostage 2>/dev/null)" = false ] || dvc config core.autostage false
