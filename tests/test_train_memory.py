"""Memory bounds of training (issue 19.4) as settings and mechanisms; the measurements are in
bench/train_memory.py, not here."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest
import webdataset as wds

import avemo.train.data as data_module
from avemo.shards.labels import EMOTIONS
from avemo.train.config import AugmentConfig, DataConfig
from avemo.train.data import ShardList, SplitShards, _sample_stages, _SeededShuffle, eval_loader

pytestmark = pytest.mark.unit


def _shard(path, n: int) -> str:
    """A tar of n samples with one small member each: enough for the stages before decoding."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            body = b'{"i": %d}' % i
            info = tarfile.TarInfo(f"clip{i:03d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return str(path)


@pytest.mark.parametrize("bufsize", [1, 5, 16])
def test_a_workers_shuffle_buffer_holds_at_most_data_shuffle_buffer_raw_samples(tmp_path, bufsize):
    """data.shuffle_buffer bounds how many samples a set's stream holds between the tar reader and the
    decoder, and what it holds are the shard's compressed members (bytes), not decoded frames."""
    split = SplitShards(ShardList([_shard(tmp_path / "train-000000.tar", 40)]), 40, [0] * len(EMOTIONS))
    stages = _sample_stages(split, DataConfig(shuffle_buffer=bufsize), AugmentConfig(), 0, 0, None)
    at = next(i for i, stage in enumerate(stages) if isinstance(stage, _SeededShuffle))
    held, most = [0], [0]

    def into(src):
        for sample in src:
            held[0] += 1
            most[0] = max(most[0], held[0])
            yield sample

    def out_of(src):
        for sample in src:
            held[0] -= 1
            assert all(isinstance(v, bytes) for k, v in sample.items() if not k.startswith("__"))
            yield sample

    keys = [s["__key__"] for s in wds.DataPipeline(*stages[:at], into, stages[at], out_of)]
    assert sorted(keys) == [f"clip{i:03d}" for i in range(40)] and (keys != sorted(keys) or bufsize == 1)
    assert most[0] <= bufsize


def test_loader_workers_fork_from_a_trimmed_heap(tmp_path, monkeypatch, caplog):
    """Before a loader forks its workers the process hands its free heap pages back (a worker would keep
    a copy-on-write snapshot of them); persistent workers fork once, so that happens once per loader,
    and a loader without workers never trims."""
    caplog.set_level(logging.ERROR, logger="avemo.data")   # the fake samples fail decoding: skipped
    calls: list[int] = []
    monkeypatch.setattr(data_module, "release_free_memory", lambda: calls.append(1) or True)
    urls = [_shard(tmp_path / "dev-000000.tar", 4)]
    loader = eval_loader(urls, batch_size=2, workers=1, persistent=True)
    for _ in range(2):
        list(loader)
    assert calls == [1]
    list(eval_loader(urls, batch_size=2, workers=0))
    assert calls == [1]
