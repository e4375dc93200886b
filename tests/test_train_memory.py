"""Memory bounds of training (issue 19.4) as settings and mechanisms; the measurements are in
bench/train_memory.py, not here."""
from __future__ import annotations

import io
import json
import logging
import os
import platform
import subprocess
import sys
import tarfile

import pytest
import webdataset as wds

import avemo.core.memory as memory
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


_FRAGMENTED_HEAP = r"""
import ctypes, json, os
from avemo.core.memory import keep_heap, release_free_memory
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
assert keep_heap()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 10                       # under keep_heap's mmap threshold: served from the heap
blocks = [libc.malloc(size) for _ in range(800)]
for b in blocks:
    ctypes.memset(b, 1, size)
start = rss()
for i, b in enumerate(blocks):
    if i % 8:                          # 7 of every 8 freed: holes between live blocks, nothing at the top
        libc.free(b)
freed = rss()
release_free_memory()
print(json.dumps({"start": start, "freed": freed, "trimmed": rss()}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc heap behaviour (mallopt, malloc_trim); elsewhere keep_heap changes nothing")
def test_a_fragmented_heap_keeps_its_free_pages_until_they_are_handed_back():
    """What the loaders' trim before a fork does: under keep_heap, blocks freed between live ones stay
    resident (the heap keeps its high-water mark), and release_free_memory() returns them."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}    # glibc's malloc, whatever runs pytest
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, check=True,
                         env=env)
    mb = {k: v / (1 << 20) for k, v in json.loads(out.stdout).items()}
    freed_mb = 800 * 0.25 * 7 / 8                                   # 175 MB freed of 200
    assert mb["start"] - mb["freed"] < 0.2 * freed_mb, mb           # free, but still resident
    assert mb["freed"] - mb["trimmed"] > 0.8 * freed_mb, mb         # handed back


_KEPT_ARENAS = r"""
import json, os, torch
from avemo.core.memory import allocator_in_use, release_free_memory
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
blocks = [torch.ones(1 << 18) for _ in range(200)]     # 200 MB in 1 MB tensors
start = rss()
del blocks
freed = rss()
ok = release_free_memory()
print(json.dumps({"malloc": allocator_in_use(), "ok": ok, "start": start, "freed": freed, "purged": rss()}))
"""


@pytest.mark.skipif(memory.find_jemalloc() is None, reason="no libjemalloc.so.2 installed (make setup installs "
                                                             "libjemalloc2 on apt systems)")
def test_jemalloc_keeps_free_pages_until_release_free_memory_purges_them():
    """What train.allocator's settings do: no decay, so freed tensors stay resident (no page faults on the
    next step), and the purge before a loader forks hands them back (workers would copy them otherwise)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(LD_PRELOAD=str(memory.find_jemalloc()), MALLOC_CONF=memory.JEMALLOC_CONF)   # as allocator_env sets
    out = subprocess.run([sys.executable, "-c", _KEPT_ARENAS], capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout)
    mb = {k: got[k] / (1 << 20) for k in ("start", "freed", "purged")}
    assert got["malloc"] == "jemalloc" and got["ok"] is True, got
    assert mb["start"] - mb["freed"] < 40, mb                        # freed, still resident
    assert mb["freed"] - mb["purged"] > 160, mb                      # handed back


def test_allocator_env_starts_again_on_jemalloc_once_and_keeps_the_users_settings(monkeypatch):
    monkeypatch.setattr(memory, "allocator_in_use", lambda: "glibc")
    monkeypatch.setattr(memory, "find_jemalloc", lambda: "/usr/lib/x/libjemalloc.so.2")
    env = memory.allocator_env("auto", {"PATH": "/bin"})
    assert env is not None and env["LD_PRELOAD"] == "/usr/lib/x/libjemalloc.so.2"
    assert env["MALLOC_CONF"] == memory.JEMALLOC_CONF and env["PATH"] == "/bin" and env[memory.REEXEC_MARK]
    assert memory.allocator_env("auto", env) is None                 # a start that already tried: never again
    memory.settle_preload(env)                                       # in the new process: all taken back
    assert env == {"PATH": "/bin"}
    assert memory.allocator_env("auto", {"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"
    users = {"MALLOC_CONF": "narenas:1", "LD_PRELOAD": "/opt/other.so"}
    env = memory.allocator_env("jemalloc", users)                    # asked for: put first, the user's kept
    assert env["LD_PRELOAD"] == "/usr/lib/x/libjemalloc.so.2:/opt/other.so"
    memory.settle_preload(env)
    assert env == users                                              # the user's own MALLOC_CONF stays
    assert memory.allocator_env("auto", {"LD_PRELOAD": "/opt/libtcmalloc.so"}) is None   # their malloc stands
    assert memory.allocator_env("auto", {}, on_cpu=False) is None    # auto: measured on CPU only
    assert memory.allocator_env("jemalloc", {}, on_cpu=False) is not None
    assert memory.allocator_env("glibc", {}) is None
    monkeypatch.setattr(memory, "find_jemalloc", lambda: None)
    assert memory.allocator_env("auto", {}) is None                  # not installed: glibc, as before
    with pytest.raises(ValueError, match="libjemalloc2"):
        memory.allocator_env("jemalloc", {})
    monkeypatch.setattr(memory, "allocator_in_use", lambda: "jemalloc")
    assert memory.allocator_env("jemalloc", {}) is None              # already on it (preloaded by the user)
