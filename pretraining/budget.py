"""Fit a pretraining run into a wall-clock budget: time a few training steps, then choose the step count.

The schedules (cosine lr, weight decay, teacher momentum) need the number of steps before the first one, so
the budget is turned into `max_steps` up front: a throwaway copy of the run (the same model, collator and
arguments) trains `CALIBRATION_WARMUP + CALIBRATION_STEPS` steps on the first `CALIBRATION_WARMUP` batches'
images, over and over (the warm-up steps read and decode them; the timed steps see them cached, as the run's
steps after its first epoch do), and

    max_steps = floor(SAFETY * (budget - elapsed) / seconds_per_step),

where `elapsed` counts everything before training (setup and the calibration itself) and `seconds_per_step`
is the mean of the timed steps. The copy does not touch the run: the model is deep-copied, the random
states are restored, and the data's randomness comes from per-sample seeds.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy

logger = logging.getLogger(__name__)

CALIBRATION_WARMUP = 5  # untimed steps: first-call allocations, image decoding, DataLoader start-up
CALIBRATION_STEPS = 30  # timed steps
SAFETY = 0.97  # what the timed steps do not see: decoding in the first epoch, checkpoint saves, the export


def steps_within(seconds_left: float, seconds_per_step: float, safety: float = SAFETY) -> int:
    """The number of steps of `seconds_per_step` that fit in `safety * seconds_left` (at least 1)."""
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}.")
    return max(math.floor(safety * seconds_left / seconds_per_step), 1)


class _StepClock(TrainerCallback):
    """Records the time at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def measure_seconds_per_step(trainer: Trainer, warmup: int = CALIBRATION_WARMUP, steps: int = CALIBRATION_STEPS) -> float:
    """Mean wall time of one optimizer step of `trainer`'s run (this rank's), measured on a throwaway copy
    that trains on the images of its first `warmup` batches."""
    from .trainer import unwrap

    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, got {warmup} and {steps}.")
    rng_states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    clock = _StepClock()
    with tempfile.TemporaryDirectory(prefix="dinov2-calibration-") as scratch:
        args = copy.deepcopy(trainer.args)
        args.max_steps, args.time_budget_minutes = warmup + steps, None
        args.output_dir, args.report_to, args.disable_tqdm = scratch, [], True
        args.save_strategy = args.logging_strategy = IntervalStrategy.NO
        images = min(len(trainer.train_dataset), warmup * trainer.global_batch_size())
        calibration = type(trainer)(
            model=copy.deepcopy(unwrap(trainer.model)), args=args,
            train_dataset=torch.utils.data.Subset(trainer.train_dataset, range(images)),
            data_collator=trainer.data_collator, callbacks=[clock],
        )
        for printer in (PrinterCallback, ProgressCallback):  # its own logs would read as the run's
            calibration.remove_callback(printer)
        Trainer.train(calibration)  # the plain loop: no budget, no skipped-image report
        del calibration
    random.setstate(rng_states[0])
    np.random.set_state(rng_states[1])
    torch.set_rng_state(rng_states[2])
    if len(clock.times) < warmup + steps:
        raise RuntimeError(f"The calibration run stopped after {len(clock.times)} of {warmup + steps} steps "
                           "(is the dataset smaller than one batch?).")
    return (clock.times[-1] - clock.times[warmup - 1]) / steps


def budgeted_max_steps(trainer: Trainer, budget_minutes: float, started_at: float) -> tuple[int, float]:
    """(max_steps, seconds_per_step) for a run that must end `budget_minutes` after `started_at`
    (`time.monotonic()`). In a multi-process run every rank measures and all decide from the slowest rank's
    figures, so every rank trains the same number of steps."""
    if budget_minutes <= 0:
        raise ValueError(f"time_budget_minutes must be positive, got {budget_minutes}.")
    seconds_per_step = measure_seconds_per_step(trainer)
    elapsed = time.monotonic() - started_at
    figures = torch.tensor([seconds_per_step, elapsed], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        figures = figures.to(trainer.args.device)
        dist.all_reduce(figures, op=dist.ReduceOp.MAX)
    seconds_per_step, elapsed = figures.tolist()
    left = budget_minutes * 60 - elapsed
    max_steps = steps_within(left, seconds_per_step)
    logger.info("time budget %.1f min: %.1f s used before training, %.4f s per step (%d timed steps) -> "
                "max_steps %d", budget_minutes, elapsed, seconds_per_step, CALIBRATION_STEPS, max_steps)
    return max_steps, seconds_per_step
