"""Training schedules as pure functions of the optimizer step.

Each function maps ``step`` (0-based count of optimizer steps) to a value, so a Trainer callback can
recompute every hyperparameter from ``state.global_step`` without storing anything. The semantics
follow ``CosineScheduler`` in DINOv2 (``dinov2/utils/utils.py``) and the schedules built in
``dinov2/train/train.py``:

- learning rate: linear warmup from 0 to ``base_lr``, then cosine decay to ``min_lr``;
- last-layer learning rate: the learning-rate schedule with its first ``freeze_steps`` values set to 0;
- weight decay: cosine 0.04 -> 0.4, no warmup;
- teacher momentum: cosine 0.992 -> 1.0, no warmup;
- teacher temperature: linear 0.04 -> 0.07 over the warmup, then constant.

All schedules return their final value for ``step >= total_steps``.
"""

import math
from dataclasses import dataclass


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}.")


def cosine_schedule(
    step: int,
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
    freeze_steps: int = 0,
) -> float:
    """Cosine schedule with linear warmup, an optional frozen (zero) start, and a floor.

    With ``n = total_steps - warmup_steps`` and ``i = step - warmup_steps``:

    - ``step < freeze_steps``: 0 (the frozen period overwrites the start of the schedule, as DINOv2
      does for the last-layer learning rate; it does not shift the schedule);
    - ``step < warmup_steps``: ``linspace(start_warmup_value, base_value, warmup_steps)[step]``, so the
      last warmup step already equals ``base_value``;
    - ``step < total_steps``: ``final + 0.5 * (base - final) * (1 + cos(pi * i / n))``;
    - otherwise: ``final_value``.

    Args:
        step: Optimizer step, starting at 0.
        base_value: Value reached at the end of the warmup (peak).
        final_value: Floor reached at ``total_steps`` and kept afterwards.
        total_steps: Length of the schedule (warmup included).
        warmup_steps: Number of linear warmup steps.
        start_warmup_value: First warmup value.
        freeze_steps: Number of initial steps forced to 0.

    Returns:
        The scheduled value at ``step``.
    """
    _check_step(step)
    if total_steps < 0 or warmup_steps < 0 or freeze_steps < 0:
        raise ValueError(
            "`total_steps`, `warmup_steps` and `freeze_steps` must be >= 0, got "
            f"{total_steps}, {warmup_steps} and {freeze_steps}."
        )
    if warmup_steps > total_steps:
        raise ValueError(f"`warmup_steps` must be <= `total_steps` ({total_steps}), got {warmup_steps}.")

    if step < freeze_steps:
        return 0.0
    if step >= total_steps:
        return float(final_value)
    if step < warmup_steps:
        if warmup_steps == 1:  # np.linspace(a, b, 1) == [a]
            return float(start_warmup_value)
        return start_warmup_value + (base_value - start_warmup_value) * step / (warmup_steps - 1)
    i = step - warmup_steps
    n = total_steps - warmup_steps
    return final_value + 0.5 * (base_value - final_value) * (1.0 + math.cos(math.pi * i / n))


def learning_rate(
    step: int,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    min_lr: float = 1e-6,
    freeze_steps: int = 0,
) -> float:
    """Learning rate: linear warmup from 0 to ``base_lr``, cosine decay to ``min_lr``.

    Use ``freeze_steps`` (DINOv2: ``freeze_last_layer_epochs * 1250`` = 1250) for the DINO head's
    ``last_layer``, whose learning rate is 0 during the first epoch.
    """
    return cosine_schedule(
        step,
        base_value=base_lr,
        final_value=min_lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        start_warmup_value=0.0,
        freeze_steps=freeze_steps,
    )


def scaled_learning_rate(base_lr: float, global_batch_size: int, reference_batch_size: int = 1024) -> float:
    """DINOv2 square-root scaling rule: ``lr = base_lr * sqrt(global_batch_size / 1024)``."""
    if global_batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(
            "Batch sizes must be > 0, got "
            f"global_batch_size={global_batch_size}, reference_batch_size={reference_batch_size}."
        )
    return base_lr * math.sqrt(global_batch_size / reference_batch_size)


def weight_decay(step: int, total_steps: int, base_value: float = 0.04, final_value: float = 0.4) -> float:
    """Weight decay: cosine from ``base_value`` to ``final_value`` (0.04 -> 0.4 by default; 0.2 for L/g)."""
    return cosine_schedule(step, base_value=base_value, final_value=final_value, total_steps=total_steps)


def teacher_momentum(step: int, total_steps: int, base_value: float = 0.992, final_value: float = 1.0) -> float:
    """EMA teacher momentum: cosine from ``base_value`` to ``final_value`` (0.992 -> 1; 0.994 for L/g)."""
    return cosine_schedule(step, base_value=base_value, final_value=final_value, total_steps=total_steps)


def teacher_temperature(
    step: int, warmup_steps: int, warmup_value: float = 0.04, final_value: float = 0.07
) -> float:
    """Teacher temperature: ``linspace(warmup_value, final_value, warmup_steps)[step]``, then ``final_value``.

    DINOv2 uses ``warmup_steps = 30 * 1250 = 37_500`` and the same value for the DINO and iBOT targets.
    """
    return cosine_schedule(
        step,
        base_value=final_value,
        final_value=final_value,
        total_steps=warmup_steps,
        warmup_steps=warmup_steps,
        start_warmup_value=warmup_value,
    )


@dataclass(frozen=True)
class PretrainingSchedule:
    """Every scheduled hyperparameter of a DINOv2 run, as a function of the optimizer step.

    Lengths are in optimizer steps (DINOv2: epochs x 1250 iterations). ``base_lr`` is the peak learning
    rate actually used (already scaled with the batch size, see :func:`scaled_learning_rate`).
    """

    total_steps: int
    base_lr: float
    warmup_steps: int
    min_lr: float = 1e-6
    freeze_last_layer_steps: int = 0
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher_start: float = 0.992
    momentum_teacher_end: float = 1.0
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_steps: int = 0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1, got {self.total_steps}.")
        # a warmup longer than the run is clipped to it (short test / debug runs of a long recipe)
        object.__setattr__(self, "warmup_steps", min(self.warmup_steps, self.total_steps))

    def lr(self, step: int) -> float:
        return learning_rate(step, self.base_lr, self.total_steps, self.warmup_steps, self.min_lr)

    def last_layer_lr(self, step: int) -> float:
        return learning_rate(
            step, self.base_lr, self.total_steps, self.warmup_steps, self.min_lr, self.freeze_last_layer_steps
        )

    def weight_decay(self, step: int) -> float:
        return weight_decay(step, self.total_steps, self.weight_decay_start, self.weight_decay_end)

    def momentum_teacher(self, step: int) -> float:
        return teacher_momentum(step, self.total_steps, self.momentum_teacher_start, self.momentum_teacher_end)

    def teacher_temp(self, step: int) -> float:
        return teacher_temperature(step, self.teacher_temp_warmup_steps, self.teacher_temp_start, self.teacher_temp_end)

    def values(self, step: int) -> dict[str, float]:
        """All values at ``step``, named as they are logged."""
        return {
            "lr": self.lr(step),
            "last_layer_lr": self.last_layer_lr(step),
            "weight_decay": self.weight_decay(step),
            "momentum_teacher": self.momentum_teacher(step),
            "teacher_temp": self.teacher_temp(step),
        }
