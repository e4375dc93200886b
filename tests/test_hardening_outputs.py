"""Issue 12, outputs: a command never destroys its own inputs, fails before its work on an output it cannot
write, and a full disk while training leaves every file consistent (a real tmpfs when root allows)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from avemo.cli import main
from avemo.core.atomic import TMP_MARK
from avemo.core.errors import ConfigError

from badmedia import avemo
from tiny_model import TINY_TRAIN


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.unit
def test_export_out_equal_to_the_checkpoint_is_refused_before_reading_it(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not even read")
    link = tmp_path / "link.pt"
    link.symlink_to(ckpt)
    for out in (ckpt, link, tmp_path / "sub" / ".." / "best.pt"):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
        assert "is the checkpoint: writing it would destroy it" in _one_line(capsys)
    assert ckpt.read_bytes() == b"not even read"


@pytest.mark.unit
@pytest.mark.parametrize("flag, target", [("--out", "ckpt"), ("--plot", "ckpt"), ("--out", "video"),
                                          ("--plot", "video"), ("--out", "in_folder"), ("--plot", "out")])
def test_predict_outputs_equal_to_an_input_are_refused_before_work(tmp_path, capsys, flag, target):
    paths = {"ckpt": tmp_path / "best.pt", "video": tmp_path / "clip.mp4", "in_folder": tmp_path / "clips" / "a.mp4",
             "out": tmp_path / "p.jsonl"}
    paths["in_folder"].parent.mkdir()
    for path in paths.values():
        path.write_bytes(b"keep me")
    extra = ["--out", str(paths["out"])] if target == "out" else []
    code = main(["predict", str(paths["video"]), str(paths["in_folder"].parent), "--checkpoint", str(paths["ckpt"]),
                 *extra, flag, str(paths[target])])
    assert code == 2 and "writing it would destroy it" in _one_line(capsys)
    assert all(p.read_bytes() == b"keep me" for p in paths.values())


def test_predict_overlay_equal_to_its_input_is_refused_before_work(tmp_path, capsys):
    video, ckpt = tmp_path / "clip.mp4", tmp_path / "best.pt"
    for path in (video, ckpt):
        path.write_bytes(b"keep me")
    code = main(["predict", str(video), "--checkpoint", str(ckpt), "--overlay", str(video)])
    assert code == 2 and "writing it would destroy it" in _one_line(capsys)
    assert video.read_bytes() == ckpt.read_bytes() == b"keep me"


@pytest.mark.unit
def test_run_that_is_a_file_fails_before_any_work(tmp_path):
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    run = tmp_path / "run"
    run.write_text("a user's file")
    cfg = load_config(TrainConfig, "train", None, TINY_TRAIN, {"shards": str(tmp_path / "none"), "run": str(run)})
    with pytest.raises(ConfigError, match="--run .* exists and is not a folder"):
        run_train(cfg)
    assert run.read_text() == "a user's file"


def test_evaluate_out_that_is_a_file_fails_before_scoring(tiny_checkpoint, built_shards, tmp_path, capsys):
    out = tmp_path / "eval"
    out.write_text("a user's file")
    assert main(["evaluate", "--shards", str(built_shards), "--checkpoint", str(tiny_checkpoint), "--split", "dev",
                 "--out", str(out), "device=cpu", "workers=0"]) == 2
    assert "--out" in _one_line(capsys) and out.read_text() == "a user's file"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, options: str = ""):
    """A real small file system (root only; skipped where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_while_saving_checkpoints_leaves_every_file_consistent(tiny_checkpoint, built_shards, tmp_path):
    """A 14 MB tmpfs holds one ~9 MB checkpoint, not two: epoch 1 fills it while saving. One line, exit 2;
    every file there is whole: no temporaries, metrics.jsonl all complete lines, and no last.pt that records
    a best score no best.pt holds."""
    size = tiny_checkpoint.stat().st_size
    with tmpfs(tmp_path / "disk", f"{int(size * 1.6) // 1024}k") as disk:
        run = disk / "run"
        result = avemo("train", "--shards", str(built_shards), "--run", str(run), *TINY_TRAIN, timeout=600)
        assert result.returncode == 2, result.stdout[-1000:] + result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert lines == [lines[-1]] and "no space left on device" in lines[-1], result.stderr[-2000:]
        assert not [p for p in run.iterdir() if TMP_MARK in p.name]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # all whole
        assert records
        from avemo.model.checkpoint import load_checkpoint
        if (run / "last.pt").exists():
            last = load_checkpoint(run / "last.pt")
            assert last["best"] < 0 or load_checkpoint(run / "best.pt")["best"] == last["best"]
        assert (run / "best.pt").exists() or not (run / "last.pt").exists()


def test_run_on_a_read_only_file_system_fails_before_any_work(tmp_path):
    """Root may write anywhere permission bits say no, but not on a read-only mount: a real write decides."""
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    with tmpfs(tmp_path / "ro", "1m", ",ro") as ro:
        cfg = load_config(TrainConfig, "train", None, TINY_TRAIN, {"shards": str(tmp_path / "none"), "run": str(ro)})
        with pytest.raises(ConfigError, match=r"--run .* is not writable \(Read-only file system\)"):
            run_train(cfg)
