"""The high-resolution phase: the last steps of pretraining on larger global crops (DINOv2 paper, App. B.2:
518-px crops for the final 10k iterations; on the tiny preset, 28 -> 56 px).

`--high_res_steps N --high_res_global_crops_size S` train steps 1 .. T-N as configured and steps T-N+1 .. T with
global crops of side S (local crops and everything else unchanged). The schedules run over all T steps, so they
continue through the switch, and the model interpolates its position table to the larger crops (the table keeps
the size it was built with). The switch is a checkpoint: the first phase saves `checkpoint-<T-N>` and ends, and
the high-resolution phase always starts by resuming from it with the new crops, so a run resumed on either side
of the switch repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Callable

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def switch_step(max_steps: int, high_res_steps: int) -> int | None:
    """The last optimizer step at the base resolution, or None without a high-resolution phase."""
    if not high_res_steps:
        return None
    if max_steps <= 0:
        raise ValueError("--high_res_steps counts from the end of the run: give --max_steps.")
    if not 0 < high_res_steps < max_steps:
        raise ValueError(f"--high_res_steps must be between 1 and --max_steps - 1 ({max_steps - 1}); "
                         f"received {high_res_steps}.")
    return max_steps - high_res_steps


def check_high_res_size(size: int | None, global_crops_size: int, patch_size: int) -> None:
    if size is None:
        raise ValueError("--high_res_steps needs --high_res_global_crops_size (the side of the global crops then).")
    if size <= global_crops_size or size % patch_size:
        raise ValueError(f"--high_res_global_crops_size must be a multiple of the patch size ({patch_size}) larger "
                         f"than --global_crops_size ({global_crops_size}); received {size}.")


class StopAfterStep(TrainerCallback):
    """Save a checkpoint and end `Trainer.train` after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def checkpoint_step(checkpoint: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(checkpoint))
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint-<step> folder.")
    return int(match.group(1))


def train_with_high_res_phase(trainer, resume: str | None, switch: int, high_res_data: Callable[[], tuple],
                              **train_kwargs) -> None:
    """Train to `switch` on the trainer's data (unless `resume` is past it), then to the end on
    `high_res_data()` (a (dataset, collator) pair), resuming from `checkpoint-<switch>`."""
    if resume is None or checkpoint_step(resume) < switch:
        stop = StopAfterStep(switch)
        trainer.add_callback(stop)
        trainer.train(resume_from_checkpoint=resume, **train_kwargs)
        trainer.remove_callback(stop)
        resume = os.path.join(trainer.args.output_dir, f"checkpoint-{switch}")
    trainer.train_dataset, trainer.data_collator = high_res_data()
    logger.info("high-resolution phase: steps %d to %d with %s-px global crops, from %s", switch + 1,
                trainer.args.max_steps, "x".join(map(str, trainer.data_collator.global_crops_size)), resume)
    trainer.train(resume_from_checkpoint=resume, **train_kwargs)
