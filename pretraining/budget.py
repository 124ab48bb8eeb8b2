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

A shared machine can be slower during the run than during the calibration (other tenants, checkpoint saves).
`DeadlineCallback` then keeps the run inside its budget: every `CHECKS`-th of the plan it projects the end from
the run's own mean step time (since its first epoch) and re-plans the run to

    max_steps = min(step + steps_within(deadline - now, mean_seconds_per_step), calibrated max_steps)

when that differs from the current plan by more than `REPLAN_TOLERANCE` of the steps left, rebuilding the
schedules for the new length (the cosine curves end at the new last step). So a run shortened while the
machine was slow gets steps back when it speeds up again, but never more than the calibration planned: the
Trainer sized its epoch loop for that.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy

from .sharding import unwrap

logger = logging.getLogger(__name__)

CALIBRATION_WARMUP = 5  # untimed steps: first-call allocations, image decoding, DataLoader start-up
CALIBRATION_STEPS = 30  # timed steps
SAFETY = 0.97  # what the timed steps do not see: decoding in the first epoch, checkpoint saves, the export
CHECKS = 20  # DeadlineCallback re-projects the end of the run 20 times over the plan
REPLAN_TOLERANCE = 0.01  # ... and re-plans only when the steps that fit differ from the steps left by more


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


def all_ranks_max(values: list[float], device) -> list[float]:
    """Element-wise MAX over the ranks of a multi-process run (the values themselves otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    figures = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(figures, op=dist.ReduceOp.MAX)
    return figures.tolist()


def budgeted_max_steps(trainer: Trainer, budget_minutes: float, started_at: float) -> tuple[int, float]:
    """(max_steps, seconds_per_step) for a run that must end `budget_minutes` after `started_at`
    (`time.monotonic()`). In a multi-process run every rank measures and all decide from the slowest rank's
    figures, so every rank trains the same number of steps."""
    if budget_minutes <= 0:
        raise ValueError(f"time_budget_minutes must be positive, got {budget_minutes}.")
    seconds_per_step = measure_seconds_per_step(trainer)
    elapsed = time.monotonic() - started_at
    seconds_per_step, elapsed = all_ranks_max([seconds_per_step, elapsed], trainer.args.device)
    left = budget_minutes * 60 - elapsed
    max_steps = steps_within(left, seconds_per_step)
    logger.info("time budget %.1f min: %.1f s used before training, %.4f s per step (%d timed steps) -> "
                "max_steps %d", budget_minutes, elapsed, seconds_per_step, CALIBRATION_STEPS, max_steps)
    return max_steps, seconds_per_step


class DeadlineCallback(TrainerCallback):
    """Re-plan a budgeted run whose machine turned slower (or faster again) than its calibration, so it still
    ends by `deadline` (`clock()` time, default `time.monotonic`). The step time is the run's mean since it
    settled, after `settle_steps` (default: one epoch or a quarter of the plan, whichever is shorter), as the
    first epoch also decodes the images that the later ones read from the cache (`SAFETY` covers that).
    Then every `max_steps // CHECKS` steps the rule of the module docstring applies; every rank decides from the slowest
    rank's figures, so all train the same number of steps. Each change is logged, recorded in
    `trainer.budget["replanned"]` as (step, old max_steps, new max_steps), and kept by checkpoints
    (`TrainerState.max_steps`), so a resumed run continues the new plan."""

    def __init__(self, trainer: Trainer, deadline: float, clock: Callable[[], float] = time.monotonic,
                 settle_steps: int | None = None):
        self.trainer, self.deadline, self.clock, self.settle_steps = trainer, deadline, clock, settle_steps
        self.settled_step = self.settled_time = self.check_every = self.planned_steps = None

    def on_train_begin(self, args, state, control, **kwargs):
        settle = self.settle_steps
        if settle is None:
            settle = min(self.trainer.steps_per_epoch(), state.max_steps // 4)
        self.settled_step, self.settled_time = state.global_step + settle, None
        if settle == 0:
            self.settled_time = self.clock()
        self.check_every = max(state.max_steps // CHECKS, 1)
        self.planned_steps = state.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.settled_step and self.settled_time is None:
            self.settled_time = self.clock()
            return
        steps = state.global_step - self.settled_step
        if self.settled_time is None or steps <= 0 or steps % self.check_every or state.global_step >= state.max_steps:
            return
        now = self.clock()
        seconds_per_step, overdue = all_ranks_max([(now - self.settled_time) / steps, now - self.deadline],
                                                   args.device)
        fits = steps_within(-overdue, seconds_per_step) if overdue < 0 else 0
        target = min(state.global_step + max(fits, 1), self.planned_steps)
        if abs(target - state.max_steps) <= REPLAN_TOLERANCE * (state.max_steps - state.global_step):
            return
        self.replan(state, target, seconds_per_step)

    def replan(self, state, max_steps: int, seconds_per_step: float) -> None:
        """Make `max_steps` the run's last step: the Trainer's state, the arguments, the schedules, the bar."""
        trainer = self.trainer
        logger.warning("time budget: %.4f s per step since the first epoch (calibrated %.4f): re-planning the run "
                       "from %d to %d steps at step %d to end by the deadline", seconds_per_step,
                       (trainer.budget or {}).get("seconds_per_step", float("nan")), state.max_steps, max_steps,
                       state.global_step)
        if trainer.budget is not None:
            trainer.budget.setdefault("replanned", []).append((state.global_step, state.max_steps, max_steps))
            trainer.budget["max_steps"] = max_steps
        state.max_steps = trainer.args.max_steps = max_steps
        trainer.schedule = trainer.build_schedule(max_steps)
        if hasattr(trainer.lr_scheduler, "schedule"):  # RecipeScheduler
            trainer.lr_scheduler.schedule = trainer.schedule
        for callback in trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if isinstance(callback, ProgressCallback) and bar is not None:
                bar.total = max_steps
                bar.refresh()
