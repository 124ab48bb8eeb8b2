"""The output-directory lock: a second job is refused with the holder's PID; a killed holder frees it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from modeling_dinov2.output_lock import LOCK_NAME, OutputDirBusyError, hold_output_dir

HOLD = "from modeling_dinov2.output_lock import hold_output_dir\nimport sys, time\n" \
       "with hold_output_dir(sys.argv[1], job='holder'):\n    print('held', flush=True)\n    time.sleep(600)\n"


def _start_holder(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_job_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    holder = _start_holder(tmp_path / "out")
    try:
        with pytest.raises(OutputDirBusyError, match=rf"in use by PID {holder.pid} on .*holder"):
            with hold_output_dir(tmp_path / "out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "out" / LOCK_NAME).exists()  # SIGKILL leaves the file, but not the lock
    with hold_output_dir(tmp_path / "out", job="second") as path:
        assert str(os.getpid()) in open(path).read()
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # a clean exit removes it


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with hold_output_dir(tmp_path):
            raise KeyError("boom")
    with hold_output_dir(tmp_path):
        pass


def test_nested_holds_in_one_process_are_refused(tmp_path):
    """flock is per open file: a second hold in the same process is refused too (two jobs in one interpreter)."""
    with hold_output_dir(tmp_path):
        start = time.monotonic()
        with pytest.raises(OutputDirBusyError, match=f"PID {os.getpid()}"):
            with hold_output_dir(tmp_path):
                pass
        assert time.monotonic() - start < 1  # refused at once, never waits
