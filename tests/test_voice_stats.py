"""model.voice_stats: the late-fusion voice classifier on utterance mel statistics (model/net.py VoiceStats,
train/voice_stats.py). Pure logic here; its fit inside a real `avemo train` run is in tests/test_multiset.py."""
from __future__ import annotations

import pytest
import torch

from avemo.model.net import AVEmotionNet, ModelConfig, VoiceStats
from avemo.train.voice_stats import fit_linear

pytestmark = pytest.mark.unit


def test_features_ignore_the_recordings_level_its_padding_and_the_pitch_rows():
    torch.manual_seed(0)
    head = VoiceStats(8)
    mel = torch.randn(2, 8, 50)
    mask = torch.ones(2, 50, dtype=torch.bool)
    base = head.features(mel, mask)
    assert base.shape == (2, 16)
    torch.testing.assert_close(head.features(mel + 7.5, mask), base)             # gain: a constant in log-mel
    padded = torch.cat([mel, torch.full((2, 8, 30), 99.0)], 2)
    pmask = torch.cat([mask, torch.zeros(2, 30, dtype=torch.bool)], 1)
    torch.testing.assert_close(head.features(padded, pmask), base)                # padding left out
    with_pitch = torch.cat([mel, torch.randn(2, 2, 50)], 1)                       # model.pitch's rows after the bins
    torch.testing.assert_close(head.features(with_pitch, mask), base)
    other = mel.clone()
    other[:, 3] *= 3.0                                                            # a band that moves more
    assert not torch.allclose(head.features(other, mask), base)


def test_fit_separates_classes_by_their_statistics_and_draws_no_random_numbers():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(3).repeat(40)
    x = torch.randn(120, 16, generator=g, dtype=torch.float64)
    x[:, :3] += 3.0 * torch.nn.functional.one_hot(y, 3).double()                  # class c raises feature c
    rng = torch.random.get_rng_state()
    state = fit_linear(x, y, l2=0.01)
    assert torch.equal(torch.random.get_rng_state(), rng)                         # training's RNG stream untouched
    head = VoiceStats(8)
    head.load_state_dict(state)
    logits = ((x.float() - head.mean) / head.std) @ head.weight.T + head.bias
    assert (logits.argmax(1) == y).float().mean() > 0.95
    assert torch.equal(fit_linear(x, y, l2=0.01)["weight"], state["weight"])       # convex, deterministic
    strong = fit_linear(x, y, l2=10.0)
    assert strong["weight"].norm() < 0.2 * state["weight"].norm()                 # the L2 penalty shrinks it
    weighted = fit_linear(x, y, l2=0.01, class_weight=torch.tensor([5.0, 1, 1, 1, 1, 1, 1]))
    assert weighted["bias"][0] - weighted["bias"][1] > state["bias"][0] - state["bias"][1]  # class 0 favoured


def _pair(weight: float = 1.0) -> tuple[AVEmotionNet, AVEmotionNet]:
    cfg = ModelConfig(audio_channels=[8, 8, 8], hidden=16, fusion_dim=16, modality_dropout=0.0, dropout=0.0)
    torch.manual_seed(0)
    plain = AVEmotionNet(cfg)
    torch.manual_seed(0)
    voted = AVEmotionNet(ModelConfig(**{**cfg.__dict__, "voice_stats": weight}))
    assert set(voted.state_dict()) - set(plain.state_dict()) == {f"voice_stats.{k}" for k in
                                                                 ("mean", "std", "weight", "bias", "present")}
    voted.load_state_dict(plain.state_dict(), strict=False)
    return plain, voted


def _inputs():
    torch.manual_seed(2)
    faces = torch.randint(0, 255, (3, 2, 3, 112, 112), dtype=torch.uint8)
    face_mask = torch.tensor([[True, True], [False, False], [True, False]])
    mel = torch.randn(3, 64, 80)
    mel_mask = torch.ones(3, 80, dtype=torch.bool)
    mel_mask[2] = False                                                           # clip 2: face only
    return faces, face_mask, mel, mel_mask


def test_the_vote_counts_in_use_only_and_only_for_clips_with_audio():
    plain, voted = _pair(weight=2.0)
    x = _inputs()
    with torch.no_grad():
        unfitted = voted.eval()(*x)
        torch.testing.assert_close(torch.softmax(unfitted, 1), torch.softmax(plain.eval()(*x), 1))  # no vote
        voted.voice_stats.weight.normal_()                                        # a fitted one
        voted.voice_stats.bias.normal_()
        out, ref = voted(*x), plain(*x)
        vote = torch.log_softmax(voted.voice_stats.weight @ ((voted.voice_stats.features(x[2], x[3]) -
                                                               voted.voice_stats.mean) / voted.voice_stats.std).T
                                 + voted.voice_stats.bias[:, None], 0).T
        torch.testing.assert_close(out[:2], ref[:2] + 2.0 * vote[:2])           # model.voice_stats x log-probs
        torch.testing.assert_close(out[2], ref[2])                                # no audio: no vote
        torch.testing.assert_close(voted.train()(*x), plain.train()(*x))          # training never sees it


def test_an_emotion_without_train_voices_gets_no_vote_against_it():
    g = torch.Generator().manual_seed(4)
    y = torch.arange(6).repeat(20)                                                # surprise (6): no voices
    x = torch.randn(120, 16, generator=g, dtype=torch.float64)
    x[:, :6] += 3.0 * torch.nn.functional.one_hot(y, 6).double()
    x[:, 15] = 2.0                                                                # a constant statistic
    state = fit_linear(x, y, l2=0.01)
    assert state["present"].tolist() == [1.0] * 6 + [0.0]
    assert state["weight"][6].abs().sum() == 0 and state["bias"][6] == 0 and state["std"][15] == 1.0
    head = VoiceStats(8)
    head.load_state_dict(state)
    mel = torch.randn(4, 8, 50, generator=g)
    mel[:, :, 0] += 40.0                                                          # far from the train voices
    logp = head(mel, torch.ones(4, 50, dtype=torch.bool))
    torch.testing.assert_close(logp[:, 6], logp[:, :6].mean(1))                   # the mean: no veto
    assert torch.isfinite(logp).all()
    old = VoiceStats(8)
    old.load_state_dict({k: v for k, v in state.items() if k != "present"})      # fitted before `present`
    assert old.present.tolist() == [1.0] * 7
