"""Keep freed memory in the process while a CPU loop trains (glibc only): by default glibc hands every large freed
block back to the kernel at once, and the next step faults it back in, page by page. On the way out,
``malloc_trim`` returns what is unused."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from contextlib import contextmanager
from functools import cache
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
KEEP_FREED_BYTES = 1 << 30  # free memory the process may hold before glibc returns some of it
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's own defaults, restored on exit
_depth = 0


@cache
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block freed blocks are reused; blocks may nest (the outermost one restores and trims)."""
    global _depth
    libc = _glibc()
    if libc is not None and _depth == 0:
        libc.mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, which keeps freed space ...
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)  # ... up to this much
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if libc is not None and _depth == 0:
            libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
            libc.malloc_trim(0)
