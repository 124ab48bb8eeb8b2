"""Output directories of the curation jobs: one job at a time, and earlier results replaced only when asked.

A job holds its output directory while it runs (:func:`modeling_dinov2.output_lock.hold_output_dir`: a lock
that names the holder's PID), so a second job into the same directory stops with a clear message. Then the
job looks for the results of an earlier job there (:data:`RUN_RESULTS`, or the files of a single step). It
refuses to replace them unless ``overwrite`` is set, and with ``overwrite`` it deletes them before it starts,
so a directory never mixes the results of two runs. What a job resumes from (embedding shards) is not a
result: an interrupted run continues without ``overwrite``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

from modeling_dinov2.output_lock import EarlierResultsError  # noqa: F401  (raised by claim_output_dir)
from modeling_dinov2.output_lock import hold_output_dir, replace_earlier_results

logger = logging.getLogger(__name__)

#: What a finished `dinov2-curate run` (``curation.pipeline.curate``) leaves in its output directory.
RUN_RESULTS = ("dataset", "report.json", "removal_log.parquet", "cluster_sizes.png")


def earlier_results(directory: Union[str, os.PathLike], patterns: Sequence[str]) -> list:
    """The files and folders in ``directory`` that match ``patterns`` (glob patterns, e.g. ``level*.npz``)."""
    found = []
    for pattern in patterns:
        found += [path for path in sorted(Path(directory).glob(pattern)) if path not in found]
    return found


@contextlib.contextmanager
def claim_output_dir(directory: Union[str, os.PathLike], results: Sequence[str], *, overwrite: bool, job: str,
                     flag: str = "--overwrite true") -> Iterator[Path]:
    """Hold ``directory`` (created if missing) for the ``with`` block, after checking it for earlier results.

    Raises:
        OutputDirBusyError: another running job holds the directory.
        EarlierResultsError: it holds earlier ``results`` and ``overwrite`` is false; the message names the
            directory, what is there, and ``flag`` (the way to set ``overwrite``).
    """
    with hold_output_dir(directory, job=job):
        replace_earlier_results(directory, earlier_results(directory, results), overwrite=overwrite,
                                how_to_overwrite=f"Pass {flag} to replace them, or choose another output directory.")
        yield Path(directory)
