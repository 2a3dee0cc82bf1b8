#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,notebooks,data,tpu,hf,lmeval,ray]"
# Formatting (pyink: 2-space indent, 100 columns) and lint (ruff) are part of the test.
.venv/bin/pyink --check --quiet .
.venv/bin/ruff check --quiet .
# loadfile: a test file's module fixtures (compiled models, prepared data) are built once.
# --durations: the slowest tests are listed, to keep the suite under its 20-minute budget.
exec .venv/bin/python -m pytest -n 2 --dist loadfile --durations=25 "$@"
