"""glibc heap tuning for CPU tensor work.

glibc serves blocks above its mmap threshold (at most 32 MB by default, 128 KB under Dask's nanny) with a
fresh mmap every time, so the large activation tensors of each training step or detector batch are
page-faulted in again on every use: measured 2x slower CPU training steps and ~30% of a build worker's
CPU (bench/results/). Keeping big blocks on the heap avoids it. pipeline/cluster.py sets the same values
for Dask workers through MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, docker/ sets them in the images.

The price is a heap that keeps its high-water mark: freed activations stay resident, and a process forked
from it (a DataLoader worker) shares those pages copy-on-write, so every page the parent rewrites later
becomes the child's own copy. release_free_memory() hands the free pages back (bench/train_memory.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Apply to this process; False where there is no glibc mallopt (macOS, musl): nothing changes."""
    try:
        libc = _libc()
        m_trim_threshold, m_mmap_threshold = -1, -3       # mallopt parameters from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and \
            bool(libc.mallopt(m_trim_threshold, trim_threshold))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> bool:
    """Return the free pages of every glibc arena to the system (malloc_trim(0)): the resident heap shrinks to
    what is live. Cheap (no copying); the pages fault in again when reused. False where there is no glibc."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False
