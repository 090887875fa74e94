"""Keep freed memory in the process for reuse, instead of giving it back to the system.

glibc's ``malloc`` serves every block above a threshold (128 KiB at first, raised as blocks are
freed) with a fresh ``mmap`` and returns it to the system when freed, and trims free memory at
the top of its heaps. A model's forward pass allocates and frees activations of a few MiB on
every step, so each step pays a page fault per 4 KiB touched. In a virtual machine a fault
costs ~3 µs (measured here, Firecracker): a 243-token prefill spent a third of its time in
faults, and the first burst a served model saw ran ~20% slower than it did once memory was
warm (docs/benchmarks.md). Serving keeps its peak anyway (the KV budget is fixed), so holding on
to freed memory costs nothing a server would use.

This is what PyTorch's CPU performance guides get from preloading jemalloc or tcmalloc, done
with glibc's own ``mallopt`` so that nothing extra is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""The largest glibc accepts on 64-bit: blocks up to it come from (and return to) the heaps."""
TRIM_THRESHOLD = 2**30
"""Free memory at the top of a heap is given back only past this."""


def keep_freed_memory() -> bool:
    """Tune glibc ``malloc`` of this process to reuse freed memory; False where it is not
    glibc (macOS, musl), which is left alone. Safe to call more than once."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return False
    kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not kept:
        logger.warning("glibc refused the malloc settings: freed memory goes back to the system")
    return kept
