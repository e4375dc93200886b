"""model.voice_trim_db: the voice branch leaves out a clip's leading and trailing quiet frames, so a voice with a
second of room tone around the words (RAVDESS) and the same voice cut tightly (other corpora, a predict window)
read alike; pauses between the words stay."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from avemo.model.config import ModelConfig
from avemo.model.net import AudioEncoder

pytestmark = pytest.mark.unit

QUIET, LOUD = -13.0, 0.0        # log-mel levels (natural log of power per bin): 56 dB apart


def _encoder(trim_db: float, **kw) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(ModelConfig(mel_norm="utterance", voice_trim_db=trim_db, **kw)).eval()


def test_speech_span_cuts_the_quiet_ends_and_keeps_the_pauses():
    """Frames 0-19 quiet, 20-59 loud, 60-69 a quiet pause, 70-99 loud, 100-119 quiet, 120-127 padding (loud
    junk): the clip becomes frames 20-99 moved to the front (pause included), the rest padding at 0."""
    g = torch.Generator().manual_seed(0)
    mel = torch.full((1, 64, 128), QUIET) + 0.1 * torch.randn(1, 64, 128, generator=g)
    mel[..., 20:60] = LOUD + torch.randn(1, 64, 40, generator=g)
    mel[..., 70:100] = LOUD + torch.randn(1, 64, 30, generator=g)
    mel[..., 120:] = 50.0
    mask = torch.zeros(1, 128, dtype=torch.bool)
    mask[0, :120] = True
    out, out_mask = _encoder(40.0).speech_span(mel, mask)
    assert out_mask[0, :80].all() and not out_mask[0, 80:].any()
    torch.testing.assert_close(out[0, :, :80], mel[0, :, 20:100])
    assert (out[0, :, 80:] == 0).all()
    # a threshold below the clip's own range (56 dB) keeps every frame; a clip without audio stays without
    wide, wide_mask = _encoder(80.0).speech_span(mel, mask)
    assert torch.equal(wide_mask, mask) and torch.equal(wide[0, :, :120], mel[0, :, :120])
    _, none = _encoder(40.0).speech_span(mel, torch.zeros_like(mask))
    assert not none.any()


def test_a_clip_with_silence_around_it_reads_exactly_as_the_clip_alone():
    """Eval mode, strided CNN: the embedding of a clip padded with 37 quiet frames before and 50 after (any
    count, not a multiple of the CNN's stride) equals the clip's alone, in a batch with a face-only clip,
    eager and dense (traced) alike; without the trim the two differ. (The clip's 96 frames are a multiple of
    the CNN's frames per output: a clip's last partial pooling window counts only when padding follows it,
    with or without the trim.)"""
    g = torch.Generator().manual_seed(1)
    clip = LOUD + torch.randn(1, 64, 96, generator=g)
    quiet = lambda n: QUIET + 0.1 * torch.randn(1, 64, n, generator=g)   # noqa: E731
    padded = torch.cat([quiet(37), clip, quiet(50)], dim=2)             # 183 frames
    batch = torch.zeros(2, 64, 183)
    batch[0] = padded[0]
    batch_mask = torch.zeros(2, 183, dtype=torch.bool)
    batch_mask[0] = True                                                 # row 1: no audio
    tight_mask = torch.ones(1, 96, dtype=torch.bool)
    for stride in (1, 2):
        enc = _encoder(40.0, audio_time_stride=stride)
        with torch.no_grad():
            tight = enc(clip, tight_mask)
            eager = enc(batch, batch_mask)
            dense = enc.encode(*enc.speech_span(batch, batch_mask))
        torch.testing.assert_close(eager[:1], tight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(dense[:1], tight, atol=1e-5, rtol=1e-4)
        assert (eager[1] == 0).all()
        off = _encoder(0.0, audio_time_stride=stride)
        with torch.no_grad():
            assert (off(batch, batch_mask)[:1] - off(clip, tight_mask)).abs().max() > 1e-2


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_real_voice_with_room_tone_reads_almost_as_its_tight_cut():
    """Real speech (espeak-ng) through the shards' log-mel: with a second of quiet room tone (-60 dBFS noise)
    before the words and half a second after, the trimmed model's embedding stays within 5 % of the tight
    cut's (the STFT frames at the edges differ), and much closer than the untrimmed model's."""
    import torchaudio

    from avemo.demo.synth import _espeak
    from avemo.pipeline.audio import log_mel
    from avemo.pipeline.config import AudioConfig
    spoken = _espeak("the dogs are sitting by the door", 50, 160, 100, "en")
    assert spoken is not None
    wave, rate = spoken
    words = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000).numpy()
    nz = np.flatnonzero(np.abs(words) > 1e-3)
    words = words[nz[0]: nz[-1] + 1]                                     # espeak's own short silences cut off
    rng = np.random.default_rng(0)
    tone = lambda s: (1e-3 * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    room = np.concatenate([tone(1.0), words, tone(0.5)])
    cfg = AudioConfig()
    mels = [torch.from_numpy(log_mel(x, 16000, cfg).astype(np.float32))[None] for x in (words, room)]
    masks = [torch.ones(1, m.shape[2], dtype=torch.bool) for m in mels]
    for trim_db, most in ((40.0, 0.05), (0.0, None)):
        enc = _encoder(trim_db, audio_time_stride=2)
        with torch.no_grad():
            a, b = (enc(m, k)[0] for m, k in zip(mels, masks))
        rel = ((a - b).norm() / a.norm()).item()
        if most is not None:
            trimmed = rel
            assert rel < most, rel
    assert rel > 4 * trimmed, (rel, trimmed)                            # untrimmed: the room tone moves it
    assert math.isfinite(rel)


def test_voice_trim_db_must_not_be_negative():
    from avemo.core.errors import AvemoError
    with pytest.raises((AvemoError, ValueError), match="voice_trim_db"):
        ModelConfig(voice_trim_db=-1.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_eager_traced_and_onnx_agree_with_the_trim():
    """The trim is part of the exported graph: on a batch with a face-only clip and voices with quiet ends
    (one with junk in its padding), eager, traced and ONNX give the same logits, and not those without it."""
    import onnxruntime as ort

    from avemo.inference.export import OUTPUTS, ExportNet, to_onnx_bytes
    from avemo.model.net import AVEmotionNet
    g = torch.Generator().manual_seed(2)
    faces = torch.randint(0, 255, (3, 2, 3, 112, 112), dtype=torch.uint8, generator=g)
    face_mask = torch.tensor([[True, True], [False, False], [True, False]])
    mel = QUIET + 0.1 * torch.randn(3, 64, 160, generator=g)
    mel[1, :, 30:110] = LOUD + torch.randn(64, 80, generator=g)
    mel[2, :, 5:60] = LOUD + torch.randn(64, 55, generator=g)
    mel[2, :, 77:] = 40.0
    mel_mask = torch.zeros(3, 160, dtype=torch.bool)
    mel_mask[1, :150], mel_mask[2, :77] = True, True                 # clip 0: face only
    inputs = (faces, face_mask, mel, mel_mask)
    nets = []
    for trim_db in (35.0, 0.0):
        torch.manual_seed(0)
        nets.append(AVEmotionNet(ModelConfig(face_trainable="last", mel_norm="utterance", audio_time_stride=2,
                                             voice_trim_db=trim_db)).eval())
    net, plain = nets
    with torch.no_grad():
        eager, untrimmed = net(*inputs), plain(*inputs)
        traced = torch.jit.trace(ExportNet(net), inputs, check_trace=False)(*inputs)[0]
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-4)
    assert (eager[1:] - untrimmed[1:]).abs().max() > 1e-3
    torch.testing.assert_close(eager[0], untrimmed[0])               # no voice: nothing to trim
    session = ort.InferenceSession(to_onnx_bytes(net, {"labels": []}), providers=["CPUExecutionProvider"])
    logits, _ = session.run(OUTPUTS, dict(zip(["faces", "face_mask", "mel", "mel_mask"], (t.numpy() for t in inputs))))
    np.testing.assert_allclose(logits, eager.numpy(), atol=1e-4, rtol=1e-4)


def test_each_clip_of_a_batch_is_cut_by_its_own_loudness():
    """Three voices at levels 20 dB apart, with quiet ends of their own lengths, and the pitch rows of
    model.pitch after the mel bins: each row of the batch comes out as that clip does alone (its own
    threshold, its own start), the pitch rows moved with the mel."""
    g = torch.Generator().manual_seed(3)
    enc = _encoder(35.0, pitch=True)
    rows, frames = 64 + 2, 140
    mel = torch.zeros(3, rows, frames)
    mask = torch.zeros(3, frames, dtype=torch.bool)
    for i, (level, start, stop, length) in enumerate([(0.0, 10, 90, 120), (-4.6, 33, 70, 100), (-9.2, 0, 130, 140)]):
        mel[i, :64, :length] = level + QUIET + 0.1 * torch.randn(64, length, generator=g)
        mel[i, :64, start:stop] = level + torch.randn(64, stop - start, generator=g)
        mel[i, 64:, :length] = torch.randn(2, length, generator=g)
        mask[i, :length] = True
    out, out_mask = enc.speech_span(mel, mask)
    for i in range(3):
        alone, alone_mask = enc.speech_span(mel[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone)
        assert torch.equal(out_mask[i:i + 1], alone_mask)
    assert out_mask.sum(1).tolist() == [80, 37, 130]
    torch.testing.assert_close(out[1, 64:, :37], mel[1, 64:, 33:70])
