"""Checks for settings where they enter fedprune, with errors that name the problem and the fix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is invalid; raised before any work starts."""


def pick(kind: str, name: str, table: Mapping[str, T]) -> T:
    """Return ``table[name]`` or fail with the list of valid names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(table))
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {valid}") from None


def register_unique(kind: str, table: dict[str, T], name: str, item: T) -> T:
    """Add ``item`` to a registry ``table`` under ``name``; a second item of the same name is refused."""
    if name in table:
        raise ConfigError(f"a {kind} named {name!r} is already registered ({type(table[name]).__name__})")
    table[name] = item
    return item


def finite(name: str, value: float) -> float:
    """Return ``value`` as a float, failing on NaN, infinity or a non-number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return number


def positive(name: str, value: float) -> float:
    """Return a finite ``value`` > 0."""
    number = finite(name, value)
    if number <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return number


def sparsity(value: float, name: str = "sparsity") -> float:
    """Return a sparsity in [0, 1): 1 would prune every weight."""
    number = finite(name, value)
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{name} must be in [0, 1) (fraction of weights pruned), got {value!r}")
    return number


def probability(name: str, value: float, *, open_low: bool = True, open_high: bool = True) -> float:
    """Return a probability strictly inside (0, 1) unless an end is allowed."""
    number = finite(name, value)
    low_ok = number > 0 if open_low else number >= 0
    high_ok = number < 1 if open_high else number <= 1
    if not (low_ok and high_ok):
        low, high = "(" if open_low else "[", ")" if open_high else "]"
        raise ConfigError(f"{name} must be in {low}0, 1{high}, got {value!r}")
    return number


def positive_int(name: str, value: int) -> int:
    """Return an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def count_or_zero(name: str, value: int, zero: str) -> int:
    """Return an integer >= 0; ``zero`` says what 0 means, for the error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (0: {zero}), got {value!r}")
    return int(value)
