"""Shared fixtures: tiny model configs, a local Hub-protocol server, and a clean subprocess runner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
HUB_TOKEN = "hf_test"


def tiny_config_kwargs(**overrides) -> dict:
    """A 2-block, 32-wide ViT with patch 14 and a 2x2 position table: milliseconds per forward."""
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """Start tests/hubserver.py (a stdlib Hub-protocol server) on a free port; yield its client environment.

    Hugging Face libraries read HF_ENDPOINT at import time, so clients must run in a subprocess started with
    `hub_server["env"]` (see `run_python`).
    """
    data_dir = tmp_path_factory.mktemp("hub")
    port_file = data_dir / "port"
    process = subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "hubserver.py"), "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--port-file", str(port_file), "--token", HUB_TOKEN],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        endpoint = None
        for _ in range(200):
            if port_file.exists():
                endpoint = f"http://127.0.0.1:{port_file.read_text().strip()}"
                try:
                    urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=1)
                    break
                except OSError:
                    pass
            if process.poll() is not None:
                raise RuntimeError(f"hubserver exited: {process.stderr.read().decode()}")
            time.sleep(0.05)
        else:
            raise RuntimeError("hubserver did not start within 10 s")
        env = {
            "HF_ENDPOINT": endpoint,
            "HF_TOKEN": HUB_TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
            "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        }
        yield {"endpoint": endpoint, "token": HUB_TOKEN, "env": env}
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_python(code: str, env: dict | None = None, cwd: str | os.PathLike | None = None, timeout: int = 600):
    """Run `code` in a fresh interpreter (no state from this process); fail the test with its output on error."""
    full_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", code], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"subprocess failed ({result.returncode}):\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}")
    return result.stdout


# ----------------------------------------------------------------------------------------------------
# examples/ (tests/test_examples_*.py)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def examples_tiny_model_dir(tmp_path_factory):
    """A saved random-init modeling_dinov2 ViT: 2 blocks, width 32, patch 14, 28-px table.

    LayerScale starts at 1.0 (not the pretraining 1e-5), so at random init the blocks change the tokens
    and the CLS features differ between images.
    """
    import torch

    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("examples_tiny_dinov2")
    Dinov2Model(Dinov2Config(**tiny_config_kwargs(layerscale_value=1.0))).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def examples_tiny_stock_model_dir(tmp_path_factory):
    """The same tiny ViT as transformers' own `Dinov2Model` (model_type `dinov2`), saved."""
    import torch
    from transformers import Dinov2Config as StockDinov2Config
    from transformers import Dinov2Model as StockDinov2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("examples_tiny_stock_dinov2")
    StockDinov2Model(StockDinov2Config(**tiny_config_kwargs(layerscale_value=1.0))).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """The Debian Fashion-MNIST folder; skips the test when the package is not installed."""
    from evaluation.data import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR}; run: {FASHION_MNIST_INSTALL}")
    return FASHION_MNIST_DIR


@pytest.fixture
def one_torch_thread():
    """Run torch on one intra-op thread for the test: tiny tensors gain nothing from a second thread, and on a
    shared machine its hand-offs cost more than the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
