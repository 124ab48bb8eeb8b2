"""app.py, the Gradio Space app, served for real from its own environment (.venv-app: gradio pins Pillow < 13):
its API analyses an uploaded image (PCA picture, attention maps, nearest neighbours), and in a headless Chromium
the page loads, an image is submitted and the result picture appears (screenshot: `app_screenshot.png` in the
test's directory, path printed)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_dinov2 import Dinov2Config, Dinov2Model

from conftest import REPO_ROOT, tiny_config_kwargs

APP_PYTHON = REPO_ROOT / ".venv-app" / "bin" / "python"
pytestmark = pytest.mark.skipif(not APP_PYTHON.exists(),
                                reason=".venv-app missing: `bash scripts/setup_env.sh dev` makes the app's environment")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """The app on a free port with a tiny model folder; yields (url, model folder, an image path)."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**tiny_config_kwargs(layerscale_value=1.0))).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64)).save(root / "query.png")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(APP_PYTHON), str(REPO_ROOT / "app.py"), "--model", str(root / "model"),
                                "--port", str(port)], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert process.poll() is None, f"the app stopped: {process.stdout.read()[-3000:]}"
                assert time.time() < deadline, "the app did not start within 3 minutes"
                time.sleep(0.5)
        yield url, root / "model", root / "query.png"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_api_analyses_an_image(served_app, tmp_path):
    url, model, image = served_app
    code = f"""
import json
from gradio_client import Client, handle_file
from PIL import Image
pca, attention, neighbours = Client({url!r}, verbose=False).predict({str(model)!r}, handle_file({str(image)!r}),
                                                                     api_name="/analyse")
print(json.dumps({{"pca": Image.open(pca).size, "attention": Image.open(attention).size,
                   "neighbours": [n["caption"] for n in neighbours]}}))
"""
    result = subprocess.run([str(APP_PYTHON), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pca"] == [224, 224]
    assert out["attention"][0] > out["attention"][1]  # one map per head, side by side
    assert len(out["neighbours"]) == 8 and all(c.startswith("cosine ") for c in out["neighbours"])
    similarities = [float(c.split()[1]) for c in out["neighbours"]]
    assert similarities == sorted(similarities, reverse=True)


def test_a_browser_submits_an_image_and_sees_the_result(served_app, tmp_path):
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.skip("no chromedriver: `apt-get install chromium chromium-driver` (scripts/setup_env.sh dev does)")
    url, _, image = served_app
    screenshot = tmp_path / "app_screenshot.png"
    code = f"""
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
options = webdriver.ChromeOptions()
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=webdriver.ChromeService({chromedriver!r}), options=options)
try:
    driver.get({url!r})
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys({str(image)!r})
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
    driver.find_element(By.CSS_SELECTOR, "#analyse").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pca img"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours img")) >= 8)
    source = driver.find_element(By.CSS_SELECTOR, "#pca img").get_attribute("src")
    driver.save_screenshot({str(screenshot)!r})
    print("PCA", source)
finally:
    driver.quit()
"""
    result = subprocess.run([str(APP_PYTHON), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "PCA " in result.stdout and screenshot.stat().st_size > 10_000
    print(f"screenshot of the app: {screenshot}", file=sys.stderr)
