"""malloc tuning for CPU tensor work: glibc's heap kept, or jemalloc for training.

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
from collections.abc import MutableMapping

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
    """Return the free pages of every malloc arena to the system: malloc_trim(0) under glibc, a purge of all
    arenas under jemalloc (which otherwise keeps them: JEMALLOC_CONF); the resident heap shrinks to what is
    live. Cheap (no copying); the pages fault in again when reused. False where neither is there."""
    try:
        if allocator_in_use() == "jemalloc":
            mallctl = ctypes.CDLL(None).mallctl    # the preloaded library's, in the global namespace
            mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            return mallctl(b"arena.4096.purge", None, None, None, 0) == 0   # 4096 = MALLCTL_ARENAS_ALL
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


# jemalloc for the training process, opt-in (train.allocator, issue 19.4). Under glibc with the heap kept, the
# trainer's heap grew to ~2.6x its largest live set within a step (0.5 GB live at the peak of a step, 1.3-1.9 GB
# of heap; mallinfo2 sampled in the real recipe): batches whose branch sizes differ from step to step fragment
# it, and trimming it (malloc_trim every 100 steps) did not lower the peak, the freed pages were touched
# again within the next steps (bench/results/train_memory_trim.md). jemalloc's size classes keep the trainer
# near its live set. It keeps its free pages (no decay): with its default 10 s decay they went back to the
# system and every step page-faulted them in again, 0.6x the speed (oversize_threshold:0 alone did not help).
# Kept pages are what a forked loader worker would copy as it reuses them, so release_free_memory() purges
# them before a loader forks (train/data.py). Measured: two short epochs 0.85x glibc's memory at 1.02-1.09x
# its speed (bench/results/train_memory_jemalloc.md), but over the full real recipe (12 x 16,000 draws) the
# whole run peaked higher, 4.41 vs 3.91 GB PSS, though the trainer itself held 1.97 GB RSS vs ~3
# (bench/results/real_emotion_jemalloc.md): the loader processes grew. Hence glibc stays the default.
JEMALLOC = "libjemalloc.so.2"
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
REEXEC_MARK = "AVEMO_ALLOCATOR_EXEC"


def allocator_in_use() -> str:
    """'jemalloc' where this process's malloc is jemalloc's (its mallctl is in the global namespace: preloaded,
    not loaded privately by some extension), else 'glibc' (the C library's)."""
    try:
        return "jemalloc" if hasattr(ctypes.CDLL(None), "mallctl") else "glibc"
    except OSError:
        return "glibc"


def find_jemalloc() -> str | None:
    """The path of an installed libjemalloc.so.2 (Debian/Ubuntu: the libjemalloc2 package) built for this
    interpreter's architecture (multiarch hosts hold others), or None."""
    import glob
    import sysconfig
    multiarch = sysconfig.get_config_var("MULTIARCH")
    dirs = [f"/usr/lib/{multiarch}/", f"/lib/{multiarch}/"] if multiarch else []
    for pattern in (*dirs, "/usr/lib64/", "/usr/lib/", "/usr/local/lib/"):
        for path in sorted(glob.glob(pattern + JEMALLOC)):
            return path
    return None


def allocator_env(allocator: str, environ: dict[str, str], on_cpu: bool = True) -> dict[str, str] | None:
    """The environment to start this program again with `allocator` ('auto', 'jemalloc' or 'glibc'), or None
    where it already runs on it, or should not start again: glibc asked for; auto on a GPU (measured on CPU
    only), without jemalloc installed, or where the user preloads a library of their own (tcmalloc, mimalloc:
    their choice stands); or a start that already tried (REEXEC_MARK: a preload the loader refused never
    loops). ValueError where allocator='jemalloc' and none is installed."""
    if allocator == "glibc" or allocator_in_use() == "jemalloc" or environ.get(REEXEC_MARK):
        return None
    if allocator == "auto" and (not on_cpu or environ.get("LD_PRELOAD", "").strip()):
        return None
    path = find_jemalloc()
    if path is None:
        if allocator == "jemalloc":
            raise ValueError(f"allocator=jemalloc: no {JEMALLOC} found (apt-get install libjemalloc2, or "
                             f"allocator=auto / glibc)")
        return None
    env = dict(environ, **{REEXEC_MARK: "conf" if "MALLOC_CONF" not in environ else "1"})
    env["LD_PRELOAD"] = ":".join(p for p in (path, environ.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)   # a user's own MALLOC_CONF wins
    return env


def start_again(env: dict[str, str]) -> None:
    """Replace this process with itself (same pid, interpreter flags and arguments) under `env`, output
    flushed first: how a program moves onto the malloc allocator_env chose."""
    import os
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def settle_preload(environ: MutableMapping[str, str]) -> None:
    """In a process that allocator_env started again, once it has decided not to start again: take back what
    allocator_env added (jemalloc on LD_PRELOAD: it is loaded, and forked loader workers keep it; our
    MALLOC_CONF; the mark) so that programs this one runs (ffmpeg, spawned workers, another `avemo train`)
    start as they would have."""
    mark = environ.pop(REEXEC_MARK, None)
    if not mark:
        return
    if mark == "conf":
        environ.pop("MALLOC_CONF", None)
    kept = [p for p in environ.get("LD_PRELOAD", "").split(":") if p and not p.endswith("/" + JEMALLOC)]
    if kept:
        environ["LD_PRELOAD"] = ":".join(kept)
    else:
        environ.pop("LD_PRELOAD", None)
