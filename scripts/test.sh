#!/usr/bin/env bash
# Set up a virtual environment with every extra and run the linters and the test suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e '.[train,serve,clinical,analysis,test]'
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
