"""Type and range checks for the config dataclasses: a wrong value names its key instead of failing later."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


def _accepts(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:  # tuple[...], Mapping[...]: the container type is enough here
        return isinstance(value, origin)
    return isinstance(value, hint)


def _name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: every setting meets float32 tensors


def check_types(instance: Any, prefix: str) -> None:
    """Raise ValueError naming `prefix.field` for the first field whose value has the wrong type, or a finite
    number beyond float32's range (lr=1e39 passes `>= 0` but overflows the optimiser's float32 step)."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if not _accepts(hints[field.name], value):
            raise ValueError(f"{prefix}.{field.name} must be {_name(hints[field.name])}, got {value!r}")
        if (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                and abs(value) > FLOAT32_MAX):
            raise ValueError(f"{prefix}.{field.name} = {value!r} is beyond float32's range (+-{FLOAT32_MAX:.3g})")


def check_ranges(checks: list[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def at_least(value: float, low: float) -> bool:
    """value >= low and finite (NaN and infinities fail, so `lr=nan` or `lr=inf` are refused too)."""
    return math.isfinite(value) and value >= low


def positive_or_none(value: float | None) -> bool:
    """None, or a finite value > 0 (max_grad_norm: a negative norm would flip the gradients)."""
    return value is None or (math.isfinite(value) and value > 0)


def in_unit_interval(value: float) -> bool:
    """0 <= value < 1 (dropout, warmup and budget shares)."""
    return 0 <= value < 1
