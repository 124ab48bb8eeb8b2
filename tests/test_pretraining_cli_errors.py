"""`dinov2-pretrain` refuses what would silently go wrong: bad settings get one line naming the setting, a data
set smaller than one batch (no step, an untrained export), and a second job into a folder a running job holds."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from modeling_dinov2.output_lock import LOCK_NAME
from pretraining import cli


def _pictures(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def _error_line(capsys, argv, code=1):
    """Run the CLI in-process; return its stderr, which must be one `dinov2-pretrain: error:` line."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("dinov2-pretrain: error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("option, value, expected", [
    ("--num_attention_heads", "0", "`num_attention_heads` must be a positive integer, got 0"),
    ("--model_name_or_path", "runs/no/such/final", "--model_name_or_path runs/no/such/final: no such folder"),
    ("--distill_from", "{tmp}", "--distill_from {tmp}: the folder holds no config.json"),
    ("--local_crops_size", "15", "--local_crops_size 15 is not a multiple of the patch size 7"),
])
def test_bad_settings_are_one_line_errors_naming_the_setting(tmp_path, capsys, option, value, expected):
    images = _pictures(tmp_path / "images", 4)
    argv = ["--train_dir", images, "--output_dir", str(tmp_path / "out"), option, value.format(tmp=tmp_path)]
    assert expected.format(tmp=tmp_path) in _error_line(capsys, argv)
    assert not (tmp_path / "out" / "final").exists()


def test_a_misspelt_arch_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--arch", "vit_smal", "--train_dir", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vit_smal' (choose from 'vit_base'" in capsys.readouterr().err


def test_fewer_images_than_one_batch_is_refused_and_nothing_is_exported(tmp_path, capsys):
    images = _pictures(tmp_path / "images", 5)
    argv = ["--train_dir", images, "--output_dir", str(tmp_path / "out"), "--max_steps", "3", "--report_to", "none"]
    err = _error_line(capsys, argv)
    assert "5 training images are fewer than one batch (128 per process x 1 process(es) = 128)" in err
    assert "at most 5" in err
    assert not (tmp_path / "out" / "backbone").exists() and not (tmp_path / "out" / "final").exists()


def test_a_second_job_into_a_running_jobs_folder_is_refused(tmp_path):
    images = _pictures(tmp_path / "images", 64)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pretraining.cli", "--train_dir", images, "--output_dir", str(out),
               "--per_device_train_batch_size", "16", "--report_to", "none", "--disable_tqdm", "true",
               "--save_strategy", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command + ["--max_steps", "100000"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            if (out / LOCK_NAME).exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert first.poll() is None and (out / LOCK_NAME).exists()
        second = subprocess.run(command + ["--max_steps", "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 1
        assert f"is in use by PID {first.pid} on" in second.stderr and "dinov2-pretrain" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the killed job's lock is gone with it: the folder can be resumed or, as here, started over
    result = subprocess.run(command + ["--max_steps", "2", "--overwrite_output_dir", "true"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "backbone" / "config.json").exists() and not (out / LOCK_NAME).exists()
