"""model.voice_warp_tta: in use, each voice is read as is and with its frequencies scaled by each listed factor
(training's augment.freq_warp warp), and the voice embeddings are averaged (test-time augmentation). Training
never sees it and it adds nothing to the state dict."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avemo.core.config import ConfigError
from avemo.core.melscale import warp_positions
from avemo.model.config import PITCH_ROWS
from avemo.model.net import AVEmotionNet, ModelConfig
from avemo.train.augment import warp_frequency

pytestmark = pytest.mark.unit

WARPS = [0.9, 1.1]


def _pair(**kw):
    torch.manual_seed(0)
    plain = AVEmotionNet(ModelConfig(face_trainable="none", mel_norm="utterance", **kw))
    tta = AVEmotionNet(ModelConfig(face_trainable="none", mel_norm="utterance", voice_warp_tta=WARPS, **kw))
    tta.load_state_dict(plain.state_dict(), strict=True)          # same weights; strict: no new keys
    return plain, tta


def _voices(rows: int = 64, frames: int = 60, seed: int = 0):
    """Two clips whose spectra have a slope and a few formant-like peaks (a warp moves them), the second
    shorter (padding)."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.arange(rows, dtype=torch.float32)[:, None]
    peaks = sum(torch.exp(-((bins - c) / 3.0) ** 2) * 4 for c in (10, 25, 41))
    mel = -0.05 * bins + peaks + 0.5 * torch.randn(2, rows, frames, generator=g)
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, 40:] = False
    return mel * mask[:, None], mask


def test_in_use_the_voice_embedding_is_the_mean_over_the_warps():
    plain, tta = _pair()
    plain.eval(), tta.eval()
    mel, mask = _voices()
    with torch.no_grad():
        reads = [mel] + [torch.stack([warp_frequency(m, a) for m in mel]) for a in WARPS]
        want = torch.stack([plain.audio(m, mask) for m in reads]).mean(0)
        got = tta.audio(mel, mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert float((got - plain.audio(mel, mask)).abs().max()) > 1e-3   # the warps moved it
        # the clips' answers come from it (face-less clips: the head reads the averaged embedding)
        faces = torch.zeros(2, 1, 3, 112, 112, dtype=torch.uint8)
        no_face = torch.zeros(2, 1, dtype=torch.bool)
        assert not torch.allclose(tta(faces, no_face, mel, mask), plain(faces, no_face, mel, mask))


def test_the_warped_bins_are_training_warps_bit_for_bit():
    """The model's batched warp is augment.freq_warp's per-clip warp (one helper, warp_positions)."""
    _, tta = _pair()
    mel, _ = _voices(seed=3)
    reads = tta.audio.warped(mel)
    assert reads.shape == (3 * 2, 64, 60)
    assert torch.equal(reads[:2], mel)
    for i, alpha in enumerate(WARPS):
        want = torch.stack([warp_frequency(m, alpha) for m in mel])
        assert torch.equal(reads[2 * (i + 1): 2 * (i + 2)], want)
    lo, hi, w = warp_positions(64, 1.0)                                # factor 1 reads each bin itself
    np.testing.assert_allclose(lo + w, np.arange(64), atol=1e-9)
    assert np.array_equal(hi, np.minimum(lo + 1, 63))


def test_pitch_rows_move_by_the_factor_on_voiced_frames_only():
    _, tta = _pair(pitch=True)
    mel, _ = _voices(rows=64 + PITCH_ROWS, seed=4)
    mel[:, 64] = 0.25                                                  # log2 F0 / 200 Hz
    mel[:, 65] = torch.tensor([1.0, 0.0]).repeat(30)                   # every other frame voiced
    reads = tta.audio.warped(mel)
    for i, alpha in enumerate(WARPS):
        f0, periodicity = reads[2 * (i + 1): 2 * (i + 2), 64], reads[2 * (i + 1): 2 * (i + 2), 65]
        torch.testing.assert_close(periodicity, mel[:, 65])
        torch.testing.assert_close(f0[:, ::2], torch.full_like(f0[:, ::2], 0.25 + float(np.log2(alpha))))
        torch.testing.assert_close(f0[:, 1::2], torch.full_like(f0[:, 1::2], 0.25))


def test_clips_without_audio_stay_zero_and_training_never_sees_it():
    plain, tta = _pair(voice_trim_db=35.0)
    mel, mask = _voices(seed=1)
    mask[0] = False
    tta.eval()
    with torch.no_grad():
        out = tta.audio(mel * mask[:, None], mask)
    assert float(out[0].abs().max()) == 0.0 and float(out[1].abs().max()) > 0.0
    plain.train(), tta.train()
    torch.manual_seed(5)
    a = plain.audio(mel, mask)
    torch.manual_seed(5)
    torch.testing.assert_close(tta.audio(mel, mask), a)
    assert set(tta.state_dict()) == set(plain.state_dict())


def test_factors_are_checked():
    with pytest.raises(ConfigError, match="voice_warp_tta"):
        ModelConfig(voice_warp_tta=[1.0])
    with pytest.raises(ConfigError, match="voice_warp_tta"):
        ModelConfig(voice_warp_tta=[0.9, 3.0])
