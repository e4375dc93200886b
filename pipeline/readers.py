"""A media list's images and audio files probed and decoded in this process (`decode.in_process`).

ffprobe + ffmpeg cost two process starts per file, ~0.1-0.2 CPU-s: nothing next to a video clip's decode,
but most of a 48x48 FER face's build. Still pictures go through Pillow and PCM audio (wav, flac, aiff)
through soundfile instead; they give the ProbeResult and Decoded that ffprobe/ffmpeg give, from the same
DecodePlan, so the samples keep the contract of shards/format.py. Everything else, and every file these
libraries do not know or read differently (GIF, animations, 16-bit images, surround audio, mp3, video), goes
to ffprobe/ffmpeg as before. One difference on purpose: the EXIF orientation of a photo is applied (ffmpeg
5.1 ignores it, so a phone's portrait photo reached the detector on its side).
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avemo.pipeline.config import AudioConfig, ProbeConfig
from avemo.pipeline.decode import DecodeError, Decoded, DecodePlan, decode_clip
from avemo.pipeline.probe import (PictureTooLarge, ProbeResult, check_duration, ffmpeg_source, file_problem,
                                  probe_clip)

# Pillow formats that are one still picture (ffprobe's image2 / *_pipe); GIF is a video to ffprobe
PILLOW_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "PPM"})
# 8 bits per channel: Pillow's RGB conversion of these is ffmpeg's rgb24 (16-bit and float modes: ffmpeg)
PILLOW_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
EXIF_ORIENTATION = 0x0112
TRANSPOSED = frozenset({5, 6, 7, 8})     # orientations that swap width and height
# lossless PCM containers: soundfile's samples are ffmpeg's (lossy codecs differ in delay and padding)
SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF"})
SOUNDFILE_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})
STEREO_TO_MONO = np.float32(math.sqrt(0.5))   # ffmpeg's (swresample's) stereo -> mono matrix: (L + R) / sqrt(2)


def probe_image(path: Path, cfg: ProbeConfig) -> ProbeResult | None:
    """Pillow reads the header only. None: not a still picture Pillow reads like ffmpeg (ffprobe decides)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # probe.max_pixels decides
            with Image.open(path) as im:
                fmt, mode, (width, height) = im.format, im.mode, im.size
                frames = getattr(im, "n_frames", 1)
                orientation = im.getexif().get(EXIF_ORIENTATION, 1) if fmt in PILLOW_FORMATS else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    if fmt not in PILLOW_FORMATS or mode not in PILLOW_MODES or frames != 1:
        return None
    if width * height > cfg.max_pixels:   # a picture bomb: refused from its header, as ffprobe refuses it
        return ProbeResult(False, "too_large", str(PictureTooLarge(width, height, cfg.max_pixels)), kind="image",
                           reader="pillow")
    if width * height > Image.MAX_IMAGE_PIXELS:   # within probe.max_pixels but past Pillow's own limit
        return None
    if orientation in TRANSPOSED:
        width, height = height, width
    return ProbeResult(True, width=width, height=height, video_codec=fmt.lower(), kind="image", reader="pillow")


def decode_image(path: str, plan: DecodePlan) -> Decoded:
    """The picture upright (EXIF), RGB, at the plan's size: frames (1, H, W, 3) uint8, as ffmpeg's still."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format in ("JPEG", "MPO"):   # decode a big photo at a reduced DCT scale: far less work
                    turned = im.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED
                    im.draft("RGB", (plan.height, plan.width) if turned else (plan.width, plan.height))
                upright = ImageOps.exif_transpose(im)    # loads the pixels: a truncated file raises here
                rgb = upright.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"Pillow cannot decode the image: {exc}") from None
    if rgb.size != (plan.width, plan.height):
        rgb = rgb.resize((plan.width, plan.height), Image.Resampling.BILINEAR)
    frame = np.array(rgb, dtype=np.uint8)                                # (H, W, 3), writable
    return Decoded(frames=frame[None], times=np.zeros(1, np.float32), audio=None)


@functools.lru_cache(maxsize=1)
def _soundfile():
    """soundfile, or None when it is not installed (audio then goes to ffmpeg)."""
    try:
        import soundfile
    except (ImportError, OSError):   # OSError: the module is there but libsndfile is not
        return None
    return soundfile


def probe_audio(path: Path) -> ProbeResult | None:
    """None: not a mono/stereo PCM file soundfile reads (ffprobe decides)."""
    sf = _soundfile()
    if sf is None:
        return None
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError, TypeError):
        return None
    if (info.format not in SOUNDFILE_FORMATS or info.subtype not in SOUNDFILE_SUBTYPES
            or info.channels not in (1, 2) or info.samplerate <= 0):
        return None
    return ProbeResult(True, duration_s=info.frames / info.samplerate, has_audio=True, kind="audio",
                       reader="soundfile")


@functools.lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    import torchaudio
    return torchaudio.transforms.Resample(orig, new)


def read_audio(path: str, sample_rate: int, start_s: float = 0.0, seconds: float = math.inf) -> np.ndarray:
    """`seconds` of the file from `start_s`, mono, at `sample_rate`, float32 (N,): what the build decodes from
    an audio file (bench/prosody_probe.py and the tests read voices the same way)."""
    sf = _soundfile()
    if sf is None:
        raise DecodeError("soundfile (libsndfile) is not installed")
    try:
        with sf.SoundFile(path) as fh:
            rate = fh.samplerate
            fh.seek(min(int(round(start_s * rate)), fh.frames))
            data = fh.read(frames=-1 if math.isinf(seconds) else int(round(seconds * rate)), dtype="float32",
                           always_2d=True)                                                        # (N, C)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DecodeError(f"soundfile cannot decode the audio: {exc}") from None
    mono = data[:, 0] if data.shape[1] == 1 else (data[:, 0] + data[:, 1]) * STEREO_TO_MONO       # (N,)
    if mono.size == 0:
        raise DecodeError("no audio could be decoded")
    if rate != sample_rate:
        import torch
        with torch.inference_mode():
            mono = _resampler(rate, sample_rate)(torch.from_numpy(np.ascontiguousarray(mono))).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_audio(path: str, plan: DecodePlan) -> Decoded:
    """The plan's window of the file, mono, at plan.sample_rate, at most plan.max_audio_s: as ffmpeg's audio."""
    seconds = min(plan.window_s if plan.window_s > 0 else math.inf,
                  plan.max_audio_s if plan.max_audio_s > 0 else math.inf)
    return Decoded(frames=np.zeros((0, 0, 0, 3), np.uint8), times=np.zeros(0, np.float32),
                   audio=read_audio(path, plan.sample_rate, plan.start_s, seconds))


def probe_file(path: Path | None, cfg: ProbeConfig, audio: AudioConfig, any_kind: bool = False,
               in_process: bool = False) -> ProbeResult:
    """probe_clip, but a media list's picture or PCM audio file is read in this process (in_process)."""
    if in_process and any_kind and path is not None and file_problem(Path(path)) is None:
        result = probe_image(Path(path), cfg) or probe_audio(Path(path))
        if result is not None:
            return result if not result.ok or result.kind == "image" else check_duration(result, cfg, audio)
    return probe_clip(path, cfg, audio, any_kind)


DECODERS: dict[str, Callable[[str, DecodePlan], Decoded]] = {"pillow": decode_image, "soundfile": decode_audio}


def decode_file(path: str, reader: str, plan: DecodePlan, timeout_s: float) -> Decoded:
    """Decode with the reader that probed the file (ProbeResult.reader); raises DecodeError."""
    if reader in DECODERS:
        return DECODERS[reader](path, plan)
    return decode_clip(ffmpeg_source(path), plan, timeout_s)
