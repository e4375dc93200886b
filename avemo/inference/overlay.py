"""`avemo predict --overlay OUT.mp4`: the input video with each window's answer drawn on it.

With --speakers every person's box, their label and their speaking probability; the window's speaker in green, the
others in white. Without it, the window's label only. A second pass over the file once predict is done: one
ffmpeg process decodes it at OVERLAY_FPS, Pillow draws on each frame, a second ffmpeg encodes (H.264) and
copies the input's audio. Frames stream through (bounded memory); the file appears only when it is complete.
"""
from __future__ import annotations

import bisect
import contextlib
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np

from avemo.core.errors import ConfigError, DataError

OVERLAY_FPS = 25.0
SUFFIXES = (".mp4", ".mkv", ".mov")
SPEAKER_RGB = (0, 220, 0)
OTHER_RGB = (255, 255, 255)
TIMEOUT_S = 3600.0


class OverlayError(DataError):
    """The overlay could not be written (one line: ffmpeg's reason)."""


def check_overlay_path(path: str) -> None:
    """Refuse an output the encoder would not write, before any work."""
    from avemo.core.paths import writable_dir
    if Path(path).suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--overlay {path}: the video must end in {', '.join(SUFFIXES)}")
    writable_dir(Path(path).parent, "--overlay's folder")


class _Frames:
    """records -> the one to draw at time t: the window whose centre is nearest (dropped windows skipped)."""

    def __init__(self, records: list[dict]):
        rows = sorted((r for r in records if r.get("probs") is not None or r.get("faces")),
                      key=lambda r: (r["start"] + r["end"]) / 2)
        self.rows = rows
        self.centres = [(r["start"] + r["end"]) / 2 for r in rows]

    def at(self, t: float) -> dict | None:
        if not self.rows:
            return None
        i = bisect.bisect_left(self.centres, t)
        near = [j for j in (i - 1, i) if 0 <= j < len(self.rows)]
        j = min(near, key=lambda k: abs(self.centres[k] - t))
        row = self.rows[j]
        return row if row["start"] - 0.5 <= t <= row["end"] + 0.5 else None


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)          # Pillow >= 10.1 with FreeType: scalable
    except TypeError:
        return ImageFont.load_default()


def _tag(draw, xy: tuple[float, float], text: str, font, rgb: tuple[int, int, int]) -> None:
    """Text on a dark box whose top-left is xy."""
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
    draw.rectangle((x0 - 3, y0 - 2, x1 + 3, y1 + 2), fill=(0, 0, 0))
    draw.text(xy, text, font=font, fill=rgb)


def _pct(probs: dict | None, label: str | None) -> str:
    return f" {probs[label]:.0%}" if probs and label in probs else ""


def draw_frame(image, record: dict | None, t: float, scale: tuple[float, float], font) -> None:
    """Draw one window's answer on `image` (PIL, RGB, in place); boxes are in input pixels x `scale`."""
    from PIL import ImageDraw
    draw = ImageDraw.Draw(image)
    width = max(2, round(image.width / 240))
    if record is None:
        _tag(draw, (6, 6), f"{t:6.2f} s", font, OTHER_RGB)
        return
    speaker = record.get("speaker")
    for face in record.get("faces") or []:
        rgb = SPEAKER_RGB if speaker is not None and face["track"] == speaker else OTHER_RGB
        x0, y0, x1, y1 = (v * s for v, s in zip(face["box"], (*scale, *scale)))
        draw.rectangle((x0, y0, x1, y1), outline=rgb, width=2 * width if rgb == SPEAKER_RGB else width)
        text = f"{face['track']}: {face.get('label') or '-'}{_pct(face.get('probs'), face.get('label'))}"
        if face.get("speaking") is not None:
            text += f"  speaking {face['speaking']:.0%}"
        th = draw.textbbox((0, 0), text, font=font)[3] + 6
        _tag(draw, (x0 + 3, y0 - th if y0 - th >= 0 else y1 + 4), text, font, rgb)
    banner = f"{t:6.2f} s  {record.get('label') or 'no face, no audio'}{_pct(record.get('probs'), record.get('label'))}"
    if "faces" in record:
        banner += f"  speaker: {'person ' + str(speaker) if speaker is not None else 'nobody clearly'}"
    _tag(draw, (6, 6), banner, font, SPEAKER_RGB if speaker is not None else OTHER_RGB)


def write_overlay(source: str, records: list[dict], out: str | Path, timeout_s: float = TIMEOUT_S) -> int:
    """Draw `records` (predict's lines for `source`, a local video file) on it into `out`. -> frames written.
    Raises OverlayError with ffmpeg's last line if decoding or encoding fails; `out` is then untouched."""
    from PIL import Image

    from avemo.pipeline.config import AudioConfig, ProbeConfig
    from avemo.pipeline.probe import ffmpeg_source, probe_clip
    probe = probe_clip(Path(source), ProbeConfig(max_duration_s=1e9), AudioConfig())
    if not probe.ok or probe.kind != "video":
        raise OverlayError(f"{source}: {probe.reason or 'not a video'}: {probe.detail}")
    w, h = probe.width - probe.width % 2, probe.height - probe.height % 2   # H.264 4:2:0 needs even sizes
    scale = (w / probe.width, h / probe.height)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{out.suffix}")
    src = ffmpeg_source(source)
    frames = _Frames([r for r in records if r.get("source") == source])
    font = _font(max(12, h // 28))
    size, n = w * h * 3, 0
    # ffmpeg's messages go to files: a pipe nobody reads while frames stream could fill and block it
    with tempfile.TemporaryFile() as reader_err, tempfile.TemporaryFile() as writer_err:
        reader = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", src, "-map", "0:v:0", "-vf",
             f"fps={OVERLAY_FPS},scale={w}:{h},setsar=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
            stdout=subprocess.PIPE, stderr=reader_err)
        # the audio is padded with silence and cut at the video's end: the video is never shortened
        writer = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
             "-r", str(OVERLAY_FPS), "-i", "pipe:0", "-i", src, "-map", "0:v", "-map", "1:a:0?", "-c:v", "libx264",
             "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-af", "apad", "-shortest",
             "-movflags", "+faststart", str(tmp)], stdin=subprocess.PIPE, stderr=writer_err)

        def last_line(fh) -> str:
            fh.seek(0)
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else ""

        try:
            assert reader.stdout is not None and writer.stdin is not None
            broken = False
            while True:
                buf = reader.stdout.read(size)
                if len(buf) < size:
                    break
                t = n / OVERLAY_FPS
                image = Image.fromarray(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
                draw_frame(image, frames.at(t), t, scale, font)
                try:
                    writer.stdin.write(image.tobytes())
                except BrokenPipeError:          # the encoder stopped: its own error says why
                    broken = True
                    break
                n += 1
            if broken:
                reader.kill()
            with contextlib.suppress(BrokenPipeError):
                writer.stdin.close()
            try:
                reader.wait(timeout=timeout_s)
                writer.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise OverlayError(f"{source}: ffmpeg did not finish the overlay within {timeout_s:.0f} s") from None
            if writer.returncode != 0 or broken:
                raise OverlayError(f"{source}: encoding the overlay failed: {last_line(writer_err) or 'ffmpeg stopped'}")
            if reader.returncode != 0 or n == 0:
                raise OverlayError(f"{source}: decoding the overlay failed: {last_line(reader_err) or 'no frames'}")
            os.replace(tmp, out)
        finally:
            for proc in (reader, writer):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdout, proc.stdin):
                    if stream is not None:
                        with contextlib.suppress(OSError, BrokenPipeError):
                            stream.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return n
