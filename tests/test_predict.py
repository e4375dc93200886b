"""`avemo predict` on the real videos in ../shared/media (face, no face, no audio, HEVC in MOV), a folder,
stdin and an ffmpeg generator, with a checkpoint trained on the real shards; and the bounded buffer."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from badmedia import clip, ffmpeg

from conftest import command

predict_main = command("predict")
from avemo.pipeline.config import DecodeConfig
from avemo.inference.stream import Input, StreamDecoder, probe_input, resolve_inputs, stream_plan
from avemo.shards.labels import EMOTIONS

WINDOW, HOP = 2.0, 0.5
LAVFI = "lavfi:testsrc2=size=320x240:rate=25:duration={d}[out0];sine=f=440:sample_rate=16000:duration={d}[out1]"


def ffprobe_duration(path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def expected_windows(duration: float) -> int:
    return max(1, math.floor((duration - WINDOW) / HOP + 1e-6) + 1)


def run_predict(argv, capsys) -> tuple[int, list[dict], str]:
    code = predict_main(argv)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return code, lines, captured.err


@pytest.fixture(scope="module")
def folder(tmp_path_factory, media):
    path = tmp_path_factory.mktemp("clips")
    for name in ("single_face.mp4", "fer_test.mp4"):
        shutil.copyfile(media / name, path / name)
    (path / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (path / "notes.txt").write_text("not a video")
    return path


@pytest.fixture(scope="module")
def predicted(tiny_checkpoint, folder, media, tmp_path_factory):
    """One run over a folder and two more files, with --out, --plot and --timings."""
    out = tmp_path_factory.mktemp("predict")
    argv = [str(folder), str(media / "no_face.mp4"), str(media / "face_noface.mov"), "--checkpoint",
            str(tiny_checkpoint), "--out", str(out / "p.jsonl"), "--plot", str(out / "p.png"), "--timings"]
    code = predict_main(argv)
    lines = [json.loads(line) for line in (out / "p.jsonl").read_text().splitlines()]
    return code, lines, out


def by_source(lines, name):
    return [r for r in lines if r["source"].endswith(name)]


def test_one_line_per_window_with_probabilities(predicted, media):
    code, lines, _ = predicted
    assert code == 1                                        # broken.mp4 failed; everything else ran
    assert {r["source"].rsplit("/", 1)[-1] for r in lines} == {"single_face.mp4", "fer_test.mp4", "no_face.mp4",
                                                                "face_noface.mov"}
    for name in ("single_face.mp4", "fer_test.mp4", "no_face.mp4", "face_noface.mov"):
        rows = by_source(lines, name)
        assert len(rows) == expected_windows(ffprobe_duration(media / name)), name
        assert [r["start"] for r in rows] == [k * HOP for k in range(len(rows))]
        assert all(r["end"] == r["start"] + WINDOW for r in rows)
    for r in lines:
        assert list(r["probs"]) == list(EMOTIONS)
        assert abs(sum(r["probs"].values()) - 1) < 1e-3 and min(r["probs"].values()) > 0
        assert r["label"] == max(r["probs"], key=r["probs"].get)
        assert r["frames"] == 8                             # 2 s at decode.fps=4, as build-shards samples
        assert set(r["ms"]) == {"wait", "detect", "crop", "mel", "embed", "model"}


def test_faces_and_modalities(predicted):
    _, lines, _ = predicted
    assert all(r["face"] > 0.8 and r["modalities"] == ["face", "audio"] for r in by_source(lines, "single_face.mp4"))
    assert all(r["face"] == 0 and r["modalities"] == ["audio"] for r in by_source(lines, "no_face.mp4"))
    silent = by_source(lines, "fer_test.mp4")                # a face, no audio stream: the face carries it
    assert all(r["modalities"] == ["face"] and r["face"] > 0.8 for r in silent)
    mov = by_source(lines, "face_noface.mov")                # HEVC: the face leaves the frame
    assert mov[0]["face"] > 0.8 and mov[-1]["face"] < 0.2
    assert mov[0]["modalities"] == ["face", "audio"] and mov[-1]["modalities"] == ["audio"]


def test_plot_is_a_timeline_png(predicted):
    _, _, out = predicted
    image = np.asarray(Image.open(out / "p.png").convert("RGB"))
    assert image.shape[0] > 4 * 250 and image.shape[1] > 1000      # one panel per input
    assert len(np.unique(image[::4, ::4].reshape(-1, 3), axis=0)) > 20   # coloured areas, not a blank page


def test_errors_are_one_line(tiny_checkpoint, folder, capsys, tmp_path):
    code, lines, err = run_predict([str(folder / "broken.mp4"), "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 1 and lines == [] and err.count("\n") == 1 and "broken.mp4" in err and "Traceback" not in err
    code, _, err = run_predict([str(tmp_path / "missing.mp4"), "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 2 and "missing.mp4" in err and err.count("\n") == 1
    from avemo.cli import main as cli_main
    assert cli_main(["predict", str(folder), "--checkpoint", str(tiny_checkpoint), "audio.n_mels=40"]) == 2
    assert "trained on 64 mel bins" in capsys.readouterr().err
    assert cli_main(["predict", str(folder), "--checkpoint", str(tiny_checkpoint), "hop_s=0"]) == 2
    assert "hop must be in [0.05 s, window]" in capsys.readouterr().err


def test_stdin_stream_gives_the_file_result(tiny_checkpoint, predicted, media):
    """The same clip through `pipe:0` (mpegts on stdin, one ffmpeg process) as from the file."""
    ts = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(media / "single_face.mp4"), "-c", "copy",
                         "-f", "mpegts", "-"], capture_output=True, check=True).stdout
    proc = subprocess.run([sys.executable, "-m", "avemo", "predict", "pipe:0", "--checkpoint", str(tiny_checkpoint)],
                          input=ts, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    want = by_source(predicted[1], "single_face.mp4")
    assert [r["source"] for r in rows] == ["pipe:0"] * len(want)
    for got, ref in zip(rows, want):
        assert got["label"] == ref["label"] and got["modalities"] == ref["modalities"] and got["face"] == ref["face"]
        assert max(abs(got["probs"][k] - ref["probs"][k]) for k in EMOTIONS) < 0.02   # mpegts re-times the audio


def test_onnx_model_gives_the_torch_result(tiny_checkpoint, predicted, media, tmp_path, capsys):
    from avemo.inference.export import export
    model = export(tiny_checkpoint, "onnx", tmp_path / "model.onnx")
    code, rows, err = run_predict([str(media / "fer_test.mp4"), "--checkpoint", str(model)], capsys)
    assert code == 0 and "runtime onnx" in err
    want = by_source(predicted[1], "fer_test.mp4")
    assert len(rows) == len(want)
    for got, ref in zip(rows, want):
        assert max(abs(got["probs"][k] - ref["probs"][k]) for k in EMOTIONS) < 1e-4


def test_generator_source(tiny_checkpoint, capsys):
    code, rows, _ = run_predict([LAVFI.format(d=3), "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 0 and len(rows) == expected_windows(3.0)
    assert all(r["face"] == 0 and r["modalities"] == ["audio"] for r in rows)   # a test pattern has no face


@pytest.fixture(scope="module")
def odd_streams(tmp_path_factory):
    """An mpegts stream and an mp3 whose only picture is its cover art (attached_pic)."""
    path = tmp_path_factory.mktemp("odd")
    mp4 = clip(path / "c.mp4")                                   # 160x120, 2 s, sine audio
    ffmpeg("-i", f"file:{mp4}", "-c", "copy", "-f", "mpegts", f"file:{path / 'c.ts'}")
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64:d=0.1", "-frames:v", "1", f"file:{path / 'cover.png'}")
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-i", f"file:{path / 'cover.png'}", "-map", "0", "-map", "1",
           "-c:v", "mjpeg", "-disposition:v:0", "attached_pic", "-c:a", "libmp3lame", f"file:{path / 'cover.mp3'}")
    return path


def _probe_stdin(data: bytes):
    return probe_input(Input("pipe:0", "pipe:0", {}, "pipe"), stdin=io.BytesIO(data))


def test_stdin_is_probed_with_the_checks_of_a_file(odd_streams):
    """pipe:0 goes through build-shards' probe checks: the start of a stream too short to carry the frame size
    (ffprobe exits 0 with a 0x0 video stream) is unreadable, and a cover picture is not a video stream."""
    ts = (odd_streams / "c.ts").read_bytes()
    probe, head = _probe_stdin(ts)
    assert probe.ok and (probe.width, probe.height) == (160, 120) and probe.has_audio and head == ts
    probe, head = _probe_stdin(ts[:600])
    assert (probe.ok, probe.reason, probe.detail) == (False, "unreadable_container", "video stream has size 0x0")
    assert head == ts[:600]
    mp3 = odd_streams / "cover.mp3"
    for probe in (_probe_stdin(mp3.read_bytes())[0], probe_input(resolve_inputs([str(mp3)])[0])[0]):
        assert (probe.ok, probe.reason) == (False, "no_video_stream") and "video" in probe.detail


def test_stdin_without_a_frame_size_is_one_line_not_a_traceback(tiny_checkpoint, odd_streams):
    head = (odd_streams / "c.ts").read_bytes()[:600]
    proc = subprocess.run([sys.executable, "-m", "avemo", "predict", "pipe:0", "--checkpoint",
                           str(tiny_checkpoint)], input=head, capture_output=True, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b"" and "Traceback" not in err
    assert err.strip().splitlines() == ["avemo predict: pipe:0: unreadable_container: video stream has size 0x0"]


def _decoder(text: str, buffer_s: float, live: bool) -> StreamDecoder:
    inp = resolve_inputs([text])[0]
    inp = Input(inp.name, inp.url, inp.options, inp.kind, live=live)
    probe, head = probe_input(inp)
    return StreamDecoder(inp, stream_plan(probe, DecodeConfig()), buffer_s, head)


def test_buffer_is_bounded_and_loses_nothing():
    """120 s of stream through a 3 s buffer: memory stays at the buffer, every window complete."""
    with _decoder(LAVFI.format(d=120), 3.0, live=False) as dec:
        windows = list(dec.windows(WINDOW, HOP))
        dec.finish()
    stats = dec.stats()
    assert stats["frames"] == 480 and stats["dropped_frames"] == 0 and stats["dropped_samples"] == 0
    assert stats["peak_buffered_frames"] <= stats["capacity_frames"] == 12
    assert stats["peak_buffered_samples"] <= stats["capacity_samples"] == 48000
    assert len(windows) == expected_windows(120.0) and not any(w.lost for w in windows)
    assert all(len(w.frames) == 8 and len(w.audio) == 32000 for w in windows)


def test_live_source_drops_are_counted_not_silent():
    """A live source that outruns the consumer: the oldest data is dropped, each affected window is
    reported `lost`, and lost + complete windows account for the whole stream."""
    with _decoder(LAVFI.format(d=30), 4.0, live=True) as dec:
        windows = []
        for w in dec.windows(WINDOW, HOP):
            if not windows:                      # a stalled consumer: the source runs on to its end
                deadline = time.time() + 120
                while not dec.video.eof and time.time() < deadline:
                    time.sleep(0.05)
            windows.append(w)
        dec.finish()
    stats = dec.stats()
    lost = [w for w in windows if w.lost]
    assert stats["dropped_frames"] > 0 and lost
    assert stats["peak_buffered_frames"] <= stats["capacity_frames"]
    assert [w.index for w in windows] == list(range(expected_windows(30.0)))     # none missing from the output
    assert all(len(w.frames) == 8 and len(w.audio) == 32000 for w in windows if not w.lost)


def test_media_settings_come_from_the_checkpoint_then_the_build_config(tmp_path):
    from avemo.inference.predict import load_predict_config
    meta = {"n_mels": 64, "build": {"decode": {"fps": 3.0, "frame_size": 480}, "shards": {"max_clips": 5}}}
    cfg = load_predict_config(meta, None, {"window_s": 3.0}, [])
    assert (cfg.decode.fps, cfg.decode.frame_size, cfg.window_s) == (3.0, 480, 3.0)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("build:\n  decode: {fps: 2.0}\n  face: {batch_frames: 64}\n  dask: {workers: 9}\n"
                         "predict:\n  hop_s: 1.0\n")
    cfg = load_predict_config(meta, str(yaml_file), {}, ["face.score_threshold=0.9"])
    assert (cfg.decode.fps, cfg.decode.frame_size, cfg.face.batch_frames, cfg.hop_s) == (2.0, 480, 64, 1.0)
    assert cfg.face.score_threshold == 0.9


def test_speaking_probability_weighs_lip_sync_as_the_models_build_did(tmp_path):
    """predict's sync_weight follows the checkpoint's build face.asd_sync_weight (its shards' speaker choice)
    unless the user sets it: in predict's --config section or as a key=value."""
    from avemo.inference.predict import load_predict_config
    meta = {"n_mels": 64, "build": {"face": {"asd_sync_weight": 0.0}}}
    assert load_predict_config(meta, None, {}, []).sync_weight == 0.0
    assert load_predict_config({"n_mels": 64}, None, {}, []).sync_weight == 2.0        # the default build's
    assert load_predict_config(meta, None, {}, ["sync_weight=3.5"]).sync_weight == 3.5
    assert load_predict_config(meta, None, {}, ["face.asd_sync_weight=1.5"]).sync_weight == 1.5
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("predict:\n  sync_weight: 4.0\n")
    assert load_predict_config(meta, str(yaml_file), {}, []).sync_weight == 4.0
    # an asd build from before face.asd_sync_weight existed chose its speakers without lip sync
    legacy = {"n_mels": 64, "build": {"face": {"speaker": "asd"}}}
    assert load_predict_config(legacy, None, {}, []).sync_weight == 0.0
    assert load_predict_config(legacy, None, {}, ["face.asd_sync_weight=1"]).sync_weight == 1.0
    assert load_predict_config({"n_mels": 64, "build": {"face": {"speaker": "score"}}}, None, {}, []).sync_weight == 2.0
