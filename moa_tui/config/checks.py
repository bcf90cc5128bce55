"""Checks of single values and mappings, each failing with one line that names the key path.

A typo in a config must never be silently ignored, so unknown keys are errors (with a "did you
mean" hint) and every value is checked for type and range.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any


class Invalid(Exception):
    """A problem at a key path; load_config adds the file name."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 50 else value[:47] + "...")
    return str(value)


def join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _suggest(key: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(allowed)


def check_keys(data: dict, allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise Invalid(join(where, key), f"unknown key ({_suggest(key, allowed)})")


def mapping(value: Any, where: str, example: str = "") -> dict:
    if not isinstance(value, dict):
        like = f" like {example}" if example else ""
        raise Invalid(where, f"expected a mapping{like}, got {show(value)}")
    return value


def as_list(value: Any, where: str, item: str) -> list:
    if not isinstance(value, list):
        raise Invalid(where, f"expected a list of {item}s, got {show(value)}")
    if not value:
        raise Invalid(where, f"expected at least one {item}, got an empty list")
    return value


def required(data: dict, key: str, where: str, hint: str = "") -> Any:
    if key not in data:
        raise Invalid(where, f"missing required key {key!r}{hint}")
    return data[key]


def checked(value: Any, where: str, check: Callable[[Any], Any]) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise Invalid(where, str(exc)) from None


def get(data: dict, key: str, where: str, check: Callable[[Any], Any], default: Any = None) -> Any:
    """data[key] checked, or `default` when the key is absent."""
    return checked(data[key], join(where, key), check) if key in data else default


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show(value)}")
    return value


def any_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {show(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # YAML `true` is a bool, not 1
        raise ValueError(f"expected an integer, got {show(value)}")
    return value


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {show(value)}")
    return float(value)


def ranged(convert: Callable[[Any], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        converted = convert(value)
        if not ok(converted):
            raise ValueError(f"must be {rule}, got {show(value)}")
        return converted

    return check


def _stop(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"expected a string or a list of strings, got {show(value)}")
    if not all(items):
        raise ValueError("stop strings must not be empty")
    return tuple(items)


_positive = ranged(integer, lambda v: v > 0, "greater than 0")
_gpu_layers_int = ranged(integer, lambda v: v >= -1, "-1 (all layers), 0 (CPU only), a layer count, or 'auto'")


def _gpu_layers(value: Any) -> int | str:
    """-1 all layers, 0 none, N layers, or "auto": as many as fit in the VRAM budget (planner.py)."""
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise ValueError(f"expected an integer or 'auto', got {show(value)}")
    return _gpu_layers_int(value)


def _cpu_repack(value: Any) -> bool | str:
    """true / false, or "auto": off on a llama.cpp build with AMX, where its repacked buffers crash."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"expected true, false or 'auto', got {show(value)}")


# One check per ModelSettings field; the key order is the order shown in "expected one of" hints.
SETTING_CHECKS: dict[str, Callable[[Any], Any]] = {
    "n_ctx": _positive,
    "n_gpu_layers": _gpu_layers,
    "n_threads": _positive,
    "n_batch": _positive,
    "flash_attn": boolean,
    "chat_format": text,
    "thinking": boolean,
    "cpu_repack": _cpu_repack,
    "seed": integer,
    "max_tokens": _positive,
    "temperature": ranged(number, lambda v: v >= 0, "0 or more"),
    "top_p": ranged(number, lambda v: 0 < v <= 1, "greater than 0 and at most 1"),
    "top_k": ranged(integer, lambda v: v >= 0, "0 or more"),
    "min_p": ranged(number, lambda v: 0 <= v <= 1, "between 0 and 1"),
    "repeat_penalty": ranged(number, lambda v: v > 0, "greater than 0"),
    "stop": _stop,
    "system_prompt": text,
    "hang_timeout": ranged(number, lambda v: v > 0, "a number of seconds greater than 0"),
}
