#!/usr/bin/env bash
# Set up a virtual environment with every extra, then run the linter, the type checker and
# the test suite.
# System tools some tests use (skipped with a reason when absent): dicom3tools, orthanc,
# chromium (see .ci/run).
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e '.[train,serve,clinical,analysis,cluster,test]'
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
