"""Decode a video file or a live stream incrementally with ONE ffmpeg process (the command of
pipeline/decode.py, unbounded) and cut it into sliding windows through a bounded buffer.

Frames (decode.fps, detector size) arrive on stdout and 16 kHz mono f32 audio on a pass_fds pipe; two
reader threads fill a buffer indexed by absolute position (frame i is at i / fps, sample n at n / rate),
so windows stay aligned even when data is dropped. Files, pipes and lavfi sources block the decoder when
the buffer is full (nothing is lost). Live sources (devices, network URLs, --realtime) never block the
source: the oldest data is dropped, and every window that lost data comes out as `lost`, to be counted.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import ffmpeg
import numpy as np

from avemo.core.errors import DataError
from avemo.pipeline.config import AudioConfig, DecodeConfig, ProbeConfig
from avemo.pipeline.decode import DecodeError, DecodePlan, plan_decode, spawn_ffmpeg
from avemo.pipeline.media_list import VIDEO_EXTS
from avemo.pipeline.probe import (PROBE_ERRORS, ProbeResult, check_streams, ffmpeg_message, ffmpeg_source, probe_clip,
                            probe_failure, run_ffprobe)

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtp://", "udp://", "srt://", "tcp://", "/dev/")
PIPE_HEAD_BYTES = 1 << 20      # bytes of stdin read ahead to probe a pipe (doubled up to PIPE_HEAD_MAX)
PIPE_HEAD_MAX = 32 << 20
AUDIO_READ_BYTES = 1 << 14
# A stream counts as stalled (ffmpeg blocked writing the other, full one) once it has brought nothing new for
# this long; before that a full buffer on one side is only the other side arriving a little later
STALL_S = 0.5
PIPE_HINT = ("; over a pipe use a streaming container (ffmpeg ... -c copy -f mpegts -) or an mp4 "
             "with its moov atom first (-movflags +faststart)")


class InputError(DataError):
    """An input that cannot be used (missing file, nothing decodable); reported as one line."""


@dataclass
class Input:
    name: str                              # as the user wrote it: the "source" of every output line
    url: str                               # what ffmpeg opens
    options: dict = field(default_factory=dict)   # ffmpeg input options, e.g. {"f": "lavfi"}
    kind: str = "file"                     # file | pipe | lavfi | stream
    live: bool = False                     # never block the source; drop the oldest data when behind


def resolve_inputs(texts: list[str], realtime: bool = False) -> list[Input]:
    """Files, folders (their videos, sorted), `pipe:0`, `lavfi:GRAPH`, URLs and devices."""
    out: list[Input] = []
    for text in texts:
        if text.startswith("lavfi:"):
            out.append(Input(text, text[len("lavfi:"):], {"f": "lavfi"}, "lavfi"))
        elif text in ("-", "pipe:", "pipe:0"):
            out.append(Input(text, "pipe:0", {}, "pipe"))
        elif "://" in text or text.startswith("/dev/"):
            out.append(Input(text, text, {}, "stream", live=text.startswith(LIVE_PREFIXES)))
        elif Path(text).is_dir():
            videos = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
            if not videos:
                raise InputError(f"folder {text} holds no video files ({', '.join(sorted(VIDEO_EXTS))})")
            out += [Input(str(p), ffmpeg_source(p)) for p in videos]
        elif Path(text).is_file():
            out.append(Input(text, ffmpeg_source(text)))
        else:
            raise InputError(f"input {text!r} is not a file, a folder, pipe:0, lavfi:GRAPH, a URL or a device")
    if realtime:  # read at the native rate: a file or generator behaves like a live camera
        out = [dataclasses.replace(i, options={**i.options, "re": None}, live=True) for i in out]
    if sum(i.kind == "pipe" for i in out) > 1:
        raise InputError("stdin (pipe:0) can be read only once")
    return out


def _read_head(stream: BinaryIO, size: int, head: bytes) -> bytes:
    while len(head) < size:
        chunk = stream.read(size - len(head))
        if not chunk:
            break
        head += chunk
    return head


def probe_input(inp: Input, timeout_s: float = 60.0, stdin: BinaryIO | None = None) -> tuple[ProbeResult, bytes]:
    """ffprobe the input -> (result, head): for pipe:0, the bytes already read from stdin to probe it."""
    if inp.kind == "file":
        result = probe_clip(Path(inp.name), ProbeConfig(min_duration_s=0.0, max_duration_s=math.inf,
                                                        timeout_s=timeout_s), AudioConfig())
        return result, b""
    options = {k: v for k, v in inp.options.items() if k != "re"}   # -re (native rate) is ffmpeg's, not ffprobe's
    piped = inp.kind == "pipe"
    head, size = b"", PIPE_HEAD_BYTES
    while True:
        if piped:
            head = _read_head(stdin or sys.stdin.buffer, size, head)
        try:
            info = run_ffprobe(inp.url, timeout_s, options, head if piped else None)
        except ffmpeg.Error as exc:
            if piped and len(head) >= size and size < PIPE_HEAD_MAX:
                size *= 2  # the head was too short to find the streams: read more of stdin
                continue
            result = probe_failure(exc, timeout_s)
            if piped:
                result.detail += PIPE_HINT
            return result, head
        except PROBE_ERRORS as exc:
            return probe_failure(exc, timeout_s), head
        return check_streams(info), head   # duration_s: 0 (unknown) for live sources


def stream_plan(probe: ProbeResult, cfg: DecodeConfig) -> DecodePlan:
    """build-shards' plan (same detector size, rate, threads) at decode.fps, with no frame or audio limit."""
    return dataclasses.replace(plan_decode(probe, cfg), fps=cfg.fps, max_frames=0, max_audio_s=0.0)


class _Track:
    """One stream's data by absolute position: chunks covering [first, end), at most `capacity` positions."""

    def __init__(self, capacity: int, drop: bool, cond: threading.Condition, empty: np.ndarray):
        self.capacity, self.drop, self.cond, self.empty = capacity, drop, cond, empty
        self.chunks: deque[np.ndarray] = deque()
        self.first = self.end = 0
        self.eof = self.waiting = self.closed = False
        self.dropped = self.peak = 0
        self.last_push = self.waiting_since = time.perf_counter()
        self.stall_seen: float | None = None    # `other.last_push` when a stall was last seen (holds_up)

    @property
    def size(self) -> int:
        return self.end - self.first

    def push(self, chunk: np.ndarray) -> None:
        with self.cond:
            while not self.drop and not self.closed and self.chunks and self.size + len(chunk) > self.capacity:
                if not self.waiting:         # back-pressure: ffmpeg waits for us, nothing is lost
                    self.waiting, self.waiting_since = True, time.perf_counter()
                self.cond.notify_all()
                self.cond.wait()
            self.waiting = False
            while self.drop and self.chunks and self.size + len(chunk) > self.capacity:
                old = self.chunks.popleft()  # live source: lose the oldest data, counted
                self.first += len(old)
                self.dropped += len(old)
            self.chunks.append(chunk)
            self.end += len(chunk)
            self.peak = max(self.peak, self.size)
            self.last_push = time.perf_counter()
            self.cond.notify_all()

    def holds_up(self, other: "_Track", now: float) -> bool:
        """This track is full and waits to be read, and `other` has brought nothing new for STALL_S since it
        began to wait: ffmpeg is blocked writing this one and cannot write `other` (caller holds the lock).
        Once seen, the stall holds without a new wait until `other` brings something. (A file whose streams
        lie further apart than the buffer's slack, buffer_s - window_s, while the other still trickles in
        costs STALL_S per window: its windows are cut short; a larger buffer_s gives them whole.)"""
        if not self.waiting:
            return False
        if other.last_push == self.stall_seen:      # nothing from `other` since the stall was seen
            return True
        if now - max(self.waiting_since, other.last_push) >= STALL_S:
            self.stall_seen = other.last_push
            return True
        return False

    def finish(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def take(self, a: int, b: int) -> np.ndarray:
        """Positions [a, b) that are still held (caller holds the lock)."""
        parts, pos = [], self.first
        for chunk in self.chunks:
            lo, hi = max(a, pos), min(b, pos + len(chunk))
            if lo < hi:
                parts.append(chunk[lo - pos: hi - pos])
            pos += len(chunk)
        return np.concatenate(parts) if parts else self.empty.copy()

    def release(self, upto: int) -> None:
        """Forget positions before `upto` (caller holds the lock)."""
        while self.chunks and self.first < upto:
            head = self.chunks[0]
            cut = min(len(head), upto - self.first)
            if cut == len(head):
                self.chunks.popleft()
            else:
                self.chunks[0] = head[cut:]
            self.first += cut
        self.waiting = False   # there may be room now: a push that still finds none waits anew
        self.cond.notify_all()


@dataclass
class Window:
    index: int
    start: float                      # seconds from the start of the input
    end: float
    frame_ids: np.ndarray             # (n,) absolute indices of the sampled frames in [start, end)
    frames: np.ndarray                # (n, H, W, 3) uint8
    audio: np.ndarray | None          # (m,) float32; None when the input has no audio stream
    lost: bool = False                # its data was dropped (processing slower than the live source)
    wait_s: float = 0.0               # time spent waiting for the decoder


class StreamDecoder:
    """`with StreamDecoder(inp, plan, buffer_s) as dec: for w in dec.windows(2.0, 0.5): ...`"""

    def __init__(self, inp: Input, plan: DecodePlan, buffer_s: float = 10.0, head: bytes = b"",
                 stdin: BinaryIO | None = None, source_size: tuple[int, int] = (0, 0)):
        self.inp, self.plan, self.head, self.stdin = inp, plan, head, stdin
        self.source_size = source_size        # the input's frame size (width, height); (0, 0): unknown
        self.cond = threading.Condition()
        self.video = _Track(max(2, int(buffer_s * plan.fps)), inp.live, self.cond,
                            np.zeros((0, plan.height, plan.width, 3), dtype=np.uint8))
        self.audio = (_Track(int(buffer_s * plan.sample_rate), inp.live, self.cond, np.zeros(0, dtype=np.float32))
                      if plan.audio else None)
        self.first_error = ""
        self.errors: deque[str] = deque(maxlen=4)      # ffmpeg's last error lines (and its first one above)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> "StreamDecoder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "StreamDecoder":
        if self.proc is not None:   # already started (predict starts the first input early)
            return self
        piped = self.inp.kind == "pipe"
        self.proc, audio_r = spawn_ffmpeg(self.inp.url, self.plan, self.audio is not None, self.inp.options,
                                          stdin=subprocess.PIPE if piped else subprocess.DEVNULL)
        self.started = time.perf_counter()   # a live source's media time t arrives at about started + t
        targets: list[tuple[Callable[..., None], tuple]] = [(self._read_video, ()), (self._read_errors, ())]
        if audio_r is not None:
            targets.append((self._read_audio, (audio_r,)))
        if piped:
            targets.append((self._feed_stdin, ()))
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def close(self) -> None:
        with self.cond:
            for track in (self.video, self.audio):
                if track is not None:
                    track.closed = True
            self.cond.notify_all()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        for thread in self.threads:
            thread.join(timeout=5)

    def _read_video(self) -> None:
        size, p = self.plan.frame_bytes, self.plan
        try:
            while True:
                data = self.proc.stdout.read(size)
                if len(data) < size:
                    break
                self.video.push(np.frombuffer(data, dtype=np.uint8).reshape(1, p.height, p.width, 3))
        finally:
            self.video.finish()

    def _read_audio(self, fd: int) -> None:
        rest = b""
        try:
            with os.fdopen(fd, "rb") as fh:
                while chunk := fh.read1(AUDIO_READ_BYTES):
                    rest += chunk
                    whole = len(rest) // 4 * 4
                    if whole:
                        self.audio.push(np.frombuffer(rest[:whole], dtype=np.float32))
                        rest = rest[whole:]
        finally:
            self.audio.finish()

    def _read_errors(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                text = line.decode("utf-8", "replace").strip()[:300]
                self.first_error = self.first_error or text
                self.errors.append(text)

    def _feed_stdin(self) -> None:
        source = self.stdin or sys.stdin.buffer
        read = getattr(source, "read1", source.read)
        try:
            self.proc.stdin.write(self.head)
            while chunk := read(1 << 16):
                self.proc.stdin.write(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass  # ffmpeg stopped reading (it ended or failed: its error line says why)
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _ready(self, i1: int, a1: int, end: float) -> bool:
        """Window [.., end) can be cut: each stream covers it (all its frames are in, the audio reaches
        it), has ended, or can bring no more because ffmpeg is blocked writing the other one (that one's
        buffer is full and this one has stalled); and the input is known to be at least `end` long (else only
        the end of both streams decides). A full buffer alone is not enough: the other stream may only be
        arriving a little later (a busy machine), and cutting then gave a window short of frames or audio."""
        v, a, now = self.video, self.audio, time.perf_counter()
        video_done = v.eof or v.end >= i1 or (a is not None and a.holds_up(v, now))
        audio_done = a is None or a.eof or a.end >= a1 or v.holds_up(a, now)
        return video_done and audio_done and end <= self.duration() + 1e-6

    def windows(self, window_s: float, hop_s: float) -> Iterator[Window]:
        fps, rate = self.plan.fps, self.plan.sample_rate
        k = 0
        while True:
            start, end = k * hop_s, k * hop_s + window_s
            i0, i1 = math.ceil(start * fps - 1e-6), math.ceil(end * fps - 1e-6)
            a0, a1 = round(start * rate), round(end * rate)
            t0 = time.perf_counter()
            with self.cond:
                while not self._ready(i1, a1, end) and not self._ended():
                    self.cond.wait(timeout=STALL_S / 5)   # a stall is noticed by time, not by a notify
                wait_s = time.perf_counter() - t0
                if self._ended():
                    duration = self.duration()
                    if end > duration + 1e-6:
                        if k == 0 and self.video.end > 0:   # shorter than one window: one window over all of it
                            end, i1, a1 = duration, self.video.end, self.audio.end if self.audio else 0
                        else:
                            return
                lost = (i0 < self.video.first and i0 < self.video.end) or (
                    self.audio is not None and a0 < self.audio.first and a0 < self.audio.end)
                ids = np.arange(max(i0, self.video.first), min(i1, self.video.end))
                frames = self.video.take(i0, i1)
                audio = self.audio.take(a0, a1) if self.audio is not None else None
                nxt = (k + 1) * hop_s
                self.video.release(math.ceil(nxt * fps - 1e-6))
                if self.audio is not None:
                    self.audio.release(round(nxt * rate))
            if lost:
                yield Window(k, start, end, ids[:0], frames[:0], None if audio is None else audio[:0], True, wait_s)
            else:
                yield Window(k, start, end, ids, frames, audio, False, wait_s)
            if end < start + window_s:   # the short-input window was the only one
                return
            k += 1

    def _ended(self) -> bool:
        return self.video.eof and (self.audio is None or self.audio.eof)

    def duration(self) -> float:
        """Decoded length so far (final once both streams ended): the audio's when there is audio (exact;
        the fps filter rounds the frame count), never less than the last frame's time; else frames / fps."""
        frames = self.video.end / self.plan.fps
        if self.audio is None or self.audio.end == 0:
            return frames
        return max(self.audio.end / self.plan.sample_rate, frames - 1 / self.plan.fps)

    def finish(self) -> None:
        """After the windows: raise DecodeError when ffmpeg failed (its last error line)."""
        code = self.proc.wait() if self.proc is not None else 0
        for thread in self.threads:
            thread.join(timeout=5)
        if code != 0 or self.video.end == 0:
            message = ffmpeg_message([self.first_error, *self.errors]) if self.errors else f"ffmpeg exited with {code}"
            if self.video.end == 0:
                message = "no video frame could be decoded: " + message
            if self.inp.kind == "pipe":
                message += PIPE_HINT
            raise DecodeError(message)

    def stats(self) -> dict:
        tracks = {"frames": self.video, "samples": self.audio}
        out = {}
        for name, t in tracks.items():
            if t is not None:
                out.update({name: t.end, f"dropped_{name}": t.dropped, f"peak_buffered_{name}": t.peak,
                            f"capacity_{name}": t.capacity})
        return out
