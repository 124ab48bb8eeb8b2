"""One job per output directory (a lock file that names the process holding it), and one run's results in it.

A long job (`dinov2-pretrain`, `dinov2-curate`) holds its output directory while it runs, so a second job
started into the same folder stops with a clear message instead of interleaving checkpoints or replacing
results. The lock is an advisory `fcntl.flock` on ``<output_dir>/.dinov2.lock``: the kernel releases it when
the process ends in any way (also SIGKILL), so a crashed job never leaves a stale lock behind. The file holds
the PID, host and command of the holder, for the error message of the job that is refused.

In a multi-process job only one process (the main one) takes the lock.

A new run into a directory that holds an earlier run's results refuses to start unless told to replace them,
and then deletes them first (`replace_earlier_results`), so a directory never mixes two runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

LOCK_NAME = ".dinov2.lock"
logger = logging.getLogger(__name__)


class OutputDirBusyError(RuntimeError):
    """Another running job holds the output directory."""


class EarlierResultsError(FileExistsError):
    """The output directory holds the results of an earlier run, and replacing them was not asked for."""


def _holder(path: str) -> str:
    """Who holds the lock, as written in the lock file."""
    try:
        with open(path) as f:
            info = json.load(f)
        return f"PID {info['pid']} on {info['host']} ({info['command']}, since {info['started']})"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def hold_output_dir(output_dir: str | os.PathLike, job: str | None = None) -> Iterator[str]:
    """Lock `output_dir` (created if missing) for the duration of the `with` block; yield the lock file's path.

    Raises [`OutputDirBusyError`] naming the holder's PID when another live process holds it.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputDirBusyError(
                f"{output_dir} is in use by {_holder(path)}. Wait for that job to end, stop it, or choose another "
                "output directory."
            ) from None
        # the holder before us may have deleted the file between our open and our flock: then we hold a lock on
        # an unlinked inode, which nobody else sees; try again on the file that is there now
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": job or os.path.basename(sys.argv[0]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding the lock (see the inode check above)
        os.close(fd)


def replace_earlier_results(directory: str | os.PathLike, earlier: Sequence[str | os.PathLike], *, overwrite: bool,
                            how_to_overwrite: str = "", delete: bool = True) -> None:
    """Refuse `directory` when it holds `earlier` (an earlier run's results) and `overwrite` is false: an
    `EarlierResultsError` names the directory, what is there and `how_to_overwrite`. With `overwrite`, delete
    them (when `delete`: in a multi-process job only the main process does)."""
    if not earlier:
        return
    names = ", ".join(Path(path).name for path in earlier)
    if not overwrite:
        raise EarlierResultsError(f"{directory} already holds the results of an earlier run ({names}). "
                                  f"{how_to_overwrite}")
    if not delete:
        return
    logger.info("deleting the earlier run's results in %s (%s)", directory, names)
    for path in earlier:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
