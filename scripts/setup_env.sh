#!/usr/bin/env bash
# Set up a fresh machine for this package (idempotent): a virtual environment in .venv with PyTorch and
# the package, plus the Fashion-MNIST files from Debian when this machine can install them.
#
#   bash scripts/setup_env.sh          # runtime dependencies
#   bash scripts/setup_env.sh dev      # and the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}

python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install --upgrade pip
# torch first, pinned: a bare `pip install torch` (or a dependency asking for it) would pull a newer,
# multi-GB CUDA build; these two wheels come from the machine's local wheel cache.
"${pip[@]}" install torch==2.14.1 torchvision==0.29.1
if [ "$extra" = dev ]; then "${pip[@]}" install -e ".[dev]"; else "${pip[@]}" install -e .; fi

# Real labelled images for the demo and the tests (Debian package dataset-fashion-mnist, 30 MB).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if $sudo true 2>/dev/null; then
    $sudo apt-get update -qq >/dev/null && \
      $sudo apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null || \
      echo "setup_env: could not install dataset-fashion-mnist; tests that need it will be skipped" >&2
  else
    echo "setup_env: not root: run 'sudo apt-get install -y --no-install-recommends dataset-fashion-mnist'" >&2
  fi
fi
# The Space app's tests (tests/test_app.py) run it from an environment of its own: gradio pins Pillow < 13, which
# the core install and its tests must not get. A headless Chromium drives its page.
if [ "$extra" = dev ]; then
  [ -x .venv-app/bin/python ] || "$python" -m venv .venv-app
  app_pip=(.venv-app/bin/python -m pip --disable-pip-version-check --quiet)
  { "${app_pip[@]}" install torch==2.14.1 torchvision==0.29.1 && "${app_pip[@]}" install -e ".[app]" selenium; } || \
    echo "setup_env: could not set up .venv-app; the app's tests will be skipped" >&2
  if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq >/dev/null; apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } || \
      echo "setup_env: could not install chromium; the app's browser test will be skipped" >&2
  fi
fi
echo "setup_env: ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
