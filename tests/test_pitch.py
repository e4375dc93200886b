"""pipeline.audio.pitch_track: YIN F0 and periodicity on log_mel's frames."""
from __future__ import annotations

import numpy as np
import pytest

from avemo.pipeline.audio import log_mel, pitch_track
from avemo.pipeline.config import AudioConfig

RATE = 16_000
CFG = AudioConfig()


def harmonic(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))).astype(np.float32)


@pytest.mark.unit
@pytest.mark.parametrize("f0", [80.0, 123.0, 220.0, 410.0])
def test_a_voiced_tone_gives_its_frequency_and_full_periodicity(f0):
    track = pitch_track(harmonic(f0), RATE, CFG).astype(np.float64)
    inner = slice(5, -5)                                  # the edges' frames hold half a window of padding
    hz = 200.0 * 2.0 ** track[0, inner]
    assert np.allclose(hz, f0, rtol=0.01), (hz.min(), hz.max())
    assert track[1, inner].min() > 0.95


@pytest.mark.unit
def test_noise_is_aperiodic_and_silence_has_no_pitch():
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    assert np.median(pitch_track(noise, RATE, CFG)[1].astype(np.float32)) < 0.5
    assert not pitch_track(np.zeros(RATE, np.float32), RATE, CFG).any()
    # a tone, then silence: the silent half gets no F0 and no periodicity (a value of 0 on both rows)
    x = np.concatenate([harmonic(150.0, 0.5), np.zeros(RATE // 2, np.float32)])
    track = pitch_track(x, RATE, CFG).astype(np.float32)
    assert track[1, 10:40].min() > 0.95 and not track[:, 60:].any()


@pytest.mark.unit
def test_a_tone_starts_and_stops_on_the_frames_the_mel_does():
    """Silence, a tone from 0.5 s to 1.5 s, silence: the periodicity and the mel's energy switch on and off
    within one frame of each other (frame 50 and 150 at a 10 ms hop)."""
    x = np.zeros(2 * RATE, np.float32)
    x[RATE // 2: 3 * RATE // 2] = harmonic(150.0)
    voiced = pitch_track(x, RATE, CFG)[1].astype(np.float32) > 0.5
    energy = np.exp(log_mel(x, RATE, CFG).astype(np.float32)).sum(0)
    loud = energy > energy.max() / 2
    on, off = np.flatnonzero(voiced)[[0, -1]], np.flatnonzero(loud)[[0, -1]]
    assert abs(on - off).max() <= 1 and abs(on[0] - 50) <= 1 and abs(on[1] - 149) <= 2, (on, off)


@pytest.mark.unit
@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 16_001, 48_123])
def test_one_pitch_frame_per_mel_frame(samples):
    x = np.random.default_rng(samples).standard_normal(samples).astype(np.float32)
    track, mel = pitch_track(x, RATE, CFG), log_mel(x, RATE, CFG)
    assert track.shape == (2, mel.shape[1]) and track.dtype == np.float16
    assert np.isfinite(track.astype(np.float32)).all()


def test_real_voices_a_man_lower_than_a_woman(shared):
    """RAVDESS actor 01 is a man, actor 02 a woman (its README): their median F0 over voiced frames falls in
    the usual adult ranges, the man's lower."""
    pytest.importorskip("soundfile")
    from avemo.pipeline.readers import read_audio
    medians = []
    for actor in ("Actor_01", "Actor_02"):
        path = sorted((shared / "data" / "ravdess" / actor).glob("03-01-01-*.flac"))[0]   # neutral
        audio = read_audio(str(path), RATE)
        track = pitch_track(audio, RATE, CFG).astype(np.float64)
        voiced = track[1] >= 0.8
        assert 0.08 < voiced.mean() < 0.9       # a sentence between ~1 s of silence at each end: its vowels
        medians.append(float(np.median(200.0 * 2.0 ** track[0, voiced])))
    man, woman = medians
    assert 75 < man < 170 and 150 < woman < 300 and man < woman * 0.8, medians
