"""Make the memory of large frame buffers go back to the operating system when freed.

glibc's malloc serves a request of ``M_MMAP_THRESHOLD`` bytes or more (128 KiB at first)
with its own ``mmap``, returned to the system by ``free``. But it raises the threshold
dynamically: after freeing an mmapped block it moves the threshold up to that block's
size (up to 32 MiB). After one 16 MiB frame buffer is freed, the next ones come from the
heap, and a heap does not shrink below its highest block in use: a server that once held
many large unfinished frames keeps their memory. Setting the threshold explicitly turns
the dynamic adjustment off. Other allocators (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from typing import Final

logger = logging.getLogger("shardwise.net.memory")

MMAP_THRESHOLD_BYTES: Final = 512 << 10
"""Allocations at least this large are mmapped, so freed at once. Above the 256 KiB
buffers that socket reads allocate and free all the time (mmapping each would cost a
system call and page faults per read), below a 1 MiB Raft append's frame."""

_M_MMAP_THRESHOLD: Final = -3
"""glibc's ``mallopt`` parameter number (``malloc.h``)."""


@functools.cache
def return_large_buffers_to_os() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES`, once per process;
    whether it is in force (``False`` on another C library, or if ``mallopt`` failed)."""
    return _set_mmap_threshold()


def _set_mmap_threshold() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        logger.warning("mallopt(M_MMAP_THRESHOLD) failed: freed frame buffers may be kept")
        return False
    return True
