"""The HTK mel scale (mel = 2595 log10(1 + hz / 700)), shared by the places that need it: the voice frequency
warp (training's augmentation and the model's model.voice_warp_tta; the build's log-mels come from torchaudio's
MelSpectrogram, HTK by default) and Light-ASD's MFCC front-end (python_speech_features' filterbank). Float64
numpy in and out."""
from __future__ import annotations

import numpy as np

LOG_MEL_RATE = 16000   # the build's log-mel rate (pipeline DecodeConfig.sample_rate's default): its top bin ends at 8 kHz


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def warp_positions(n_mels: int, alpha: float, sample_rate: int = LOG_MEL_RATE
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each bin of a log-mel warped by alpha reads the original (vocal tract length perturbation, Jaitly &
    Hinton 2013: S'(f) = S(f / alpha)): bin i reads (1 - w[i]) x bin lo[i] + w[i] x bin hi[i]. The bins are
    torchaudio MelSpectrogram's (HTK scale, 0 Hz to sample_rate / 2, n_mels + 2 equally spaced mel points, the
    bins centred on the inner ones); bin i reads the log-power at its centre frequency / alpha, interpolated
    linearly between the two nearest bins; below the first centre it reads the first bin, above the last the
    last. alpha 1 reads every bin itself (w = 0)."""
    step = hz_to_mel(sample_rate / 2.0) / (n_mels + 1)
    centres = mel_to_hz(np.arange(1, n_mels + 1) * step)
    where = np.clip(hz_to_mel(centres / alpha) / step - 1.0, 0.0, n_mels - 1.0)   # fractional bin read
    lo = np.floor(where).astype(np.int64)
    return lo, np.minimum(lo + 1, n_mels - 1), where - lo
