"""build-shards tells what it is doing: a bar that moves per clip (not per shard), OUT/build.log, CUDA asked
for without one refused before any work, and failed shard tasks explained with whether a rerun helps."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import build_config
from avemo.pipeline.build import BuildSummary, is_transient, run_build


def test_the_bar_advances_per_clip_and_the_build_keeps_its_log(mini_meld, tmp_path):
    out = tmp_path / "out"
    events: list[tuple[str, int]] = []
    # a LocalCluster of its own, as a user's build starts one (the suite's other builds share a warm cluster)
    cfg = build_config(mini_meld, out, "splits=[dev]", "dask.workers=1", "shards.max_clips=50", shared_cluster=False)
    before = dict(os.environ)
    summary = run_build(cfg, log=lambda *a, **k: None, progress=lambda shard, n: events.append((shard, n)))
    # Dask's nanny sets OMP_NUM_THREADS=1 and the workers' malloc settings in this process to spawn its workers:
    # the build leaves the environment as it was (a training started afterwards ran on one thread)
    assert dict(os.environ) == before
    clips = summary.ok + sum(summary.rejected.values())
    assert summary.shards_built == 1 and clips >= 5
    assert events == [("dev-000000", 1)] * clips          # one step per clip of the one shard, as each finishes
    log = (out / "build.log").read_text()
    assert "build-shards:" in log and "dask: 1 worker(s)" in log


def test_face_device_cuda_without_cuda_is_refused_before_any_work(mini_meld, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "avemo", "build-shards", "--root", str(mini_meld), "--out",
                             str(out), "--splits", "dev", "face.device=cuda"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "avemo build-shards: error: face.device=cuda but no CUDA device is visible (use face.device=cpu or "
        "face.device=auto)"]
    assert not list(out.glob("*.tar")) and not (out / "manifest.parquet").exists()


@pytest.mark.unit
def test_failed_shard_tasks_say_why_and_whether_a_rerun_helps():
    from distributed.scheduler import KilledWorker
    killed = KilledWorker("shard-dev-000000", "tcp://127.0.0.1:1", 3)
    assert is_transient(killed) and is_transient(TimeoutError()) and not is_transient(ValueError("bad"))
    transient = BuildSummary(shards_failed=2, failures={"KilledWorker: shard-dev-000000": 2}, rerun_helps=True)
    assert "rerun the same command to retry only them" in transient.failure_advice()
    assert "2 x KilledWorker" in transient.failure_advice()
    bug = BuildSummary(shards_failed=1, failures={"ValueError: bad": 1}, rerun_helps=False)
    assert "A rerun would fail the same way" in bug.failure_advice() and "1 x ValueError: bad" in bug.failure_advice()
