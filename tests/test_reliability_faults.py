"""Faults during build-shards: SIGKILL of the whole `avemo build-shards` process group at random points,
and a full disk (a real 2 MB tmpfs, and an injected ENOSPC on the real write path). Finished work is never
lost, no torn or temporary file is ever visible, and the rerun ends byte-identical to a clean build."""
from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from badmedia import (clip, csv_row, group_alive, hidden_temporaries, kill_group, start_group, visible_files,
                      wait_for, write_csv)
from conftest import build_config, session_scheduler
from avemo.pipeline.build import run_build
from avemo.shards.manifest import sha256_file

N_CLIPS = 12
N_SHARDS = 7        # 6 of 2 readable clips + 1 whose 2 clips are rejected at probe time (a part, no tar)
OVERRIDES = ["splits=[train]", "shards.max_clips=2", "decode.max_frames=8", "dask.workers=1"]


def _tree(root: Path) -> Path:
    """12 two-second clips (6 shards of 2) plus a missing and an empty file, so rejections are in play."""
    video = root / "train_splits"
    video.mkdir(parents=True)
    rows = []
    for i in range(N_CLIPS):
        clip(video / f"dia{i}_utt0.mp4", seconds=2.0, size="320x240", rate=8)
        rows.append(csv_row(i + 1, i, 0, emotion=["joy", "anger", "neutral"][i % 3],
                            sentiment=["positive", "negative", "neutral"][i % 3]))
    (video / "dia50_utt0.mp4").write_bytes(b"")
    rows += [csv_row(50, 50, 0), csv_row(51, 51, 0)]
    write_csv(root / "train_sent_emo.csv", rows)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _tree(tmp_path_factory.mktemp("faults") / "meld")


@pytest.fixture(scope="module")
def warm():
    """The session's warm Dask cluster (conftest) for the clean build and the reruns (the faulty runs start
    their own)."""
    return f"scheduler={session_scheduler()}"


def rebuild(tree: Path, out: Path, warm: str):
    return run_build(build_config(tree, out, *OVERRIDES, warm))


@pytest.fixture(scope="module")
def clean(tree, warm):
    """The uninterrupted build every faulty one must end equal to."""
    out = tree.parent / "clean"
    summary = rebuild(tree, out, warm)
    assert summary.shards_built == N_SHARDS and summary.rows == N_CLIPS + 2
    return out


def _cli(tree: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "avemo", "build-shards", "--root", str(tree), "--out", str(out), *OVERRIDES]


def assert_same_as_clean(out: Path, clean: Path) -> None:
    assert not hidden_temporaries(out), hidden_temporaries(out)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in clean.glob("*.tar"))
    for tar in clean.glob("*.tar"):
        assert sha256_file(out / tar.name) == sha256_file(tar), tar.name
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(clean / "manifest.parquet"))


def assert_nothing_torn(out: Path, clean: Path) -> None:
    """Every visible file is complete: a shard equal to the clean one, a readable part parquet."""
    known = {p.name for p in clean.rglob("*") if p.is_file()}
    for name, data in visible_files(out).items():
        assert Path(name).name in known, f"unexpected visible file {name}"
        if name.endswith(".tar"):
            assert data == (clean / name).read_bytes(), f"{name} is visible but not the complete shard"
        elif name.startswith("parts/"):
            assert pq.read_table(out / name).equals(pq.read_table(clean / name)), name


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_rerun_equals_a_clean_build(tree, clean, warm, tmp_path, seed):
    """Kill when >= k shards are done and another is being written (k and a jitter drawn from the seed).
    Seeds 0 and 1 kill the whole process group; seed 2 kills only the CLI process and reruns while its
    orphaned Dask workers may still be finishing (and renaming) shards, then kills them."""
    rng = random.Random(seed)
    k, jitter = rng.randrange(N_SHARDS - 2), rng.uniform(0.0, 0.3)
    out = tmp_path / "out"
    log = tmp_path / "killed.log"
    proc = start_group(_cli(tree, out), log)
    try:
        def mid_build():
            done = len(list((out / "parts").glob("train-0*.parquet"))) if (out / "parts").is_dir() else 0
            return done >= k and list(out.glob(".train-*.tar.tmp-*"))
        wait_for(mid_build, 120, f"{k} finished shards and one being written", proc, log)
        time.sleep(jitter)
        assert proc.poll() is None and not (out / "manifest.parquet").exists(), "the build ended before the kill"
        if seed == 2:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert group_alive(proc.pid), "no orphaned worker left: this case proves nothing"
        else:
            kill_group(proc)                               # the CLI, its LocalCluster nannies and workers
        assert_nothing_torn(out, clean)
        # A shard is finished once its part parquet (the commit record, written after the tar's rename) exists.
        # A kill between the two leaves a complete tar (checked above) without a record: it is rebuilt, identically.
        committed = {p.stem for p in (out / "parts").glob("train-0*.parquet")} if (out / "parts").is_dir() else set()
        kept = {name: sha256_file(out / name) for name in visible_files(out)
                if name.endswith(".tar") and Path(name).stem in committed}
        summary = rebuild(tree, out, warm)
        assert summary.shards_skipped >= len(kept) and summary.shards_built + summary.shards_skipped == N_SHARDS
        assert all(sha256_file(out / name) == sha for name, sha in kept.items())   # finished work untouched
        assert_same_as_clean(out, clean)
    finally:
        kill_group(proc)
    assert_same_as_clean(out, clean)                       # still so once every orphan is gone


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_injected_enospc_on_the_write_path covers a full disk instead")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}); "
                    "test_injected_enospc_on_the_write_path covers a full disk instead")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """Fill a filesystem until `leave` bytes are free."""
    free = shutil.disk_usage(folder).free
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


TQDM_BAR = re.compile(r"^build-shards:\s+\d+%\|")


def _error_lines(stderr: str) -> list[str]:
    """stderr without the progress bar (tqdm redraws it with \r): the messages a user reads."""
    lines = [line.split("\r")[-1].strip() for line in stderr.splitlines()]
    return [line for line in lines if line and not TQDM_BAR.match(line)]


@pytest.mark.slow
def test_disk_full_on_a_real_tmpfs(tree, clean, warm, tmp_path):
    disk = tmp_path / "disk"
    with tmpfs(disk, "2m"):
        out = disk / "out"
        filler = _fill(disk, leave=150_000)                # room for a few of the ~55 kB shards, not all
        result = subprocess.run(_cli(tree, out), capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stdout + result.stderr
        errors = _error_lines(result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        assert errors == [errors[-1]] and errors[-1].startswith("avemo build-shards: error: no space left on device"), \
            result.stderr
        assert "rerun the same command" in errors[-1]
        assert not hidden_temporaries(out)                 # the failed writers removed their temporaries
        assert_nothing_torn(out, clean)
        assert list(out.glob("*.tar")), "no shard finished before the disk was full: the test proves little"
        filler.unlink()
        summary = rebuild(tree, out, warm)
        assert summary.shards_skipped >= 1
        assert_same_as_clean(out, clean)


class _QuotaFile:
    """A writable file on a pretend disk of `limit` bytes shared by every file under `folder`."""

    def __init__(self, fh, folder: str, limit: int):
        self._fh, self._folder, self._limit = fh, folder, limit

    def write(self, data) -> int:
        used = sum(p.stat().st_size for p in Path(self._folder).rglob("*") if p.is_file())
        if used + len(data) > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._fh.write(data)
        self._fh.flush()
        return written

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def install_quota(folder: str, limit: int) -> None:
    """Make every file that shards/atomic.py opens for writing under `folder` obey the quota (any process)."""
    import avemo.core.atomic

    def quota_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        return _QuotaFile(fh, folder, limit) if "w" in mode and str(path).startswith(folder) else fh
    avemo.core.atomic.open = quota_open  # type: ignore[attr-defined]


def remove_quota() -> None:
    import avemo.core.atomic
    avemo.core.atomic.__dict__.pop("open", None)


@pytest.mark.slow
def test_injected_enospc_on_the_write_path(tree, clean, warm, tmp_path, monkeypatch, capsys):
    """The same fault without mount rights: ENOSPC raised by the real atomic writer in every Dask worker."""
    import avemo.pipeline.build
    from conftest import command
    main = command("build-shards")   # through the command layer, which turns errors into one line
    out = tmp_path / "out"
    real_open_client = avemo.pipeline.build.open_client

    @contextlib.contextmanager
    def client_with_quota(cfg, log=print):
        with real_open_client(cfg, log=log) as client:
            client.run(install_quota, str(out), 150_000)   # in each worker process
            yield client
    monkeypatch.setattr(avemo.pipeline.build, "open_client", client_with_quota)
    install_quota(str(out), 150_000)                       # and here, for the part and manifest parquets
    try:
        code = main(["--root", str(tree), "--out", str(out), *OVERRIDES])
    finally:
        remove_quota()
    errors = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and "no space left on device" in errors[0], errors
    assert not hidden_temporaries(out)
    assert_nothing_torn(out, clean)
    assert list(out.glob("*.tar")) and not (out / "manifest.parquet").exists()
    monkeypatch.setattr(avemo.pipeline.build, "open_client", real_open_client)
    rebuild(tree, out, warm)
    assert_same_as_clean(out, clean)
