"""16 kHz mono waveform -> log-mel (n_mels, F) float16, computed once at build time (torchaudio)."""
from __future__ import annotations

import functools

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
