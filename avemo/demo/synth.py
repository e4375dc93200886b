"""Generate a small MELD-shaped dataset (the demo's embedded default, and test data).

Faces are a real photograph (matplotlib's grace_hopper.jpg) moved and zoomed per frame over a random
background; the voice is espeak-ng speech whose words and prosody (pitch, rate, loudness) depend on the
emotion, so the label is learnable from audio. Without espeak-ng a harmonic "voice" with a per-emotion
pitch contour and syllable rate stands in. Files follow MELD's official layout and CSV columns.
"""
from __future__ import annotations

import csv
import functools
import io
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from avemo.pipeline.layout import CSV_NAMES, VIDEO_DIRS
from avemo.shards.labels import EMOTIONS

SENTIMENT_OF = {"anger": "negative", "disgust": "negative", "fear": "negative", "joy": "positive",
                "neutral": "neutral", "sadness": "negative", "surprise": "positive"}
# espeak-ng pitch 0-99, words per minute, amplitude 0-200, and a few lines per emotion
PROSODY = {
    "anger": (30, 230, 190, ["I told you to stop that right now", "Get out of my apartment", "This is ridiculous"]),
    "disgust": (25, 120, 110, ["Ew that is gross", "I can not even look at it", "That smells awful"]),
    "fear": (85, 210, 80, ["Did you hear that noise", "I think somebody is in here", "Please do not leave me"]),
    "joy": (75, 180, 150, ["This is the best day ever", "I got the job", "We are going to Vegas"]),
    "neutral": (50, 150, 100, ["The coffee place is on the corner", "I will see you tomorrow", "It is on the table"]),
    "sadness": (15, 95, 70, ["She is gone", "I miss him so much", "Nothing ever works out for me"]),
    "surprise": (95, 170, 160, ["Oh my god you are here", "No way is that real", "You did what"]),
}


@dataclass
class SynthSpec:
    per_class: dict            # split -> clips per emotion
    seed: int = 0
    width: int = 640
    height: int = 360
    fps: int = 15
    no_face_frac: float = 0.0   # fraction of clips without a face (drawn independently of the label)
    no_audio_frac: float = 0.0  # fraction of clips without an audio stream
    min_duration_s: float = 1.2  # shorter speech is padded with silence (MELD clips average ~3 s)


@functools.lru_cache(maxsize=1)
def _decoded_face_photo() -> Image.Image:
    import matplotlib.cbook as cbook
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return Image.open(io.BytesIO(fh.read())).convert("RGB")


def face_photo() -> Image.Image:
    """The photo, decoded once per process; each caller gets its own copy to change as it likes."""
    return _decoded_face_photo().copy()


def _espeak(text: str, pitch: int, speed: int, amp: int, voice: str) -> tuple[np.ndarray, int] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    proc = subprocess.run([exe, "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amp), text],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        return None
    with wave.open(io.BytesIO(proc.stdout)) as wav:
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    return data, rate


def _hum(emotion: str, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """Fallback voice: harmonics with an emotion-dependent pitch contour and syllable rate."""
    pitch, speed, amp, _ = PROSODY[emotion]
    dur = rng.uniform(1.4, 2.4) * 150 / speed + 0.6
    t = np.arange(int(dur * rate)) / rate
    f0 = (90 + 2.2 * pitch) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)) * rng.uniform(0.9, 1.1)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * (speed / 60.0) * t)) ** 2
    return (voice * syllables * amp / 400).astype(np.float32)


def _speech(emotion: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    pitch, speed, amp, lines = PROSODY[emotion]
    voice = str(rng.choice(["en-us", "en", "en-us+m3", "en+f3", "en+m1", "en+f2"]))
    jitter = lambda x, lo, hi: int(np.clip(x + rng.integers(-8, 9), lo, hi))  # noqa: E731
    spoken = _espeak(str(rng.choice(lines)), jitter(pitch, 0, 99), jitter(speed, 80, 260), jitter(amp, 20, 200), voice)
    return spoken if spoken is not None else (_hum(emotion, rng), 16000)


def _frames(photo: Image.Image, n: int, spec: SynthSpec, rng: np.random.Generator, face: bool):
    w, h = spec.width, spec.height
    c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
    ramp = np.linspace(0, 1, w)[None, :, None]
    background = (c0 * (1 - ramp) + c1 * ramp).repeat(h, 0).astype(np.uint8)
    if rng.random() < 0.5:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    size0, size1 = rng.uniform(0.55, 0.8) * h, rng.uniform(0.55, 0.8) * h
    x0, x1 = rng.uniform(0, w - h * 0.8, 2)
    y0, y1 = rng.uniform(0, h * 0.2, 2)
    if face:     # shrunk once to the largest size the clip shows: each frame's resize then reads ~4x fewer pixels
        big = int(max(size0, size1)) + 1
        photo = photo.resize((big, int(big * photo.height / photo.width)), Image.Resampling.BILINEAR)
    for i in range(n):
        a = i / max(1, n - 1)
        frame = Image.fromarray(background)
        if face:
            side = int(size0 * (1 - a) + size1 * a)
            scaled = photo.resize((side, int(side * photo.height / photo.width)), Image.Resampling.BILINEAR)
            frame.paste(scaled, (int(x0 * (1 - a) + x1 * a), int(y0 * (1 - a) + y1 * a)))
        yield np.asarray(frame).tobytes()


def _write_clip(path: Path, emotion: str, spec: SynthSpec, seed: int, face: bool, audio: bool) -> float:
    rng = np.random.default_rng(seed)
    wave_data, rate = _speech(emotion, rng)
    duration = max(spec.min_duration_s, len(wave_data) / rate + 0.3)
    n = int(duration * spec.fps)
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "a.wav"
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes((np.clip(wave_data, -1, 1) * 32767).astype(np.int16).tobytes())
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{spec.width}x{spec.height}",
                             r=spec.fps)
        streams = [video] + ([ffmpeg.input(str(wav_path)).audio] if audio else [])
        # one encoder thread: the clips are written by one process per core already (x264's own threads cost
        # a third more CPU on 2 cores for nothing)
        kwargs: dict[str, object] = {"vcodec": "libx264", "preset": "ultrafast", "pix_fmt": "yuv420p",
                                     "t": f"{duration:.3f}", "threads": 1}
        if audio:
            kwargs.update(acodec="aac", ar=44100, ac=2)
        args = ffmpeg.output(*streams, str(path), **kwargs).overwrite_output().get_args()
        proc = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", *args], stdin=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            for frame in _frames(face_photo(), n, spec, rng, face):
                proc.stdin.write(frame)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg exited early: its stderr, read below, says why
        finally:
            errors = proc.stderr.read().decode("utf-8", "replace")
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {errors.strip()[-300:]}")
    return duration


def _clip_job(job: tuple) -> float:
    return _write_clip(*job)


def make_mini_meld(root: str | Path, spec: SynthSpec, workers: int = 2) -> Path:
    """Write `root/{split}_sent_emo.csv` + `root/<official video folder>/dia{D}_utt{U}.mp4`."""
    root = Path(root)
    rows_by_split, jobs = {}, []
    n = 0
    pick = np.random.default_rng(spec.seed + 7)
    for split, per_class in spec.per_class.items():
        video_dir = root / VIDEO_DIRS[split][0]
        video_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(per_class * len(EMOTIONS)):
            emotion = EMOTIONS[i % len(EMOTIONS)]
            dia, utt = i // 4, i % 4
            n += 1
            face = bool(pick.random() >= spec.no_face_frac)
            audio = bool(pick.random() >= spec.no_audio_frac)
            jobs.append((video_dir / f"dia{dia}_utt{utt}.mp4", emotion, spec, spec.seed * 100_003 + n, face, audio))
            rows.append((dia, utt, emotion))
        rows_by_split[split] = rows
    with ProcessPoolExecutor(max(1, workers)) as pool:
        durations = list(pool.map(_clip_job, jobs))
    k = 0
    for split, rows in rows_by_split.items():
        with open(root / CSV_NAMES[split], "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                             "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
            for sr, (dia, utt, emotion) in enumerate(rows, 1):
                dur = durations[k]
                k += 1
                start = 60.0 * dia + 5.0 * utt
                writer.writerow([sr, PROSODY[emotion][3][0], "Grace", emotion, SENTIMENT_OF[emotion], dia, utt,
                                 1, 1, _clock(start), _clock(start + dur)])
    return root


def _clock(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
