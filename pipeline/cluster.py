"""The Dask side: a LocalCluster by default, any existing scheduler with `--scheduler`, same code."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
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
def own_environ_kept() -> Iterator[None]:
    """This process's environment as it was, after the block and whatever it started. Dask's nanny runs in this
    process and sets its pre-spawn-environ in os.environ before each worker it spawns, and never sets it
    back (distributed/nanny.py, WorkerProcess.start): after a build, every process this one started later (an
    `avemo train` subprocess, ffmpeg) inherited OMP_NUM_THREADS=1 and the workers' malloc settings, and
    trained on one thread at half the speed. The values set or changed inside are restored on the way out."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            os.environ.pop(key, None)
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def open_client(cfg: BuildConfig, log=print) -> Iterator[Client]:
    """A Dask client: of cfg.scheduler, or of a LocalCluster of this process (closed at the end); this
    process's environment is the same afterwards (own_environ_kept)."""
    with own_environ_kept():
        with _open_client(cfg, log) as client:
            yield client


@contextlib.contextmanager
def _open_client(cfg: BuildConfig, log=print) -> Iterator[Client]:
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
    pids: set[int] = set()
    try:
        if cluster is not None:   # the worker processes: this process's children, stopped by it at the end
            pids = set(client.run(os.getpid).values())
        workers = client.scheduler_info().get("workers", {})
        n = len(workers)
        if cfg.dask.gpu_resource and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            raise ClusterError(f"dask.gpu_resource=true but none of the {n} worker(s) at {client.scheduler.address} "
                               "offers the GPU resource: start GPU workers with `dask worker ... --resources GPU=1`")
        log(f"dask: {n} worker(s) at {client.scheduler.address}; dashboard: {client.dashboard_link}")
        yield client
    finally:
        close_quietly(client, cluster, pids, cfg.dask.close_timeout_s, log)


def close_quietly(client: Client, cluster: LocalCluster | None, worker_pids: set[int], timeout: float,
                  log=print) -> None:
    """Stop the client, then the local cluster. The work is done (and its manifest written) before this runs,
    so nothing here fails the build: a slow or failed shutdown is a warning. Seen at load average 20 on 2
    cores after 37 minutes of work: the nanny's kill -> join of a worker timed out, and the TimeoutError
    lost the manifest. Dask closes the cluster in a thread of its own; after `timeout` seconds its worker
    processes that are still alive (one ignoring SIGTERM, one stuck in native code) are SIGKILLed, by id,
    and Dask's close then finishes: no worker outlives build-shards and its exit does not hang on one."""
    with _closed_comm_writes_dropped():
        _close_client_and_cluster(client, cluster, worker_pids, timeout, log)


class _ClosedCommWrite(logging.Filter):
    """The in-process scheduler's CRITICAL "Closed comm ... while trying to write" (with a CommClosedError
    traceback): a message for the client (a clip's progress event, a finished task) that lost the race with the
    client's own close. Seen at a Ctrl-C while shards were still being built; nothing is lost by it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Closed comm")


@contextlib.contextmanager
def _closed_comm_writes_dropped() -> Iterator[None]:
    scheduler_log = logging.getLogger("distributed.scheduler")
    quiet = _ClosedCommWrite()
    scheduler_log.addFilter(quiet)
    try:
        yield
    finally:
        scheduler_log.removeFilter(quiet)


def _close_client_and_cluster(client: Client, cluster: LocalCluster | None, worker_pids: set[int], timeout: float,
                              log=print) -> None:
    try:
        client.close(timeout=timeout)
    except Exception as exc:      # a lost connection, a timeout: nothing the user can act on
        log(f"warning: dask: the client did not close cleanly ({_first_line(exc)})")
    if cluster is None:
        return
    errors: list[BaseException] = []
    closing = threading.Thread(target=_close, args=(cluster, errors), name="avemo-cluster-close", daemon=True)
    closing.start()
    closing.join(timeout)
    if closing.is_alive():
        late = [p for p in multiprocessing.active_children() if p.pid in worker_pids]
        log(f"warning: dask: the local cluster did not stop within {timeout:g} s (dask.close_timeout_s); "
            f"killing its {len(late)} remaining worker process(es); the build's results are complete")
        for process in late:
            process.kill()
        closing.join(timeout)
    if errors:
        log(f"warning: dask: the local cluster did not shut down cleanly ({_first_line(errors[0])}); "
            "the build's results are complete")


def _close(cluster: LocalCluster, errors: list) -> None:
    try:
        cluster.close()
    except Exception as exc:      # e.g. TimeoutError from the nanny's join of a worker slow to die
        errors.append(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
