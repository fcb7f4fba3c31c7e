"""Give freed heap memory back to the operating system between steps.

A long run that mixes fp32 and bf16 temporaries of many sizes (training steps, scoring
batches) leaves glibc's heap fragmented: freed blocks stay mapped, and the resident set
creeps up step after step (2.4 → 5.2 GiB over 30 implant steps; the main job peaked at 7.70
GiB without trimming, 5.48 GiB with it: research/implant-record.md). glibc's
``malloc_trim(0)`` returns the free pages at the cost of a few milliseconds; :func:`trim`
calls it after each training step and scoring batch. Other C libraries (musl, macOS) have no
such call and :func:`trim` does nothing there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """Whether this process's C library can return free heap pages (glibc)."""
    return _malloc_trim() is not None


def trim() -> None:
    """Return free heap pages to the operating system (glibc's ``malloc_trim(0)``); a no-op
    where the C library has no such call."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
