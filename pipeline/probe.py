"""ffprobe a clip and decide, with a reason code, whether it can be used."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import ffmpeg

from avemo.core.errors import DataError
from avemo.pipeline.config import AudioConfig, ProbeConfig


@dataclass
class ProbeResult:
    ok: bool
    reason: str = ""
    detail: str = ""
    duration_s: float = 0.0
    width: int = 0                   # display size: rotation and pixel aspect applied
    height: int = 0
    has_audio: bool = False
    video_codec: str = ""
    kind: str = "video"              # video, audio (no video stream) or image (one still picture)
    reader: str = "ffmpeg"           # what decodes it: ffmpeg, or in this process pillow / soundfile (readers.py)

    def to_dict(self) -> dict:
        return asdict(self)


def safe_resolve(path: str | Path) -> Path:
    """Path.resolve, or the absolute path when links loop (resolve raises then): the file check of
    probe_clip gives that clip its reason instead of one link stopping the whole build."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def ffmpeg_source(path: str | Path) -> str:
    """Local files go through the `file:` protocol so a name can never be read as an option or URL."""
    text = str(path)
    if "://" in text or text.startswith(("pipe:", "file:")) or text.startswith("/dev/"):
        return text
    return "file:" + str(safe_resolve(text))


# What a local media file may be, by ffprobe's format_name (the demuxer it picked from the bytes, whatever the
# name says). Playlists and manifests (hls, dash, concat, sdp, ...) open OTHER files or URLs named inside
# them: a clip must be its own media, so anything not listed here is `unsupported_container`.
ALLOWED_CONTAINERS = frozenset({
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "mpeg", "mpegvideo", "flv",
    "asf", "ogg", "wav", "w64", "mp3", "flac", "aac", "ac3", "eac3", "aiff", "caf", "amr", "wv", "ape", "au",
    "h264", "hevc", "m4v", "dv", "gif", "nut", "rm", "image2",
})
PROTOCOLS = "file,pipe"   # -protocol_whitelist for local inputs: no network, no subfile/concat/crypto indirection


def container_problem(info: dict) -> str:
    """'' when ffprobe's format_name is an allowed container (or a still picture, `*_pipe`), else the detail."""
    fmt = str((info.get("format") or {}).get("format_name", "")) if isinstance(info, dict) else ""
    names = [n for n in fmt.split(",") if n]
    if names and all(n in ALLOWED_CONTAINERS or n.endswith(IMAGE_FORMAT_SUFFIX) for n in names):
        return ""
    return f"container {fmt[:60]!r} is not a media file (playlists, manifests and protocol indirection are refused)"


def file_problem(path: Path) -> ProbeResult | None:
    """A regular, non-empty file, checked without opening it (opening a FIFO for reading would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ProbeResult(False, "missing_file", f"no file {path}")
    except OSError as exc:
        what = "a symlink loop" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror})"
        return ProbeResult(False, "not_a_file", f"{path} is {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        return ProbeResult(False, "not_a_file", f"{path} is {kind}, not a regular file")
    if st.st_size == 0:
        return ProbeResult(False, "empty_file", f"{path} has 0 bytes")
    return None


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            try:
                return int(round(float(side["rotation"])))
            except (TypeError, ValueError):
                pass
    try:
        return int(stream.get("tags", {}).get("rotate", 0))
    except (TypeError, ValueError):
        return 0


def display_size(stream: dict) -> tuple[int, int]:
    w, h = int(stream.get("width") or 0), int(stream.get("height") or 0)
    sar = stream.get("sample_aspect_ratio", "1:1")
    try:
        num, den = (int(x) for x in sar.split(":"))
        if num > 0 and den > 0 and num != den:
            w = int(round(w * num / den))
    except (ValueError, AttributeError):
        pass
    if abs(_rotation(stream)) % 180 == 90:
        w, h = h, w
    return w, h


def _duration(info: dict, video: dict) -> float:
    for value in (info.get("format", {}).get("duration"), video.get("duration")):
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            pass
    return 0.0


_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")  # "[h264 @ 0x55d0...]": a pointer, different on every run


def ffmpeg_message(lines: list[str]) -> str:
    """One line from ffmpeg's stderr: the last error, plus the first when it differs (the last is often
    generic, e.g. "Invalid data found", while the first names the cause, e.g. "moov atom not found")."""
    lines = [_ADDRESS.sub("", line).strip() for line in lines if line.strip()]
    if not lines:
        return "no message"
    text = lines[-1] if lines[0] == lines[-1] else f"{lines[-1]} (first error: {lines[0]})"
    return text[:300]


class PictureTooLarge(DataError):
    """ffprobe refused a picture or frame past its -max_pixels (it prints the size and gives 0x0)."""

    def __init__(self, width: int, height: int, limit: int):
        super().__init__(f"picture {width}x{height} ({width * height / 1e6:.1f} MP) has more than "
                         f"probe.max_pixels={limit} pixels; refused before decoding")


PROBE_ERRORS = (ffmpeg.Error, subprocess.TimeoutExpired, json.JSONDecodeError, PictureTooLarge)   # run_ffprobe's
_PIXEL_LIMIT = re.compile(rb"Picture size (\d+)x(\d+) exceeds specified max pixel count (\d+)")


def run_ffprobe(source: str, timeout_s: float, options: dict | None = None, stdin: bytes | None = None) -> dict:
    """ffprobe's format and streams as a dict; raises one of PROBE_ERRORS. `options`: input flags before the
    source, e.g. {"f": "lavfi"} (a None value is a bare flag); `stdin`: the bytes a `pipe:0` source reads."""
    # ffmpeg.probe() has no timeout; same argument list, with one (a list, never a shell string)
    flags = [x for k, v in (options or {}).items() for x in ([f"-{k}"] if v is None else [f"-{k}", str(v)])]
    if source.startswith("file:"):
        flags = ["-protocol_whitelist", PROTOCOLS, *flags]
    args = ["ffprobe", "-v", "error", *flags, "-show_format", "-show_streams", "-of", "json", source]
    feed: dict = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False, **feed)
    if proc.returncode != 0:
        raise ffmpeg.Error("ffprobe", proc.stdout, proc.stderr)
    too_large = _PIXEL_LIMIT.search(proc.stderr or b"")
    if too_large:   # options={"max_pixels": N}: the decoder stopped at the header, before allocating the picture
        raise PictureTooLarge(*(int(x) for x in too_large.groups()))
    return json.loads(proc.stdout.decode("utf-8", "replace"))


def probe_failure(exc: BaseException, timeout_s: float) -> ProbeResult:
    """The unreadable_container result for an error of PROBE_ERRORS."""
    if isinstance(exc, subprocess.TimeoutExpired):
        return ProbeResult(False, "unreadable_container", f"ffprobe timed out after {timeout_s:.0f} s")
    if isinstance(exc, json.JSONDecodeError):
        return ProbeResult(False, "unreadable_container", "ffprobe printed no JSON")
    if isinstance(exc, PictureTooLarge):
        return ProbeResult(False, "too_large", str(exc))
    stderr = getattr(exc, "stderr", None) or b""
    return ProbeResult(False, "unreadable_container", ffmpeg_message(stderr.decode("utf-8", "replace").splitlines()))


# ffprobe format names of still pictures (image2 is a numbered sequence or one file of a known extension)
IMAGE_FORMATS = ("image2",)
IMAGE_FORMAT_SUFFIX = "_pipe"   # png_pipe, jpeg_pipe, webp_pipe, bmp_pipe, tiff_pipe ...


def check_streams(info: dict, any_kind: bool = False) -> ProbeResult:
    """ffprobe's output -> the usable video stream (a cover picture is not one) and whether there is audio:
    ok, or no_video_stream / unreadable_container (no frame size: nothing to scale or crop). duration_s is
    0 when unknown (a live stream); what durations are acceptable is the caller's policy.
    any_kind (media lists): a file with audio but no video stream is an ok `audio` result, a still picture
    an `image` one; without it (MELD) every file must be a video."""
    streams = info.get("streams", []) if isinstance(info, dict) else []
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if video is None and any_kind and has_audio:
        return ProbeResult(True, duration_s=_duration(info, {}), has_audio=True, kind="audio")
    if video is None:
        return ProbeResult(False, "no_video_stream", f"streams: {[s.get('codec_type') for s in streams]}")
    fmt = str(info.get("format", {}).get("format_name", ""))
    kind = "image" if any_kind and (fmt in IMAGE_FORMATS or fmt.endswith(IMAGE_FORMAT_SUFFIX)) else "video"
    width, height = display_size(video)
    if width <= 0 or height <= 0:
        return ProbeResult(False, "unreadable_container", f"video stream has size {width}x{height}")
    if kind == "image":   # one frame, no time: the duration checks do not apply
        return ProbeResult(True, width=width, height=height, video_codec=str(video.get("codec_name", "")),
                           kind="image")
    return ProbeResult(True, duration_s=_duration(info, video), width=width, height=height,
                       has_audio=has_audio, video_codec=str(video.get("codec_name", "")))


def probe_clip(path: Path | None, cfg: ProbeConfig, audio: AudioConfig, any_kind: bool = False) -> ProbeResult:
    """any_kind: a row of a media list, which may be a video, an audio file or an image (check_streams)."""
    if path is None:
        return ProbeResult(False, "missing_file", "no file for this row")
    problem = file_problem(Path(path))
    if problem is not None:
        return problem
    try:
        info = run_ffprobe(ffmpeg_source(path), cfg.timeout_s, {"max_pixels": cfg.max_pixels})
    except PROBE_ERRORS as exc:
        return probe_failure(exc, cfg.timeout_s)
    container = container_problem(info)
    if container:
        return ProbeResult(False, "unsupported_container", container)
    result = check_streams(info, any_kind)
    if not result.ok or result.kind == "image":
        return result
    return check_duration(result, cfg, audio)


def check_duration(result: ProbeResult, cfg: ProbeConfig, audio: AudioConfig) -> ProbeResult:
    """An ok video or audio result -> rejected when its duration (or missing audio) breaks the policy."""
    duration = result.duration_s
    if duration <= 0:
        result.ok, result.reason, result.detail = False, "zero_duration", "duration is 0 or unknown"
    elif duration < cfg.min_duration_s:
        result.ok, result.reason = False, "too_short"
        result.detail = f"{duration:.3f} s < probe.min_duration_s={cfg.min_duration_s}"
    elif duration > cfg.max_duration_s:
        result.ok, result.reason = False, "too_long"
        result.detail = f"{duration:.1f} s > probe.max_duration_s={cfg.max_duration_s}"
    elif not result.has_audio and audio.missing == "reject" and result.kind == "video":
        result.ok, result.reason, result.detail = False, "no_audio_stream", "no audio stream in the file"
    return result
