"""A worker dies mid-build on a real multi-process Dask cluster (`dask scheduler` + 2 `dask worker`
processes from the venv on 127.0.0.1): the job still succeeds, loses no clip and writes the same shards
and manifest as a clean build on the same cluster."""
from __future__ import annotations

import os
import sys

import pyarrow.parquet as pq
import pytest

from badmedia import (clip, csv_row, dask_cluster, group_alive, hidden_temporaries, kill_group, start_group,
                      visible_files, wait_for, write_csv)
from conftest import build_config
from avemo.pipeline.build import run_build
from avemo.shards.manifest import sha256_file

N_CLIPS = 12
OVERRIDES = ["splits=[train]", "shards.max_clips=2", "decode.max_frames=12", "dask.decode_threads=1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster") / "meld"
    video = root / "train_splits"
    video.mkdir(parents=True)
    for i in range(N_CLIPS):
        clip(video / f"dia{i}_utt0.mp4", seconds=3.0, size="320x240", rate=8)
    write_csv(root / "train_sent_emo.csv", [csv_row(i + 1, i, 0) for i in range(N_CLIPS)])
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{"address", "workers": [Popen, Popen], "logs"}; everything is SIGKILLed by process group at the end."""
    tmp = tmp_path_factory.mktemp("dask")
    with dask_cluster(tmp, [[], []]) as c:
        yield {"address": c.address, "workers": c.workers, "logs": c.logs}


def _owner(pid: int, workers) -> int | None:
    """Index of the `dask worker` process group that the process `pid` belongs to."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    return next((i for i, w in enumerate(workers) if w.pid == pgid), None)


@pytest.mark.slow
def test_a_dead_worker_loses_nothing(tree, cluster, tmp_path):
    scheduler = f"scheduler={cluster['address']}"
    clean = tmp_path / "clean"
    reference = run_build(build_config(tree, clean, *OVERRIDES, scheduler))
    assert reference.ok == N_CLIPS and reference.shards_failed == 0

    out = tmp_path / "out"
    log = tmp_path / "build.log"
    build = start_group([sys.executable, "-m", "avemo", "build-shards", "--root", str(tree), "--out", str(out),
                         "--scheduler", cluster["address"], *OVERRIDES], log)
    try:
        def writer():
            # a shard temporary is named .{shard}.tar.tmp-{pid of the worker process writing it}-{random}
            for tmp in out.glob(".train-*.tar.tmp-*"):
                owner = _owner(int(tmp.name.split(".tmp-")[1].split("-")[0]), cluster["workers"])
                if owner is not None and (out / "parts").is_dir() and list((out / "parts").glob("train-0*")):
                    return owner, tmp.name
            return None
        victim, shard_tmp = wait_for(writer, 120, "a worker writing its second shard or later", build, log)
        dead = cluster["workers"][victim]
        kill_group(dead)                                   # nanny and worker process: gone for good
        assert not group_alive(dead.pid)
        assert (out / shard_tmp).exists(), "the victim finished its shard before it died: nothing was lost"
        assert build.wait(timeout=300) == 0, log.read_text()
    finally:
        kill_group(build)
    text = log.read_text()
    assert f"rows: {N_CLIPS}  accepted: {N_CLIPS}  rejected: 0" in text and "0 failed" in text, text

    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.equals(pq.read_table(clean / "manifest.parquet"))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in clean.glob("*.tar"))
    for tar in clean.glob("*.tar"):
        assert sha256_file(out / tar.name) == sha256_file(tar), tar.name
    assert set(visible_files(out)) == set(visible_files(clean))
    assert not hidden_temporaries(out), f"the dead worker's {shard_tmp} was left behind"
