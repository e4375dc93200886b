"""16 kHz mono waveform -> log-mel (n_mels, F) float16, computed once at build time (torchaudio)."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torchaudio

from avemo.pipeline.config import AudioConfig

LOG_FLOOR = 1e-6


@functools.lru_cache(maxsize=4)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                n_mels=n_mels, power=2.0)


def log_mel(audio: np.ndarray, sample_rate: int, cfg: AudioConfig) -> np.ndarray:
    wave = torch.tensor(np.asarray(audio, dtype=np.float32))  # a copy: the input may be a read-only buffer
    if wave.numel() < cfg.n_fft:  # too short for one window: pad with silence
        wave = torch.nn.functional.pad(wave, (0, cfg.n_fft - wave.numel()))
    with torch.inference_mode():
        mel = _mel_transform(sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)(wave)  # (n_mels, F)
        return torch.log(mel + LOG_FLOOR).to(torch.float16).numpy()


def audio_input(audio: np.ndarray, sample_rate: int, cfg: AudioConfig, pitch: bool = False) -> np.ndarray:
    """What a model reads from a waveform, as the shards give it: the log-mel (n_mels, F), then with `pitch`
    (model.pitch) the pitch track's 2 rows -> float16 (n_mels [+ 2], F)."""
    mel = log_mel(audio, sample_rate, cfg)
    return np.concatenate([mel, pitch_track(audio, sample_rate, cfg)]) if pitch else mel


F0_REF_HZ = 200.0          # pitch_track's log2(F0 / F0_REF_HZ): 0 between a low male and a female voice
_PITCH_CHUNK = 1024        # frames per FFT batch (bounded memory on long audio)


def pitch_track(audio: np.ndarray, sample_rate: int, cfg: AudioConfig, fmin: float = 60.0, fmax: float = 500.0,
                threshold: float = 0.2) -> np.ndarray:
    """16 kHz mono waveform -> (2, F) float16 on log_mel's frames (same hop, same count, each centred where its
    mel frame is): row 0 log2(F0 / 200 Hz), row 1 periodicity in [0, 1] (1 - YIN's cumulative mean normalised
    difference at the chosen lag; 0 for silence). Row 0 is 0 where row 1 is 0. YIN (de Cheveigne & Kawahara
    2002): the first lag whose normalised difference dips below `threshold` (a local minimum), else the
    deepest one, refined by a parabola. Written here because torchaudio's detect_pitch_frequency gives a
    median-smoothed frequency without any measure of voicing, which tells a vowel from a hiss."""
    x = np.asarray(audio, dtype=np.float32)
    hop = cfg.hop_length
    n_frames = 1 + max(len(x), cfg.n_fft) // hop                     # as log_mel (padded to n_fft, centred)
    tau_min, tau_max = max(2, int(sample_rate / fmax)), int(math.ceil(sample_rate / fmin))
    width = max(cfg.n_fft, tau_max)                                  # YIN's integration window
    length = width + tau_max
    left = length // 2
    right = max(0, (n_frames - 1) * hop + length - (len(x) + left))
    with torch.inference_mode():
        wave = torch.nn.functional.pad(torch.from_numpy(x.copy()), (left, right))
        frames = wave.unfold(0, length, hop)[:n_frames]                # (F, length)
        size = 1 << (length + width - 1).bit_length()
        out = torch.zeros((2, n_frames))
        lags = torch.arange(tau_max + 1)
        loudest = float(frames[:, :width].double().pow(2).sum(1).max()) if n_frames else 0.0
        floor = max(loudest * 1e-4, width * 1e-10)                      # 40 dB below the loudest frame
        for start in range(0, n_frames, _PITCH_CHUNK):
            f = frames[start: start + _PITCH_CHUNK].double()
            spec = torch.fft.rfft(f, size)
            r = torch.fft.irfft(torch.conj(torch.fft.rfft(f[:, :width], size)) * spec, size)[:, : tau_max + 1]
            c = torch.nn.functional.pad(torch.cumsum(f * f, 1), (1, 0))   # c[k] = sum of the first k squares
            e0 = c[:, width: width + 1]
            diff = (e0 + c[:, lags + width] - c[:, lags] - 2 * r).clamp(min=0.0)   # (n, tau_max + 1)
            running = torch.cumsum(diff[:, 1:], 1).clamp(min=1e-12)
            cmnd = torch.cat([torch.ones_like(diff[:, :1]), diff[:, 1:] * lags[1:] / running], 1)
            seg = cmnd[:, tau_min: tau_max]                              # lags tau_min .. tau_max - 1
            dips = (seg < threshold) & (seg <= cmnd[:, tau_min + 1: tau_max + 1])
            first = torch.where(dips.any(1), dips.float().argmax(1), seg.argmin(1)) + tau_min
            rows = torch.arange(len(f))
            a, b, d = cmnd[rows, first - 1], cmnd[rows, first], cmnd[rows, first + 1]
            curve = a - 2 * b + d
            shift = torch.where(curve > 1e-9, 0.5 * (a - d) / curve.clamp(min=1e-9), torch.zeros_like(b)).clamp(-1, 1)
            f0 = sample_rate / (first.double() + shift)
            periodicity = (1.0 - b).clamp(0.0, 1.0)
            quiet = e0[:, 0] <= floor                                    # silence: no pitch
            periodicity[quiet] = 0.0
            out[0, start: start + len(f)] = torch.where(periodicity > 0, torch.log2(f0 / F0_REF_HZ), 0.0).float()
            out[1, start: start + len(f)] = periodicity.float()
    return out.to(torch.float16).numpy()
