"""Checks of a `.dsz` file's metadata fields: each failure raises `PackFormatError` naming the tensor.

Shared by the payload's references (deepshrink.packing.payload) and every encoding's `decode`.
"""
from __future__ import annotations

from ..errors import PackFormatError


def fail(what: str, problem: str):
    """Raise the one error a malformed file gives: '<tensor>: <problem>'."""
    raise PackFormatError(f"{what}: {problem}")


def check_int(value, what: str, low: int, high: int) -> int:
    """`value` itself when it is an integer (not a bool) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        fail(what, f"expected an integer in {low}..{high}, found {value!r}")
    return value


def check_shape(value, what: str) -> tuple[int, ...]:
    """A shape recorded as a list of at most 8 sizes, as a tuple."""
    if not isinstance(value, list) or len(value) > 8:
        fail(what, f"shape must be a list of at most 8 sizes, found {value!r}")
    return tuple(check_int(size, what + " shape", 0, 1 << 40) for size in value)
