"""The HTK mel scale (mel = 2595 log10(1 + hz / 700)), shared by the two places that need it: the voice
augmentation's frequency warp (the build's log-mels come from torchaudio's MelSpectrogram, HTK by default)
and Light-ASD's MFCC front-end (python_speech_features' filterbank). Float64 numpy in and out."""
from __future__ import annotations

import numpy as np


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)
