#!/usr/bin/env bash
# The test suite on a fresh machine: set up with the test dependencies, then run pytest.
# pytest's exit code 5 (no tests collected) fails this script like any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
.venv/bin/python -m pytest "$@"
