"""The voice branch's pooling over frames (model.audio_pool): mean, mean + standard deviation, attentive
statistics. Each sees only a clip's valid frames (padding and absent audio change nothing), gives a zero row
for a clip without audio, and learns (gradients reach the frame scores); the eager, traced and exported paths
agree with attention pooling in tests/test_masked_audio.py."""
from __future__ import annotations

import pytest
import torch

from avemo.model.net import AudioEncoder, ModelConfig, StatsPool

pytestmark = pytest.mark.unit
POOLS = ["mean", "stats", "attention"]


def _batch():
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(3, 64, 160, generator=g) * 3 - 5
    mask = torch.zeros(3, 160, dtype=torch.bool)
    mask[0, :160] = True
    mask[1, :88] = True                 # (a multiple of the CNN's stride 8); row 2: no audio at all
    return mel, mask


@pytest.mark.parametrize("pool,freq", [(p, "mean") for p in POOLS] + [("mean", "flatten"), ("attention", "flatten")])
def test_padding_and_absent_audio_change_nothing(pool, freq):
    torch.manual_seed(0)
    enc = AudioEncoder(ModelConfig(audio_pool=pool, mel_norm="utterance", audio_freq=freq)).eval()
    mel, mask = _batch()
    junk = mel.clone()
    junk[1, :, 88:] = 40.0              # what lies past a clip's end must not matter
    with torch.no_grad():
        a, b = enc(mel, mask), enc(junk, mask)
        alone = enc(mel[1:2, :, :88], mask[1:2, :88])       # the clip by itself, unpadded
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:2], alone, atol=1e-5, rtol=1e-4)
    assert a[2].abs().max() == 0        # no audio: a zero row (the head is told by has_audio)
    assert a[0].abs().max() > 0


def test_flatten_keeps_each_band_apart():
    """audio_freq=flatten: the LSTM reads the CNN's 8 bands x 128 channels per frame, so the same pattern in a
    low or a high band reaches it differently; the mean over bands (shipped) reads 128 channels."""
    torch.manual_seed(0)       # the same seed before each: the CNN (built first) gets the same weights in both
    flat = AudioEncoder(ModelConfig(mel_norm="utterance", audio_freq="flatten")).eval()
    torch.manual_seed(0)
    mean = AudioEncoder(ModelConfig(mel_norm="utterance")).eval()
    assert flat.lstm.input_size == 128 * 8 and mean.lstm.input_size == 128
    seen = {}
    for name, enc in (("flat", flat), ("mean", mean)):
        cnn_out = {}
        enc.norm.register_forward_hook(lambda _m, inp, _o: cnn_out.setdefault("x", inp[0]))
        mel, mask = _batch()
        with torch.no_grad():
            enc(mel[:1], mask[:1])
        seen[name] = cnn_out["x"]
    assert seen["flat"].shape == (1, 20, 1024) and seen["mean"].shape == (1, 20, 128)
    # the flattened frame is the per-band activations; their mean over the 8 bands is what the shipped path reads
    torch.testing.assert_close(seen["flat"].view(1, 20, 128, 8).mean(3), seen["mean"], atol=1e-5, rtol=1e-4)


def test_flatten_needs_enough_mel_bands():
    from avemo.core.config import ConfigError
    with pytest.raises(ConfigError, match="n_mels"):
        ModelConfig(n_mels=4, audio_freq="flatten")


def test_stats_pool_is_the_masked_mean_and_deviation_then_a_projection():
    torch.manual_seed(0)
    pool = StatsPool(4, attention=False)
    x = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    out = pool(x, mask)
    for row, n in ((0, 6), (1, 3)):
        v = x[row, :n]
        stats = torch.cat([v.mean(0), v.std(0, unbiased=False)])
        torch.testing.assert_close(out[row], pool.proj(stats[None])[0])


def test_attention_weights_learn_which_frames_count():
    """A frame score that the loss reaches: after a few steps on 'the label is in the loud frames', the
    attention puts more weight on those frames than the uniform mean does."""
    torch.manual_seed(0)
    pool = StatsPool(8, attention=True)
    head = torch.nn.Linear(8, 2)
    opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=0.03)
    mask = torch.ones(32, 20, dtype=torch.bool)
    for _ in range(80):
        y = torch.randint(0, 2, (32,))
        x = torch.randn(32, 20, 8) * 0.5
        x[:, :3, 0] += 4.0 * (2 * y[:, None].float() - 1)    # only frames 0-2 carry the label
        x[:, :3, 1] += 3.0                                   # ... and are marked
        loss = torch.nn.functional.cross_entropy(head(pool(x, mask)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(4, 20, 8) * 0.5
    x[:, :3, 1] += 3.0
    with torch.no_grad():
        w = torch.softmax(pool.score(x), dim=1)[..., 0]      # (4, 20)
    assert float(w[:, :3].sum(1).min()) > 3 / 20 * 2, w[:, :3].sum(1)   # > twice the uniform share
    assert loss.item() < 0.3


def test_time_stride_2_halves_the_frames_and_keeps_padding_out():
    """model.audio_time_stride=2: the first convolution steps two mel frames, so the LSTM reads a frame per
    16 mel frames (8 at stride 1); padding, junk past a clip's end and absent audio still change nothing,
    and the weights are the stride-1 model's (the stride changes no shape: a checkpoint of either loads)."""
    torch.manual_seed(0)
    one = AudioEncoder(ModelConfig(mel_norm="utterance")).eval()
    two = AudioEncoder(ModelConfig(mel_norm="utterance", audio_time_stride=2)).eval()
    two.load_state_dict(one.state_dict(), strict=True)
    assert two.cnn[0].stride == (1, 2) and two.time_stride == 16 and one.time_stride == 8
    frames = []
    two.lstm.register_forward_hook(lambda _m, inp, _out: frames.append(inp[0].shape[1]))
    one.lstm.register_forward_hook(lambda _m, inp, _out: frames.append(inp[0].shape[1]))
    mel, mask = _batch()
    mask[1, :96] = True                 # clip 1 is 96 frames, a multiple of the stride 16
    junk = mel.clone()
    junk[1, :, 96:] = 40.0
    with torch.no_grad():
        a, b = two(mel, mask), two(junk, mask)
        alone = two(mel[1:2, :, :96], mask[1:2, :96])
        ref = one(mel, mask)
    assert frames == [160 // 16, 160 // 16, 96 // 16, 160 // 8]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:2], alone, atol=1e-5, rtol=1e-4)
    assert a[2].abs().max() == 0 and a[0].abs().max() > 0
    assert ref.shape == a.shape


def test_time_stride_2_norm_sees_the_strided_frames_of_the_clip():
    """The mask the first (masked) norm gets after the strided convolution: frame j is valid where input frame
    2j was, so a clip of an odd 75 frames has ceil(75 / 2) = 38 valid frames, the first 38 (an off-by-one, e.g.
    frames 2j+1, would give 37)."""
    torch.manual_seed(0)
    enc = AudioEncoder(ModelConfig(mel_norm="utterance", audio_time_stride=2)).train()
    seen = []
    enc.cnn[1].register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    mel = torch.randn(2, 64, 128)
    mask = torch.zeros(2, 128, dtype=torch.bool)
    mask[0, :75] = True
    mask[1, :128] = True
    enc(mel, mask)
    m = seen[0][:, 0, 0]                                     # (B, 64) after the stride
    assert m.shape == (2, 64)
    assert m[0].sum() == 38 and m[0, :38].all() and not m[0, 38:].any()
    assert m[1].all()


def test_time_stride_must_be_1_or_2():
    from avemo.core.config import ConfigError
    with pytest.raises(ConfigError, match="audio_time_stride must be 1 or 2"):
        ModelConfig(audio_time_stride=3)


def test_time_stride_2_with_the_pitch_track_pools_it_to_the_cnn_frames():
    """model.pitch at stride 2: the pitch features are averaged over the 16 mel frames of each CNN frame."""
    torch.manual_seed(0)
    enc = AudioEncoder(ModelConfig(mel_norm="utterance", pitch=True, audio_time_stride=2)).eval()
    pitch = torch.stack([torch.full((3, 160), 7.5), torch.ones(3, 160)], dim=1)   # log2 F0, periodicity
    mel, mask = _batch()
    feats = enc._pitch_features(pitch, mask, 160 // 16)
    assert feats.shape == (3, 10, 3)
    torch.testing.assert_close(feats[0, :, 0], torch.full((10,), 7.5))
    assert (feats[1, 6:] == 0).all() and (feats[1, :5, 2] == 1).all()    # 88 valid frames: 5.5 CNN frames
    with torch.no_grad():
        out = enc(torch.cat([mel, pitch], dim=1), mask)
    assert out.shape == (3, enc.hidden) and out[2].abs().max() == 0
    # an unpadded clip whose length leaves 15 over 16 (the strided CNN rounds its frames up): no size clash, and
    # the same answer as the clip padded to 80 frames
    clip = torch.cat([mel[:1, :, :79], pitch[:1, :, :79]], dim=1)
    padded = torch.cat([clip, torch.zeros(1, clip.shape[1], 1)], dim=2)
    valid = torch.ones(1, 79, dtype=torch.bool)
    with torch.no_grad():
        alone = enc(clip, valid)
        same = enc(padded, torch.cat([valid, torch.zeros(1, 1, dtype=torch.bool)], dim=1))
    torch.testing.assert_close(alone, same, atol=1e-5, rtol=1e-4)
