"""Schedules in ``pretraining.schedules``.

Expected values are worked out by hand from the formulas, or come from a naive re-implementation of
DINOv2's ``CosineScheduler`` (NumPy array built up front, written below) that the pure functions must
match at every step.
"""

import math

import numpy as np
import pytest

from pretraining.schedules import (
    cosine_schedule,
    learning_rate,
    scaled_learning_rate,
    teacher_momentum,
    teacher_temperature,
    weight_decay,
)


def naive_cosine_array(base, final, total, warmup=0, start_warmup=0.0, zeroed=0):
    """CosineScheduler as an array: warmup linspace + cosine; then the first `zeroed` entries set to 0
    (how DINOv2's train.py builds the last-layer lr schedule)."""
    warmup_part = np.linspace(start_warmup, base, warmup)
    iters = np.arange(total - warmup)
    cosine_part = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate([warmup_part, cosine_part])
    schedule[:zeroed] = 0.0
    return schedule


def test_cosine_hand_values():
    # base 1, floor 0.1, 11 steps of which 3 warmup: warmup = linspace(0, 1, 3) = [0, 0.5, 1]; the cosine
    # part has n = 8 steps, i = step - 3.
    kwargs = dict(base_value=1.0, final_value=0.1, total_steps=11, warmup_steps=3)
    assert cosine_schedule(0, **kwargs) == pytest.approx(0.0)  # start
    assert cosine_schedule(1, **kwargs) == pytest.approx(0.5)
    assert cosine_schedule(2, **kwargs) == pytest.approx(1.0)  # end of warmup reaches the peak
    assert cosine_schedule(3, **kwargs) == pytest.approx(1.0)  # cosine starts at the peak (i = 0)
    assert cosine_schedule(7, **kwargs) == pytest.approx(0.55)  # middle: i = 4 = n/2 -> 0.1 + 0.45
    assert cosine_schedule(10, **kwargs) == pytest.approx(0.1 + 0.45 * (1 + math.cos(7 * math.pi / 8)))
    assert cosine_schedule(11, **kwargs) == pytest.approx(0.1)  # end: the floor
    assert cosine_schedule(10_000, **kwargs) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "base, final, total, warmup, start, zeroed",
    [
        (1.0, 0.1, 11, 3, 0.0, 0),
        (5e-3, 1e-6, 50, 10, 0.0, 0),
        (5e-3, 1e-6, 50, 10, 0.0, 4),  # last-layer style: first 4 steps zeroed
        (0.04, 0.4, 20, 0, 0.0, 0),
        (0.07, 0.07, 5, 5, 0.04, 0),  # teacher temperature style: pure warmup
    ],
)
def test_cosine_matches_naive_cosine_scheduler(base, final, total, warmup, start, zeroed):
    expected = naive_cosine_array(base, final, total, warmup, start, zeroed)
    got = [
        cosine_schedule(s, base, final, total, warmup_steps=warmup, start_warmup_value=start, freeze_steps=zeroed)
        for s in range(total)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert cosine_schedule(total + 5, base, final, total, warmup, start, zeroed) == final


def test_learning_rate_and_last_layer_freeze():
    lr = dict(base_lr=1e-3, total_steps=100, warmup_steps=10, min_lr=1e-6)
    assert learning_rate(0, **lr) == 0.0  # warmup from 0
    assert learning_rate(9, **lr) == pytest.approx(1e-3)  # end of warmup
    assert learning_rate(100, **lr) == pytest.approx(1e-6)
    # The frozen period overwrites the start of the same schedule; it does not shift it.
    for step in range(5):
        assert learning_rate(step, **lr, freeze_steps=5) == 0.0
    for step in (5, 9, 10, 50, 99):
        assert learning_rate(step, **lr, freeze_steps=5) == learning_rate(step, **lr)


def test_teacher_temperature_momentum_weight_decay():
    # linspace(0.04, 0.07, 4) = [0.04, 0.05, 0.06, 0.07], then constant 0.07.
    assert [teacher_temperature(s, warmup_steps=4) for s in range(6)] == pytest.approx(
        [0.04, 0.05, 0.06, 0.07, 0.07, 0.07]
    )
    assert teacher_temperature(0, warmup_steps=0) == pytest.approx(0.07)
    # Cosine without warmup: start at base, middle at (base + final) / 2, final after total steps.
    assert teacher_momentum(0, total_steps=100) == pytest.approx(0.992)
    assert teacher_momentum(50, total_steps=100) == pytest.approx(0.996)
    assert teacher_momentum(100, total_steps=100) == pytest.approx(1.0)
    assert weight_decay(0, total_steps=100) == pytest.approx(0.04)
    assert weight_decay(50, total_steps=100) == pytest.approx(0.22)
    assert weight_decay(100, total_steps=100) == pytest.approx(0.4)


def test_scaled_learning_rate():
    # README/facts: vitl16_short on 32 GPUs x 64 = 2048 images -> 0.004 * sqrt(2) = 5.66e-3.
    assert scaled_learning_rate(0.004, 2048) == pytest.approx(0.004 * math.sqrt(2))
    assert scaled_learning_rate(2e-4, 1024) == pytest.approx(2e-4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="step"):
        cosine_schedule(-1, 1.0, 0.0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(0, 1.0, 0.0, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="Batch sizes"):
        scaled_learning_rate(1e-3, 0)
