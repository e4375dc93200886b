"""Faults and hostile input on the reading side: corrupt shards (stop | skip), `avemo train` SIGKILLed
mid-epoch then resumed, checkpoints killed mid-write, and malicious shards / checkpoints / weights that
must never execute anything."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from badmedia import REPO, avemo, hidden_temporaries, kill_group, start_group, wait_for
from avemo.shards.manifest import make_table, sha256_file, write_table
from avemo.model.checkpoint import load_checkpoint

from tiny_model import TINY as TINY_BASE

TINY = [*TINY_BASE, "optim.epochs=2"]


def _train_cmd(shards: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "avemo", "train", "--shards", str(shards), "--run", str(run), *TINY, *extra]


class Evil:
    """Unpickling this runs `touch MARKER`: proof by side effect that nothing was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def reference(built_shards, tmp_path_factory) -> Path:
    """An uninterrupted `avemo train` run (2 epochs) as a user runs it."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(_train_cmd(built_shards, run), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def _copy_shards(built_shards: Path, dest: Path) -> Path:
    shutil.copytree(built_shards, dest)
    return dest


def _flip_bytes(path: Path, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- damaged shard folders: a corrupt shard (stop | skip) and a hostile one -------------------------

BAD = "train-000001.tar"
HOSTILE = "train-000099.tar"
REFUSED = {"dia778_utt0": "dia778_utt0: unknown member extension .pyd",
           "dia779_utt0": "dia779_utt0: unknown member extension .pickle",
           "dia780_utt0": "dia780_utt0: member .boxes.npy is not a plain numpy array",
           "dia781_utt0": "invalid sample key '../dia781_utt0'"}


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _hostile_shard(shards: Path, marker: Path) -> None:
    """An extra train shard listed in the manifest with its true checksum (whoever can write the shard folder
    can write the manifest too): one valid sample (dia777) and the hostile ones of REFUSED."""
    import pickle
    import webdataset as wds
    good = next(iter(wds.WebDataset(str(shards / "train-000000.tar"), shardshuffle=False)))
    record = dict(json.loads(good["json"]), key="dia777_utt0")
    plain = {k: good[k] for k in ("json", "facemask.npy", "boxes.npy")}
    members = {
        "dia777_utt0": {**{k: v for k, v in good.items() if not k.startswith("__")},
                        "json": json.dumps(record).encode()},
        "dia778_utt0": {**plain, "pyd": pickle.dumps(Evil(marker))},        # unpickling runs `touch`
        "dia779_utt0": {**plain, "pickle": pickle.dumps(Evil(marker))},
        "dia780_utt0": {**plain, "boxes.npy": _npy(np.array([Evil(marker)], dtype=object), allow_pickle=True)},
        "../dia781_utt0": plain,
    }
    with tarfile.open(shards / HOSTILE, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, parts in members.items():
            for ext, data in parts.items():
                _member(tar, f"{key}.{ext}", data)
    table = pq.read_table(shards / "manifest.parquet")
    extra = [dict(key=k.split("/")[-1], split="train", label=record["label"], status="ok", shard=HOSTILE,
                  shard_sha256=sha256_file(shards / HOSTILE)) for k in members]
    write_table(shards / "manifest.parquet", make_table(table.to_pylist() + extra))


@pytest.fixture(scope="module")
def damaged(built_shards, tmp_path_factory) -> tuple[Path, Path]:
    """(shards, marker): a copy of the built shards with 16 flipped bytes in BAD, plus the HOSTILE shard."""
    base = tmp_path_factory.mktemp("damaged")
    shards = _copy_shards(built_shards, base / "shards")
    _flip_bytes(shards / BAD)
    _hostile_shard(shards, base / "pwned")
    return shards, base / "pwned"


def _train_rows(shards: Path) -> list[dict]:
    return [r for r in pq.read_table(shards / "manifest.parquet").to_pylist()
            if r["split"] == "train" and r["status"] == "ok"]


def test_corrupt_shard_stops_train_with_one_line(damaged, tmp_path):
    shards, _ = damaged
    result = subprocess.run(_train_cmd(shards, tmp_path / "run"), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (f"avemo train: error: shard {shards / BAD} does not match its checksum in the manifest "
                        "(corrupt or modified) (set data.corrupt_shards=skip to train without it)")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_corrupt_shard_stops_evaluate_with_one_line(damaged, reference, tmp_path, capsys):
    from avemo.cli import main
    shards, _ = damaged
    code = main(["evaluate", "--shards", str(shards), "--checkpoint", str(reference / "last.pt"), "--split", "train",
                 "--out", str(tmp_path / "eval"), "device=cpu", "workers=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"avemo evaluate: error: shard {shards / BAD} does not match its checksum in the manifest "
                      "(corrupt or modified) (set corrupt_shards=skip to evaluate without it)")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.fixture(scope="module")
def skip_train(damaged, tmp_path_factory) -> dict:
    """One `avemo train` epoch (in process) with data.corrupt_shards=skip: stdout, data log, shard hashes."""
    import logging
    import avemo.shards.manifest
    from avemo.cli import main
    shard_dir, _ = damaged
    run = tmp_path_factory.mktemp("skip_train") / "run"
    hashes: dict[str, int] = {}
    real_sha = avemo.shards.manifest.sha256_file

    def counting_sha(path, *args, **kwargs):
        hashes[Path(path).name] = hashes.get(Path(path).name, 0) + 1
        return real_sha(path, *args, **kwargs)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(avemo.shards.manifest, "sha256_file", counting_sha)
        logging.getLogger("avemo.data").addHandler(handler)
        try:
            code = main(["train", "--shards", str(shard_dir), "--run", str(run), *TINY, "optim.epochs=1",
                         "data.corrupt_shards=skip"])
        finally:
            logging.getLogger("avemo.data").removeHandler(handler)
    return {"code": code, "out": out.getvalue(), "log": "\n".join(messages), "hashes": hashes, "run": run}


def test_corrupt_shard_is_skipped_by_train_when_asked(damaged, skip_train):
    shards, _ = damaged
    assert skip_train["code"] == 0 and load_checkpoint(skip_train["run"] / "last.pt")["epoch"] == 1
    assert f"warning: shard {shards / BAD} does not match its checksum in the manifest" in skip_train["out"]
    n_train = sum(r["shard"] != BAD for r in _train_rows(shards))
    assert f"{n_train} clips" in skip_train["out"]                          # its clips are left out
    rows = pq.read_table(shards / "manifest.parquet").to_pylist()
    expected = {r["shard"] for r in rows if r["status"] == "ok" and r["split"] in ("train", "dev")}
    assert skip_train["hashes"] == {name: 1 for name in expected}          # each shard hashed exactly once


@pytest.fixture(scope="module")
def skip_evaluate(damaged, reference, tmp_path_factory) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`avemo evaluate` on the train split with corrupt_shards=skip, as a user runs it; (result, predicted keys)."""
    shards, _ = damaged
    out = tmp_path_factory.mktemp("skip_evaluate") / "eval"
    result = avemo("evaluate", "--shards", str(shards), "--checkpoint", str(reference / "last.pt"), "--split", "train",
                   "--out", str(out), "device=cpu", "workers=0", "ablation=false", "corrupt_shards=skip")
    assert result.returncode == 0, result.stderr[-2000:]
    return result, set(pq.read_table(out / "predictions.parquet")["key"].to_pylist())


def test_corrupt_shard_is_skipped_by_evaluate_when_asked(damaged, skip_evaluate):
    shards, _ = damaged
    result, keys = skip_evaluate
    assert f"warning: shard {shards / BAD} does not match its checksum" in result.stdout
    expected = {r["key"] for r in _train_rows(shards) if r["shard"] != BAD} - set(REFUSED)
    assert keys == expected and "dia777_utt0" in keys


# ---- training killed mid-epoch, and checkpoints killed mid-write ------------------------------------

@pytest.mark.slow
def test_train_sigkilled_mid_epoch_resumes_to_the_same_state(built_shards, reference, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    rows = pq.read_table(built_shards / "manifest.parquet").to_pylist()
    steps_per_epoch = sum(r["split"] == "train" and r["status"] == "ok" for r in rows) // 4
    proc = start_group(_train_cmd(built_shards, run), log)

    def logged_steps() -> list[int]:
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line)["step"] for line in lines[:-1] if '"loss"' in line]   # last may be partial
    try:
        wait_for(lambda: max(logged_steps(), default=0) >= steps_per_epoch + 1, 300, "a step of epoch 2",
                 proc, log)
        assert proc.poll() is None
    finally:
        kill_group(proc)
    ckpt = load_checkpoint(run / "last.pt")                  # loads: never half-written
    assert ckpt["epoch"] == 1 and ckpt["step"] < max(logged_steps()), "the kill did not land mid-epoch 2"
    leftover = run / ".last.pt.tmp-999-deadbeef"              # what a kill during a save leaves (see below)
    leftover.write_bytes(b"half a checkpoint")

    result = subprocess.run(_train_cmd(built_shards, run, "--resume"), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {run / 'last.pt'}: epoch {ckpt['epoch']}" in result.stdout
    assert not leftover.exists() and not hidden_temporaries(run)
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    assert (a["epoch"], a["step"], a["best"]) == (b["epoch"], b["step"], b["best"]) and a["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


SAVER = """
import sys, torch
from avemo.model.checkpoint import save_checkpoint
weights = torch.zeros(8_000_000)                           # 32 MB: a save takes a while
for step in range(1, 10**9):
    weights.fill_(step)
    save_checkpoint(sys.argv[1], model={"w": weights}, config={"model": {}, "data": {}}, step=step, epoch=step)
    print(step, flush=True)
"""


@pytest.mark.slow
def test_checkpoint_killed_mid_write_is_never_torn(tmp_path):
    """A process doing nothing but saving a 32 MB last.pt is SIGKILLed during a save (a seeded moment after its
    temporary appears); last.pt always loads whole (every value equals its step), and at least one kill
    left a torn temporary behind, hidden, instead of a torn last.pt. Up to ten processes: on a fast disk a
    kill can land just after a save finished, which is fine but proves nothing, so it tries again."""
    path = tmp_path / "last.pt"
    torn_writes = attempts = 0
    while attempts < 3 or (torn_writes == 0 and attempts < 10):
        seed, attempts = attempts, attempts + 1
        log = tmp_path / f"saver{seed}.log"
        proc = start_group([sys.executable, "-c", SAVER, str(path)], log)
        try:
            wait_for(lambda: len([w for w in log.read_text().split() if w.isdigit()]) >= 2 + seed % 3, 120,
                     "saves by this process", proc, log)
            # every millisecond: on a fast disk a save lasts only tens of ms
            wait_for(lambda: hidden_temporaries(tmp_path), 60, "a save in progress", proc, log, interval=0.001)
            time.sleep(random.Random(seed).uniform(0.0, 0.004 if seed % 2 else 0.02))   # inside the write
        finally:
            kill_group(proc)
        ckpt = load_checkpoint(path)
        assert ckpt["step"] >= 1 and torch.all(ckpt["model"]["w"] == ckpt["step"])
        torn_writes += len(hidden_temporaries(tmp_path))
        for tmp in hidden_temporaries(tmp_path):
            tmp.unlink()
    assert torn_writes >= 1, f"no kill landed during a write in {attempts} tries"


# ---- security: shards, checkpoints and weights are data, never code ---------------------------------

def test_hostile_shard_members_are_skipped_by_evaluate(damaged, skip_evaluate):
    _, marker = damaged
    result, keys = skip_evaluate
    for message in REFUSED.values():
        assert message in result.stderr, (message, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and not keys & set(REFUSED)
    assert not marker.exists(), "a pickle in a shard was executed"


def test_hostile_shard_members_are_skipped_by_train(damaged, skip_train):
    _, marker = damaged
    assert skip_train["code"] == 0
    for message in REFUSED.values():
        assert message in skip_train["log"], (message, skip_train["log"][-2000:])
    assert not marker.exists(), "a pickle in a shard was executed"


def test_pickled_checkpoint_is_refused_with_one_line(reference, built_shards, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = load_checkpoint(reference / "last.pt")
    ckpt["extra"] = Evil(marker)
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    result = avemo("evaluate", "--shards", str(built_shards), "--checkpoint", str(evil), "--out", str(tmp_path / "e"),
                   "device=cpu")
    assert result.returncode == 2 and not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert lines == [f"avemo evaluate: error: cannot read checkpoint {evil} safely: "
                     "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."], result.stderr

    run = tmp_path / "run"                                   # the same file as RUN/last.pt, with --resume
    run.mkdir()
    shutil.copyfile(evil, run / "last.pt")
    from conftest import command
    main = command("train")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--shards", str(built_shards), "--run", str(run), "--resume", *TINY])
    assert code == 2 and not marker.exists()
    assert err.getvalue().strip().startswith(f"avemo train: error: cannot read checkpoint {run / 'last.pt'} safely")
    assert len(err.getvalue().strip().splitlines()) == 1


def test_pickled_weights_are_refused(built_shards, tmp_path):
    from avemo.core.weights import WeightsError, load_state_dict
    from conftest import command
    main = command("train")
    marker = tmp_path / "pwned"
    evil = tmp_path / "mobilefacenet.pt"
    torch.save({"conv.weight": torch.zeros(1), "hook": Evil(marker)}, evil)
    with pytest.raises(WeightsError, match="cannot load weights .* safely: .*unsupported GLOBAL posix.system"):
        load_state_dict(evil)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--shards", str(built_shards), "--run", str(tmp_path / "run"), *TINY,
                     f"model.face_weights={evil}"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and not marker.exists()
    assert len(lines) == 1 and lines[0].startswith(f"avemo train: error: cannot load weights {evil} safely"), lines
