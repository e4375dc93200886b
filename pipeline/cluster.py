"""The Dask side: a LocalCluster by default, any existing scheduler with `--scheduler`, same code."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

import dask
from distributed import Client, LocalCluster

from avemo.core.errors import ClusterError
from avemo.core import memory
from avemo.pipeline.config import BuildConfig

# Dask's nanny pins glibc's mmap threshold at 128 KB, so every detector batch re-faulted its activations
# (~30% of worker CPU, bench/results/build_shards_sweep.md): keep big blocks on the heap (avemo/memory.py).
# A variable exported by the user still wins (Dask's rule for pre-spawn-environ).
WORKER_MALLOC_ENV = memory.ENV


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Processes started in here ignore SIGINT (an ignored signal stays ignored across spawn/exec). Ctrl-C goes
    to the whole foreground process group: without this every Dask worker printed its own KeyboardInterrupt
    traceback (40 lines) before build-shards' one line; now build-shards alone is interrupted, and closing the
    cluster stops the workers. A Ctrl-C in the seconds the cluster takes to start waits until it has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)



@contextlib.contextmanager
def open_client(cfg: BuildConfig, log=print) -> Iterator[Client]:
    if cfg.scheduler:
        client = Client(cfg.scheduler, timeout="30s")
        cluster = None
    else:
        workers = cfg.dask.workers or os.cpu_count() or 1
        # worker errors reach the user once, as build-shards' own line and the manifest's task_failed
        # detail, not as one worker traceback per retry (a full disk printed 3 per shard before)
        malloc = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}
        with dask.config.set(malloc), workers_ignore_sigint():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   memory_limit=cfg.dask.memory_limit, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        workers = client.scheduler_info().get("workers", {})
        n = len(workers)
        if cfg.dask.gpu_resource and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            raise ClusterError(f"dask.gpu_resource=true but none of the {n} worker(s) at {client.scheduler.address} "
                               "offers the GPU resource: start GPU workers with `dask worker ... --resources GPU=1`")
        log(f"dask: {n} worker(s) at {client.scheduler.address}; dashboard: {client.dashboard_link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            try:
                cluster.close()
            except (TimeoutError, asyncio.TimeoutError):   # the same class from Python 3.11 on
                # a worker not yet reaped after the nanny's SIGKILL (seen at load average 20 on 2 cores): the
                # build's work is done, and raising here lost its manifest and summary (exit 1, a traceback)
                log("dask: a worker was slow to exit and was killed")
