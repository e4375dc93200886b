"""Decode a clip ONCE with one ffmpeg process: sampled RGB frames on stdout, 16 kHz mono audio on a pipe.

The command is built with ffmpeg-python and run as an argument list (never a shell string). ffmpeg
autorotates by rotation metadata; the probe's display size (rotation and pixel aspect applied) fixes the
output size, so raw frames parse exactly.
"""
from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass

import ffmpeg
import numpy as np

from avemo.core.errors import DataError
from avemo.pipeline.config import DecodeConfig
from avemo.pipeline.probe import PROTOCOLS, ProbeResult, ffmpeg_message


class DecodeError(DataError):
    pass


@dataclass(frozen=True)
class DecodePlan:
    fps: float          # effective sampling rate: min(cfg.fps, max_frames / duration)
    max_frames: int
    width: int          # size of the frames handed to the detector
    height: int
    audio: bool
    sample_rate: int
    max_audio_s: float
    threads: int
    video: bool = True  # False: an audio file, nothing but its audio is decoded
    still: bool = False  # an image: its one frame, no frame-rate sampling (ffmpeg's fps filter drops it)
    start_s: float = 0.0  # decode from here (a media list's `start`) ...
    window_s: float = 0.0  # ... for this long (its `end` - `start`); 0 = to the end

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def plan_decode(probe: ProbeResult, cfg: DecodeConfig, start_s: float = 0.0, window_s: float = 0.0) -> DecodePlan:
    """start_s/window_s: a part of the file (probe.duration_s is then that part's length, see shard_task)."""
    duration = max(probe.duration_s, 1e-3)
    scale = min(1.0, cfg.frame_size / max(probe.width, probe.height, 1))
    still = probe.kind == "image"
    return DecodePlan(
        fps=min(cfg.fps, cfg.max_frames / duration), max_frames=1 if still else cfg.max_frames,
        width=_even(probe.width * scale), height=_even(probe.height * scale),
        audio=probe.has_audio, sample_rate=cfg.sample_rate, max_audio_s=cfg.max_audio_s,
        threads=cfg.ffmpeg_threads, video=probe.kind != "audio", still=still,
        start_s=0.0 if still else start_s, window_s=0.0 if still else window_s,
    )


def ffmpeg_command(source: str, plan: DecodePlan, audio_fd: int | None,
                   input_options: dict | None = None) -> list[str]:
    """input_options: extra input flags, e.g. {"f": "lavfi"} or {"re": None} (pipeline/stream.py).
    plan.max_frames <= 0 / plan.max_audio_s <= 0 mean no limit (a stream decoded to its end)."""
    # microseconds, ffmpeg's time base: 3 decimals made a 0.3 ms part `-t 0.000`, which is the whole file
    window = {"ss": f"{plan.start_s:.6f}"} if plan.start_s > 0 else {}
    if plan.window_s > 0:
        window["t"] = f"{plan.window_s:.6f}"
    if source.startswith("file:"):   # a local file reads nothing but itself (probe.PROTOCOLS)
        window["protocol_whitelist"] = PROTOCOLS
    stream = ffmpeg.input(source, threads=plan.threads, **window, **(input_options or {}))
    outputs = []
    if plan.video:
        video = stream["v:0"] if plan.still else stream["v:0"].filter("fps", fps=f"{plan.fps:.6f}")
        video = video.filter("scale", plan.width, plan.height, flags="bilinear")
        limit = {"frames:v": plan.max_frames} if plan.max_frames > 0 else {}
        outputs.append(ffmpeg.output(video, "pipe:1", format="rawvideo", pix_fmt="rgb24", **limit))
    if audio_fd is not None:
        # pad a late-starting audio track with silence so sample 0 is at t=0, aligned with the frames
        audio = stream["a:0"].filter("aresample", **{"async": 1, "first_pts": 0})
        audio_limit = {"t": f"{plan.max_audio_s:.3f}"} if plan.max_audio_s > 0 else {}
        outputs.append(ffmpeg.output(audio, f"pipe:{audio_fd}", format="f32le", ac=1,
                                     ar=plan.sample_rate, **audio_limit))
    args = ffmpeg.merge_outputs(*outputs).get_args()
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *args]


@dataclass
class Decoded:
    frames: np.ndarray          # (T, H, W, 3) uint8; (0, 0, 0, 3) for an audio file
    times: np.ndarray           # (T,) float32 seconds of each sampled frame
    audio: np.ndarray | None    # (N,) float32 in [-1, 1] at plan.sample_rate; None without an audio stream


def _read_all(fd: int, sink: list) -> None:
    with os.fdopen(fd, "rb") as fh:
        sink.append(fh.read())


def spawn_ffmpeg(source: str, plan: DecodePlan, with_audio: bool, input_options: dict | None = None,
                 stdin: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, int | None]:
    """Start the one ffmpeg process of ffmpeg_command: frames on its stdout, audio (with_audio) on a pipe
    whose read end is returned (the caller reads and closes it). Raises DecodeError if it cannot start."""
    audio_r = audio_w = None
    if with_audio:
        audio_r, audio_w = os.pipe()
    cmd = ffmpeg_command(source, plan, audio_w, input_options)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                                pass_fds=(audio_w,) if audio_w is not None else ())
    except OSError as exc:
        for fd in (audio_r, audio_w):
            if fd is not None:
                os.close(fd)
        raise DecodeError(f"cannot start ffmpeg: {exc}") from None
    if audio_w is not None:
        os.close(audio_w)
    return proc, audio_r


def decode_clip(source: str, plan: DecodePlan, timeout_s: float = 300.0) -> Decoded:
    """Run ffmpeg once; raises DecodeError with ffmpeg's last error line."""
    proc, audio_r = spawn_ffmpeg(source, plan, plan.audio)
    audio_chunks: list[bytes] = []
    reader = None
    if audio_r is not None:
        reader = threading.Thread(target=_read_all, args=(audio_r, audio_chunks), daemon=True)
        reader.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DecodeError(f"ffmpeg timed out after {timeout_s:.0f} s") from None
    finally:
        if reader is not None:
            reader.join(timeout=10)
    message = err.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0:
        raise DecodeError(ffmpeg_message(message) if message else f"ffmpeg exited with {proc.returncode}")
    if not plan.video:
        raw = b"".join(audio_chunks)
        samples = np.frombuffer(raw[: len(raw) // 4 * 4], dtype=np.float32).copy()
        if samples.size == 0:
            raise DecodeError("no audio could be decoded" + (f": {ffmpeg_message(message)}" if message else ""))
        return Decoded(frames=np.zeros((0, 0, 0, 3), np.uint8), times=np.zeros(0, np.float32), audio=samples)
    n = len(out) // plan.frame_bytes
    if n == 0:
        raise DecodeError("no video frame could be decoded" + (f": {ffmpeg_message(message)}" if message else ""))
    frames = np.frombuffer(bytearray(out), dtype=np.uint8, count=n * plan.frame_bytes).reshape(n, plan.height, plan.width, 3)
    audio = None
    if plan.audio:
        raw = b"".join(audio_chunks)
        audio = np.frombuffer(raw[: len(raw) // 4 * 4], dtype=np.float32).copy()
    times = (np.arange(n, dtype=np.float32) / np.float32(plan.fps)).astype(np.float32)
    return Decoded(frames=frames, times=times, audio=audio)
