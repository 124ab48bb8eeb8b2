"""What a setting may hold, and one-line errors that name the setting and the allowed values.

A :class:`Rule` is a description ("an integer >= 1") and a test. ``rule.check("dedup.k", value)`` raises a
:class:`SettingError` such as ``dedup.k must be an integer >= 1; received 0.`` The config
(:mod:`curation.config`) and the command line (:mod:`curation.cli`) check every value with these rules
before any image is read.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple


class SettingError(ValueError):
    """A setting holds a value it may not hold; the message names the setting and what is allowed."""


class Rule(NamedTuple):
    """The values a setting accepts: ``description`` completes "must be ...", ``accepts`` tests a value."""

    description: str
    accepts: Callable[[Any], bool]

    def check(self, name: str, value: Any) -> None:
        if not self.accepts(value):
            raise SettingError(f"{name} must be {self.description}; received {value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int) -> Rule:
    """An integer ``>= low`` (``True`` / ``False`` are not integers here)."""
    return Rule(f"an integer >= {low}", lambda v: _is_int(v) and v >= low)


def number(low: float, high: float, *, low_open: bool = False) -> Rule:
    """A number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    bracket = "(" if low_open else "["
    return Rule(f"a number in {bracket}{low}, {high}]",
                lambda v: _is_number(v) and (v > low if low_open else v >= low) and v <= high)


def one_of(*choices: str) -> Rule:
    return Rule("one of " + ", ".join(map(repr, choices)), lambda v: isinstance(v, str) and v in choices)


def optional(rule: Rule) -> Rule:
    """``null`` (``None``) or what ``rule`` accepts."""
    return Rule(f"null or {rule.description}", lambda v: v is None or rule.accepts(v))


def list_of(rule: Rule) -> Rule:
    """A non-empty list whose every item ``rule`` accepts."""
    return Rule(f"a non-empty list, each {rule.description}",
                lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(rule.accepts, v)))


def either(first: Rule, second: Rule) -> Rule:
    return Rule(f"{first.description} or {second.description}", lambda v: first.accepts(v) or second.accepts(v))


FLAG = Rule("true or false", lambda v: isinstance(v, bool))
TEXT = Rule("a string", lambda v: isinstance(v, str) and v != "")
COSINE = number(-1, 1)
COUNT = integer(1)
MODEL = Rule("a checkpoint folder, a Hub id, a TorchScript file or 'pixels:N' (or, from Python, a torch.nn.Module)",
             lambda v: (isinstance(v, str) and v != "") or callable(getattr(v, "forward", None)))
DEVICE = Rule("'auto', 'cpu', 'cuda' or 'cuda:N'",
              lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None)
