"""The streaming decoder's two bounded buffers (video frames, audio samples) cut a window when both streams
cover it. These tests feed the buffers from threads, as ffmpeg's reader threads do, with the timings that
matter: a stream that arrives a little later than the other (the window waits for it) and ffmpeg blocked on
the full buffer of one stream (the other can bring no more: the window is cut short rather than hang).
Pure logic: no ffmpeg, no ../shared."""
from __future__ import annotations

import threading
import time

import numpy as np


from avemo.inference.stream import STALL_S, Input, StreamDecoder
from avemo.pipeline.decode import DecodePlan

FPS, RATE, BUFFER_S, WINDOW, HOP, SECONDS = 4, 16000, 3.0, 2.0, 0.5, 6


def _decoder() -> StreamDecoder:
    plan = DecodePlan(fps=FPS, max_frames=0, width=8, height=6, audio=True, sample_rate=RATE, max_audio_s=0.0,
                      threads=1)
    return StreamDecoder(Input("t", "t", {}, "file"), plan, BUFFER_S)


def _frame(i: int) -> np.ndarray:
    return np.full((1, 6, 8, 3), i % 256, dtype=np.uint8)


def _audio(t0: float, t1: float) -> np.ndarray:
    return np.arange(round(t0 * RATE), round(t1 * RATE), dtype=np.float32)


def _windows(dec: StreamDecoder, producers: list, timeout: float = 60.0) -> list:
    threads = [threading.Thread(target=p, daemon=True) for p in producers]
    for t in threads:
        t.start()
    out: list = []
    consumer = threading.Thread(target=lambda: out.extend(dec.windows(WINDOW, HOP)), daemon=True)
    consumer.start()
    consumer.join(timeout)
    assert not consumer.is_alive(), f"no end of the windows after {timeout} s: the decoder hangs"
    for t in threads:
        t.join(5)
    return out


def test_a_stream_that_arrives_later_is_waited_for_not_cut():
    """The audio fills its buffer at once (it is full, waiting) while the frames come one every 0.1 s, well
    inside STALL_S: every window still gets all its 8 frames and 2 s of audio (a full buffer on one side
    used to cut the window at once, short of frames: a flaky test on a busy CI machine)."""
    dec = _decoder()

    def audio():
        for k in range(SECONDS * 4):
            dec.audio.push(_audio(k / 4, (k + 1) / 4))
        dec.audio.finish()

    def video():
        for i in range(SECONDS * FPS):
            time.sleep(0.1)
            dec.video.push(_frame(i))
        dec.video.finish()
    windows = _windows(dec, [audio, video])
    assert len(windows) == (SECONDS - WINDOW) / HOP + 1
    for w in windows:
        first = round(w.start * FPS)
        assert not w.lost and w.frame_ids.tolist() == list(range(first, first + 8))
        assert [int(f[0, 0, 0]) for f in w.frames] == w.frame_ids.tolist()
        assert np.array_equal(w.audio, _audio(w.start, w.end))


def test_ffmpeg_blocked_on_a_full_buffer_cuts_windows_short_instead_of_hanging():
    """One producer in file order, as ffmpeg writes a file whose audio runs 2 s ahead of its video: it blocks
    once the audio buffer is full, so the frames a window needs cannot come until the window is cut. The
    decoder cuts it after STALL_S without new frames, with the frames it has, and goes on to the end: all
    windows, all their audio, no hang."""
    dec = _decoder()
    lead = 2.0

    def ffmpeg_like():
        frame = 0
        for k in range(SECONDS * 4):
            t = (k + 1) / 4
            dec.audio.push(_audio(k / 4, t))                 # blocks while the audio buffer is full
            while frame < (t - lead) * FPS:
                dec.video.push(_frame(frame))
                frame += 1
        dec.audio.finish()
        while frame < SECONDS * FPS:
            dec.video.push(_frame(frame))
            frame += 1
        dec.video.finish()
    windows = _windows(dec, [ffmpeg_like])
    assert len(windows) == (SECONDS - WINDOW) / HOP + 1
    short = [w for w in windows if len(w.frames) < 8]
    assert len(short) >= 3 and not any(w.lost for w in windows)   # cut short, not lost: nothing was dropped
    for w in windows:
        first = round(w.start * FPS)
        assert np.array_equal(w.audio, _audio(w.start, w.end))
        assert w.frame_ids.tolist() == list(range(first, first + len(w.frames)))    # the window's first frames
        assert [int(f[0, 0, 0]) for f in w.frames] == w.frame_ids.tolist()
    # each short window was cut only after the frames stalled, and holds what had come by then (a full buffer
    # alone cut at once: a window with no frames while they were on their way)
    assert all(len(w.frames) >= 2 for w in short)


def test_a_stream_that_brings_nothing_more_is_not_waited_for_at_every_window():
    """The frames stop (two, then nothing until the audio is through, as when ffmpeg is blocked on the audio
    for good): the stall is seen once, after STALL_S, and the windows after it are cut without a new wait
    each; all of them come out with all their audio."""
    dec = _decoder()

    def ffmpeg_like():
        dec.video.push(_frame(0))
        dec.video.push(_frame(1))
        for k in range(SECONDS * 4):
            dec.audio.push(_audio(k / 4, (k + 1) / 4))              # blocks while the audio buffer is full
        dec.audio.finish()
        dec.video.finish()
    t0 = time.perf_counter()
    windows = _windows(dec, [ffmpeg_like])
    took = time.perf_counter() - t0
    assert len(windows) == (SECONDS - WINDOW) / HOP + 1
    assert all(np.array_equal(w.audio, _audio(w.start, w.end)) for w in windows)
    assert windows[0].frame_ids.tolist() == [0, 1] and not any(len(w.frames) for w in windows[1:])
    assert STALL_S * 0.9 <= took < STALL_S * 3       # one wait for the stall, not one per window (9 windows)
    stats = dec.stats()
    assert stats["dropped_frames"] == stats["dropped_samples"] == 0
    assert stats["peak_buffered_samples"] <= stats["capacity_samples"]
