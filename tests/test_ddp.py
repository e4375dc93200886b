"""Multi-process training for real: `torchrun --nproc_per_node=2 -m avemo train` (gloo on CPU) on the
built shards, and the clear error when there are fewer shards than ranks."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from avemo.core.errors import ConfigError
from avemo.shards.manifest import MANIFEST_NAME, make_table, write_table
from avemo.train.data import effective_workers

from conftest import make_users_folder
from tiny_model import TINY as TINY_BASE

TINY = [*TINY_BASE, "data.workers=1", "optim.epochs=1"]


def torchrun_cmd(shards: Path, run: Path, logs: Path, *launch: str) -> list[str]:
    # --redirects 3: each rank's stdout/stderr to its own file under --log-dir
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--log-dir", str(logs), "--redirects", "3",
            "-m", "avemo", "train", "--shards", str(shards), "--run-dir", str(run), *TINY]


def torchrun(shards: Path, run: Path, logs: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    # --standalone: a local rendezvous on a free port
    cmd = torchrun_cmd(shards, run, logs, "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}")
    # from a user's folder with its own train.py, model.py, pipeline/, shards/: ranks start with `python -m`
    cwd = make_users_folder(run.parent / "users_project")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_output(logs: Path, rank: int, stream: str) -> str:
    files = sorted(logs.glob(f"*/attempt_0/{rank}/{stream}.log"))
    assert len(files) == 1, f"expected one {stream} log for rank {rank} under {logs}, found {files}"
    return files[0].read_text()


@pytest.mark.slow
def test_torchrun_two_ranks_train_in_step(tmp_path, built_shards):
    run, logs = tmp_path / "run", tmp_path / "logs"
    result = torchrun(built_shards, run, logs)
    assert result.returncode == 0, result.stderr[-3000:]
    out = {r: rank_output(logs, r, "stdout") for r in (0, 1)}
    steps = {r: int(re.search(r"^done: epoch 1, step (\d+)", out[r], re.M).group(1)) for r in (0, 1)}
    n_train = sum(r["split"] == "train" and r["status"] == "ok"
                  for r in pq.read_table(built_shards / MANIFEST_NAME).to_pylist())
    assert steps[0] == steps[1] == n_train // (4 * 2)           # batch 4 x 2 ranks, the same on both
    # rank 0 alone reports, logs and checkpoints; rank 1 only says it is done
    assert "training on cpu x2" in out[0] and "training on" not in out[1]
    epochs = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert len(epochs) == 1
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == steps[0] and ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the unwrapped model, not the DDP wrapper
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []   # no stray temporaries


@pytest.mark.slow
def test_two_nodes_with_the_documented_multi_node_command(tmp_path, built_shards):
    """docs/scale.md's two-node command (--nnodes 2, --node_rank, --rdzv_endpoint), both nodes on loopback."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(torchrun_cmd(built_shards, tmp_path / "run", tmp_path / f"logs{rank}", "--nnodes=2",
                                           f"--node_rank={rank}", "--nproc_per_node=1", f"--rdzv_endpoint={endpoint}"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:        # a launcher still running (timeout): stop it and its ranks
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    done = [re.search(r"^done: epoch 1, step (\d+)", rank_output(tmp_path / f"logs{rank}", 0, "stdout"), re.M)
            for rank in (0, 1)]
    assert done[0].group(1) == done[1].group(1)
    assert "training on cpu x2" in rank_output(tmp_path / "logs0", 0, "stdout")   # global rank 0 on node 0
    assert torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_fewer_shards_than_ranks_is_a_one_line_error(tmp_path, built_shards):
    """A shard folder with one train shard (a true subset of the built one) cannot feed two ranks."""
    few = tmp_path / "few"
    few.mkdir()
    keep = {"train-000000.tar", "dev-000000.tar"}
    for name in keep:
        shutil.copyfile(built_shards / name, few / name)
    rows = [r for r in pq.read_table(built_shards / MANIFEST_NAME).to_pylist() if r["shard"] in keep]
    write_table(few / MANIFEST_NAME, make_table(rows))
    logs = tmp_path / "logs"
    result = torchrun(few, tmp_path / "run", logs)
    assert result.returncode != 0
    line = ("avemo train: error: 1 shard(s) cannot feed 2 ranks: every rank needs at least one shard "
            "(rebuild with a smaller shards.max_clips, or use fewer ranks)")
    # the first rank to exit makes torchrun stop the other, which may go before it prints ([] is allowed there)
    # or while its C++ runtime tears down (libstdc++'s line after ours, from the SIGTERM, not from avemo)
    teardown = "terminate called without an active exception"
    errs = [[e for e in rank_output(logs, rank, "stderr").strip().splitlines() if e != teardown]
            for rank in (0, 1)]
    assert [line] in errs and all(e in ([line], []) for e in errs), errs
    assert "exitcode  : 2" in result.stderr                    # torchrun's report of the rank that failed first
    assert not (tmp_path / "run" / "last.pt").exists()


def _on_rank0_worker(rank: int, port: int, out: Path) -> None:
    """One rank of a 2-process gloo group: on_rank0 with a result, then with an error."""
    import json
    import torch.distributed as dist
    from avemo.shards.manifest import CorruptShardError
    from avemo.train.loop import on_rank0
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    def work(x):
        (out / f"work-ran-on-{rank}").touch()
        return {"x": x, "tensor": torch.arange(3) * x}

    got = on_rank0(work, 7)

    def fail():
        raise CorruptShardError("shard s.tar is missing (set data.corrupt_shards=skip to train without it)")
    try:
        on_rank0(fail)
        error = None
    except CorruptShardError as exc:
        error = str(exc)
    dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps({"x": got["x"], "tensor": got["tensor"].tolist(),
                                                      "error": error}))


def test_rank0_work_is_broadcast_to_every_rank(tmp_path):
    """Shard hashing and statistics run on rank 0 only (on_rank0); every rank gets the result, or the error."""
    import json
    import torch.multiprocessing as mp
    mp.spawn(_on_rank0_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("work-ran-on-*")) == ["work-ran-on-0"]   # rank 0 alone did it
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "x": 7, "tensor": [0, 7, 14],
            "error": "shard s.tar is missing (set data.corrupt_shards=skip to train without it)"}


def test_dataloader_workers_are_capped_by_shards_per_rank():
    assert effective_workers(n_shards=8, world=2, wanted=8) == 4
    assert effective_workers(n_shards=4, world=2, wanted=1) == 1
    with pytest.raises(ConfigError, match="1 shard\\(s\\) cannot feed 2 ranks"):
        effective_workers(n_shards=1, world=2, wanted=4)
