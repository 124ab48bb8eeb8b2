#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the demo (outputs in outputs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/dinov2-demo --output-dir outputs/demo "$@"
