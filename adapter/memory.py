"""Memory the C allocator keeps once a large image's work is done, given back to the system.

glibc's malloc serves the threads of the request thread pool from several arenas, and returns the
pages of a freed block to the system only when the block was mapped on its own or lies at the top of
its heap: an 80 MP image's work (adapter.imaging.thumbnail.whole_decode) frees hundreds of MB in
blocks that are neither, which the process kept (5.6 GB resident after twelve reads, none running:
security review 2). ``malloc_trim(0)`` returns the free pages of every arena (glibc 2.8 and
later). Another C library (musl) has none: nothing is done there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # no C library found, or none with malloc_trim
        return None
    return trim


_TRIM = _malloc_trim()


def give_back() -> None:
    """Return to the system the memory the C allocator holds free (module docstring)."""
    if _TRIM is not None:
        _TRIM(0)


__all__ = ["give_back"]
