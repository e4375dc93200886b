"""build-shards on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1
(the venv's own binaries), driven by `avemo build-shards --scheduler` as a subprocess.

The scheduler's task stream says which worker ran each task; `client.run` asks each worker process how
many face detectors it built.
"""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import cloudpickle
import pyarrow.parquet as pq
import pytest
import yaml
from distributed import get_task_stream

from badmedia import dask_cluster
from conftest import build_config
from avemo.shards.manifest import MANIFEST_NAME, sha256_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # for client.run(_detector_loads)


def build_cli(root: Path, out: Path, address: str, cfg_file: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "avemo", "build-shards", "--root", str(root), "--out", str(out),
           "--scheduler", address, "--config", str(cfg_file), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def fixture_config(tmp: Path, root: Path) -> Path:
    """The `built_shards` fixture's exact BuildConfig (conftest.build_config) as a --config file."""
    data = asdict(build_config(root, tmp / "unused", shared_cluster=False))
    for key in ("root", "out", "scheduler"):
        data.pop(key)
    path = tmp / "build.yaml"
    path.write_text(yaml.safe_dump({"build": data}))
    return path


def _detector_loads() -> int:
    """Runs inside each worker process (sent by value: workers cannot import this test module)."""
    from avemo.pipeline.faces import _cached_detector
    return _cached_detector.cache_info().misses     # detectors this process built


def _ran_on(stream: list[dict], prefix: str) -> Counter:
    return Counter(rec["worker"] for rec in stream if str(rec["key"]).startswith(prefix))


@pytest.mark.slow
def test_cpu_cluster_build_equals_the_local_build(tmp_path, mini_meld, built_shards):
    out = tmp_path / "out"
    with dask_cluster(tmp_path, [[], []]) as cluster:
        address, client = cluster.address, cluster.client
        with get_task_stream(client) as stream:
            result = build_cli(mini_meld, out, address, fixture_config(tmp_path, mini_meld))
        loads = client.run(_detector_loads)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"worker(s) at {address}" in result.stdout

    assert pq.read_table(out / MANIFEST_NAME).equals(pq.read_table(built_shards / MANIFEST_NAME))
    tars = sorted(p.name for p in built_shards.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == tars
    for name in tars:
        assert sha256_file(out / name) == sha256_file(built_shards / name), name

    shard_runs = _ran_on(stream.data, "shard-")
    assert sum(shard_runs.values()) == len(tars) and set(shard_runs) <= set(loads)
    assert max(shard_runs.values()) >= 2                 # some worker ran several shard tasks ...
    for worker, n_loads in loads.items():                # ... yet built its detector once, kept for its lifetime
        assert n_loads == (1 if shard_runs[worker] else 0), (worker, n_loads, shard_runs)


@pytest.mark.slow
def test_shard_tasks_go_to_the_gpu_resource_worker(tmp_path, mini_meld):
    """One worker advertises GPU=1, one does not: with dask.gpu_resource=true every shard task runs on the
    first (the resource is only a label here, the detector runs on the CPU); probe tasks may run anywhere."""
    out = tmp_path / "out"
    with dask_cluster(tmp_path, [["--resources", "GPU=1"], []]) as cluster:
        address, client = cluster.address, cluster.client
        workers = client.scheduler_info()["workers"]
        gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU") == 1]
        assert len(gpu) == 1 and len(workers) == 2
        with get_task_stream(client) as stream:
            result = build_cli(mini_meld, out, address, fixture_config(tmp_path, mini_meld), "--splits", "dev",
                               "dask.gpu_resource=true", "shards.max_clips=2")
        loads = client.run(_detector_loads)
    assert result.returncode == 0, result.stderr[-3000:]
    n_shards = len(list(out.glob("*.tar")))
    assert n_shards == 4                                  # 7 dev clips, 2 per shard
    assert _ran_on(stream.data, "shard-") == {gpu[0]: n_shards}
    assert sum(_ran_on(stream.data, "probe-").values()) == n_shards
    assert loads == {a: (1 if a == gpu[0] else 0) for a in workers}
    rows = pq.read_table(out / MANIFEST_NAME).to_pylist()
    assert {r["split"] for r in rows} == {"dev"} and all(r["status"] == "ok" for r in rows)
