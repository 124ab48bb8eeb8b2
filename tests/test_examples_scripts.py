"""Every example script has a working --help, also when run by path from another directory."""

import importlib
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPTS = ["knn_eval", "linear_probe", "finetune", "segmentation_probe", "retrieval", "pca_features"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    module = importlib.import_module(f"examples.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--model" in out


def test_demo_help(capsys):
    from evaluation import demo

    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    assert "--time-budget" in capsys.readouterr().out


@pytest.mark.parametrize("name, option", [("knn_eval", "--temperature"), ("pca_features", "--threshold")])
def test_script_runs_by_path(tmp_path, name, option):
    # `python examples/<name>.py` from elsewhere: the scripts import the installed package, no sys.path edits
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / f"{name}.py"), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert option in result.stdout


def test_examples_is_not_an_installed_package(tmp_path):
    # a top-level `examples` package would collide with every other project's; `evaluation` is the installed home
    code = "import importlib.util as u; print(u.find_spec('examples'), u.find_spec('evaluation.demo') is not None)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["None", "True"], result.stderr


def test_hub_model_id_when_online(hub_server, fashion_mnist_dir, examples_tiny_stock_model_dir):
    # `--model facebook/dinov2-small` for a user who is online, against the local Hub-protocol server:
    # a stock transformers checkpoint is published under that id, then the k-NN script downloads it.
    from conftest import run_python

    code = f"""
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("facebook/dinov2-small", exist_ok=True)
api.upload_folder(repo_id="facebook/dinov2-small", folder_path={examples_tiny_stock_model_dir!r})
from examples.knn_eval import main
results = main(["--model", "facebook/dinov2-small", "--image-size", "28", "--resize-size", "28",
                "--train-limit", "100", "--test-limit", "50", "--ks", "10", "--device", "cpu"])
print("TOP1", results[10]["top1"])
"""
    output = run_python(code, env=hub_server["env"], cwd=REPO_ROOT)
    assert "k-NN (facebook/dinov2-small; 100 train -> 50 test" in output
    assert "TOP1" in output
