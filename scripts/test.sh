#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole suite (plus a short drill).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]' -r requirements-dev.txt
.venv/bin/ftstore drill --seed "${FTSTORE_DRILL_SEED:-1}"
.venv/bin/python -m pytest -q "$@"
