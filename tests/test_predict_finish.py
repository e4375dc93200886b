"""predict and export, finished: --per-clip (one line per file), a window with neither face nor audio gets
"label": null, TorchScript exports run in predict (parity with the checkpoint), missing weights / corrupt
checkpoints / unsafe pickles each get their own line, and an endless live input keeps its memory bounded."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, command

predict_main = command("predict")


def predict(argv, capsys) -> tuple[int, list[dict], str]:
    code = predict_main(argv)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_per_clip_gives_one_prediction_per_file(tiny_checkpoint, media, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("single_face.mp4", "fer_test.mp4", "no_face.mp4"):
        shutil.copyfile(media / name, clips / name)
    (clips / "broken.mp4").write_bytes(b"\x00" * 5000)
    code, rows, err = predict([str(clips), "--checkpoint", str(tiny_checkpoint), "--per-clip"], capsys)
    assert code == 1 and "broken.mp4" in err                          # reported in one line, the rest ran
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in rows) == ["fer_test.mp4", "no_face.mp4", "single_face.mp4"]
    by = {r["source"].rsplit("/", 1)[-1]: r for r in rows}
    assert by["single_face.mp4"]["start"] == 0 and by["single_face.mp4"]["end"] == pytest.approx(2.4, abs=0.1)
    assert by["single_face.mp4"]["frames"] == 8                     # decode.max_frames of the build, whole clip
    assert by["fer_test.mp4"]["modalities"] == ["face"] and by["no_face.mp4"]["modalities"] == ["audio"]
    assert all(r["label"] == max(r["probs"], key=r["probs"].get) for r in rows)
    code, _, err = predict(["pipe:0", "--checkpoint", str(tiny_checkpoint), "--per-clip"], capsys)
    assert code == 1 and "per_clip needs a file" in err


def test_a_window_with_neither_face_nor_audio_has_no_label(tiny_checkpoint, capsys):
    code, rows, _ = predict(["lavfi:testsrc2=size=320x240:rate=25:duration=3", "--checkpoint",
                             str(tiny_checkpoint)], capsys)
    assert code == 0 and rows
    assert all(r["label"] is None and r["probs"] is None and r["modalities"] == [] for r in rows)


def test_torchscript_export_runs_in_predict_like_the_checkpoint(tiny_checkpoint, media, tmp_path, capsys):
    script = tmp_path / "model.torchscript.pt"
    assert command("export")(["--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--out",
                              str(script)]) == 0
    capsys.readouterr()
    clip = str(media / "single_face.mp4")
    _, ref, _ = predict([clip, "--checkpoint", str(tiny_checkpoint)], capsys)
    code, got, err = predict([clip, "--checkpoint", str(script)], capsys)
    assert code == 0 and "runtime torchscript" in err and len(got) == len(ref) > 0
    for a, b in zip(got, ref):
        assert a["label"] == b["label"] and max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) < 1e-4
    # a TorchScript file where a training checkpoint is needed: its own line
    code = command("evaluate")(["--shards", str(tmp_path), "--checkpoint", str(script), "--out", str(tmp_path / "e")])
    assert code == 2 and "is a TorchScript export" in capsys.readouterr().err


def test_weights_corrupt_and_unsafe_checkpoints_each_have_their_own_line(tiny_checkpoint, media, tmp_path):
    clip = str(media / "single_face.mp4")

    def run(*argv, **env) -> list[str]:
        result = subprocess.run([sys.executable, "-m", "avemo", "predict", clip, *argv], capture_output=True,
                                text=True, env={**os.environ, **env}, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr.strip().splitlines()
    missing = tmp_path / "nowhere" / "retinaface.pth"
    assert run("--checkpoint", str(tiny_checkpoint), f"face.weights={missing}") == [
        f"avemo predict: error: weights file {missing} does not exist"]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:100_000])       # a copy cut short
    assert run("--checkpoint", str(corrupt)) == [
        f"avemo predict: error: cannot read checkpoint {corrupt}: not a torch checkpoint (truncated, corrupt or "
        "another kind of file; RuntimeError)"]
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "hook": os.system}, unsafe)
    lines = run("--checkpoint", str(unsafe))
    assert len(lines) == 1 and lines[0].startswith(f"avemo predict: error: cannot read checkpoint {unsafe} safely")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
def test_an_endless_live_input_keeps_memory_bounded(tiny_checkpoint, tmp_path):
    """An endless generator (video with a face-less test pattern + a tone) streamed with --plot: RSS after
    two hundred more windows stays within a few MB of RSS after the first ones (a leak of each window's frames
    or audio would show as hundreds of MB)."""
    source = "lavfi:testsrc2=size=320x240:rate=10[out0];sine=f=440:sample_rate=16000[out1]"
    proc = subprocess.Popen([sys.executable, "-m", "avemo", "predict", source, "--checkpoint", str(tiny_checkpoint),
                             "--plot", str(tmp_path / "live.png"), "--hop", "0.25"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        samples = {}
        for n, line in enumerate(proc.stdout, 1):
            assert json.loads(line)["label"] is not None
            if n in (60, 260):
                samples[n] = _rss_mb(proc.pid)
            if n == 260:
                break
    finally:
        proc.send_signal(signal.SIGINT)                   # Ctrl-C: the plot of what was streamed is written
        proc.wait(timeout=120)
    assert samples[260] - samples[60] < 16, samples
    assert (tmp_path / "live.png").stat().st_size > 10_000
