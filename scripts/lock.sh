#!/usr/bin/env bash
# Refresh requirements-lock.txt: every package (and its version) that scripts/test.sh
# installs, resolved with `uv pip compile` from pyproject.toml's test extra and
# requirements-dev.txt. torch resolves to the CPU build (PyTorch's CPU wheels where a
# find-links folder holds them, as on this project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  python3 -m venv .venv-lock
  .venv-lock/bin/python -m pip install -q uv
  uv=.venv-lock/bin/uv
fi
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)
"$uv" pip compile pyproject.toml --extra test requirements-dev.txt "${links[@]}" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --no-header --custom-compile-command "bash scripts/lock.sh" -o requirements-lock.txt
