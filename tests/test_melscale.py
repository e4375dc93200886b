"""The shared HTK mel scale (avemo.core.melscale) against torchaudio's own mel filterbank, which the build's
log-mels use and which the frequency warp assumes."""
import numpy as np
import torchaudio

from avemo.core.melscale import hz_to_mel, mel_to_hz


def test_htk_formula_and_round_trip():
    assert np.isclose(hz_to_mel(700.0), 2595.0 * np.log10(2.0))
    assert hz_to_mel(0.0) == 0.0
    hz = np.array([0.0, 55.0, 440.0, 1000.0, 3999.5, 8000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=0, atol=1e-9)


def test_filter_centres_are_torchaudios_mel_filterbank_peaks():
    sample_rate, n_mels = 16000, 64
    fb = torchaudio.functional.melscale_fbanks(n_freqs=8001, f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels,
                                               sample_rate=sample_rate, norm=None, mel_scale="htk")
    peaks_hz = fb.argmax(dim=0).numpy().astype(np.float64)       # 1 Hz per FFT bin here
    step = hz_to_mel(sample_rate / 2) / (n_mels + 1)
    centres = mel_to_hz(np.arange(1, n_mels + 1) * step)
    assert np.abs(peaks_hz - centres).max() <= 1.0
