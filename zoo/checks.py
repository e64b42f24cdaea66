"""Argument checks shared by the components' constructors (MONAI's habit: validate when built,
one line naming the argument; docs/design.md section 11)."""

from __future__ import annotations

from typing import Any, Sequence

from zoo.errors import ConfigError
from zoo.types import Size3


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` itself when it is an int >= ``minimum`` (booleans are not), else ConfigError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")
    return value


def triple(value: int | Sequence[int], name: str) -> Size3:
    """``(D, H, W)`` from one positive int (used for all three axes) or three; whole floats (from a
    config) are accepted as ints. ConfigError naming ``name`` otherwise."""
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    whole = all(not isinstance(v, bool) and isinstance(v, (int, float)) and float(v).is_integer()
                for v in values)
    if len(values) != 3 or not whole or min(values) < 1:
        raise ConfigError(f"{name} must be a positive int or 3 positive ints (D, H, W), got "
                          f"{value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]
