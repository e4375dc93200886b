"""`avemo train` starts itself again on jemalloc where asked (train.allocator, avemo/core/memory.py): the real program on
the session's shards, read back from its own log line and its /proc maps, not a mock of the loader."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from avemo.core.memory import find_jemalloc
from tests.tiny_model import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(shards, run, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "avemo", "train", "--shards", str(shards), "--run", str(run), *TINY,
           "optim.epochs=1", "report_to=jsonl", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={k: v for k, v in (env or os.environ).items() if k not in ("LD_PRELOAD", "MALLOC_CONF")})


def _malloc_of(run) -> str:
    line = next(x for x in (run / "train.log").read_text().splitlines() if " training on " in x)
    return line.rsplit("malloc: ", 1)[1]


@pytest.mark.skipif(find_jemalloc() is None, reason="no libjemalloc.so.2 installed (make setup installs libjemalloc2 "
                                                     "on apt systems)")
def test_train_runs_on_glibc_by_default_and_starts_itself_on_jemalloc_when_asked(built_shards, tmp_path):
    asked = _train(built_shards, tmp_path / "auto", "allocator=auto")
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert _malloc_of(tmp_path / "auto") == "jemalloc"
    default = _train(built_shards, tmp_path / "default")
    assert default.returncode == 0, default.stderr[-2000:]
    assert _malloc_of(tmp_path / "default") == "glibc"


@pytest.mark.skipif(find_jemalloc() is None, reason="no libjemalloc.so.2 installed: glibc either way")
def test_a_start_that_already_tried_never_starts_again(built_shards, tmp_path):
    """A preload the dynamic loader refused (here: the mark set, no library) trains on glibc, once."""
    env = dict(os.environ, AVEMO_ALLOCATOR_EXEC="1")
    out = _train(built_shards, tmp_path / "run", "allocator=auto", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _malloc_of(tmp_path / "run") == "glibc"


def test_allocator_jemalloc_without_the_library_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import avemo.core.memory as memory
    from avemo.cli import main
    monkeypatch.setattr(memory, "allocator_in_use", lambda: "glibc")
    monkeypatch.setattr(memory, "find_jemalloc", lambda: None)
    code = main(["train", "--shards", str(tmp_path), "--run", str(tmp_path / "run"), "allocator=jemalloc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("avemo train: ") and "libjemalloc2" in err[0]
    assert not (tmp_path / "run").exists()                           # refused before anything was written


@pytest.mark.skipif(find_jemalloc() is None, reason="no libjemalloc.so.2 installed")
def test_allocator_jemalloc_from_python_says_it_runs_on_glibc(built_shards, tmp_path):
    """avemo.cli.main called from Python cannot start itself again: it trains, and says which malloc it got."""
    from avemo.cli import main
    run = tmp_path / "run"
    assert main(["train", "--shards", str(built_shards), "--run", str(run), *TINY, "optim.epochs=1",
                 "report_to=jsonl", "allocator=jemalloc"]) == 0
    log = (run / "train.log").read_text()
    assert "warning: allocator=jemalloc, but this process runs on glibc's malloc" in log
    assert _malloc_of(run) == "glibc"
