"""A finished build never fails at shutdown: OUT/manifest.parquet is written while the local Dask cluster
still runs, and a worker that will not stop in time (a loaded machine: the nanny's kill -> join timed out
after 37 minutes of work) is a warning in the log, not exit 1 without a manifest."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time

import dask
import pyarrow.parquet as pq

from conftest import command

# a Dask worker preload (runs in the worker process): the worker ignores SIGTERM and, when asked to close,
# hangs for longer than the teardown may take; it first records whether the manifest was already written
SLOW_EXIT = """
import os, signal, time
from pathlib import Path

def dask_setup(worker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path({pid!r}).write_text(str(os.getpid()))

def dask_teardown(worker):
    Path({seen!r}).write_text(str(Path({manifest!r}).is_file()))
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_that_will_not_stop_after_a_finished_build_is_a_warning(tmp_path):
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-ar", "16000",
                    str(tmp_path / "a.wav")], check=True)
    (tmp_path / "list.csv").write_text("path,label,split,key\na.wav,joy,train,a\n", encoding="utf-8")
    out, pid_file, seen = tmp_path / "out", tmp_path / "worker.pid", tmp_path / "manifest_at_teardown"
    preload = tmp_path / "slow_exit.py"
    preload.write_text(SLOW_EXIT.format(pid=str(pid_file), seen=str(seen), manifest=str(out / "manifest.parquet")))
    stdout = io.StringIO()
    with dask.config.set({"distributed.worker.preload": [str(preload)]}), contextlib.redirect_stdout(stdout):
        code = command("build-shards")(["--list", str(tmp_path / "list.csv"), "--out", str(out), "dask.workers=1",
                                        "dask.close_timeout_s=1"])
    ended = time.monotonic()
    assert code == 0, stdout.getvalue()
    assert seen.read_text() == "True"                       # written before the cluster was torn down
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok")]
    log = (out / "build.log").read_text()
    assert ("warning: dask: the local cluster did not stop within 1 s (dask.close_timeout_s); killing its 1 "
            "remaining worker process(es); the build's results are complete") in log, log
    pid = int(pid_file.read_text())
    while _alive(pid) and time.monotonic() - ended < 10:   # killed, by build-shards; reaped by Dask's nanny
        time.sleep(0.1)
    assert not _alive(pid), "the worker outlived build-shards"
