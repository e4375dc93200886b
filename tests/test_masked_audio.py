"""Absent modalities do not skew the other branch (issue 19.5): the audio CNN's BatchNorm statistics come
from valid audio frames only, so face-only clips and padding added to a training batch change nothing for
the clips with audio, and the eager (sparse), dense (traced, compiled) and exported paths agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avemo.model.net import AudioEncoder, AVEmotionNet, MaskedBatchNorm2d, ModelConfig

pytestmark = pytest.mark.unit


def _clips(seed: int = 0):
    """Two clips with audio (120 and 75 mel frames), each padded to 128 as collate pads."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(2, 64, 128, generator=g) * 3 - 5
    mask = torch.zeros(2, 128, dtype=torch.bool)
    mask[0, :120] = True
    mask[1, :75] = True
    return mel, mask


def _with_face_only_clips_and_more_padding(mel, mask):
    """The same two clips in a batch of five, 256 frames wide (a longer clip elsewhere would make it so):
    face-only clips (no audio frames, zero mels as collate gives them) around them, junk in the padding."""
    b, n_mels, width = 5, mel.shape[1], 256
    big = torch.zeros(b, n_mels, width)
    big_mask = torch.zeros(b, width, dtype=torch.bool)
    for row, clip in ((1, 0), (3, 1)):
        big[row, :, :128] = mel[clip]
        big_mask[row, :128] = mask[clip]
    big[1, :, 120:] = 50.0                                  # padding content must not matter either
    return big, big_mask, [1, 3]


def _train_audio(mel_norm: str, time_stride: int = 1) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(ModelConfig(mel_norm=mel_norm, audio_time_stride=time_stride)).train()


@pytest.mark.parametrize("mel_norm,time_stride", [("utterance", 1), ("global", 1), ("utterance", 2)])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_face_only_clips_and_padding_leave_the_audio_branch_of_clips_with_audio_unchanged(mel_norm, time_stride,
                                                                                          path):
    """Train mode (batch statistics): each clip's audio embedding, and the running statistics the batch
    leaves, are the same alone and in a batch with face-only clips and more padding. `sparse`: eager, only
    clips with audio run; `dense`: every clip runs, as when traced or compiled. With model.audio_time_stride
    2 the norm's mask follows the strided frames (a clip of an odd 75 frames included)."""
    mel, mask = _clips()
    big, big_mask, rows = _with_face_only_clips_and_more_padding(mel, mask)
    alone, mixed = _train_audio(mel_norm, time_stride), _train_audio(mel_norm, time_stride)
    run = (lambda enc, *a: enc(*a)) if path == "sparse" else (lambda enc, *a: enc.encode(*a))
    out_alone = run(alone, mel, mask)
    out_mixed = run(mixed, big, big_mask)
    torch.testing.assert_close(out_mixed[rows], out_alone, atol=1e-5, rtol=1e-4)
    if path == "sparse":
        assert (out_mixed[[0, 2, 4]] == 0).all()             # clips without audio: zero rows
    for a, b in zip(alone.buffers(), mixed.buffers()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    out_mixed[rows].sum().backward()                         # gradients flow through the masked statistics
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixed.cnn.parameters())


def test_plain_batchnorm_would_be_skewed_by_face_only_clips():
    """The check above has teeth: the same encoder with nn.BatchNorm2d's batch statistics moves."""
    mel, mask = _clips()
    big, big_mask, rows = _with_face_only_clips_and_more_padding(mel, mask)
    enc = _train_audio("utterance")
    alone = enc.encode(mel, mask)
    for module in enc.cnn:
        if isinstance(module, MaskedBatchNorm2d):
            module.forward = lambda x, mask=None, bn=module: torch.nn.BatchNorm2d.forward(bn, x)  # no mask
    skewed = enc.encode(big, big_mask)[rows]
    assert (skewed - alone).abs().max() > 1e-2


def test_masked_norm_equals_batchnorm_over_the_valid_positions():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 16)
    m = torch.zeros(3, 1, 1, 16)
    m[0, ..., :16], m[2, ..., :7] = 1, 1                    # clip 1: no valid position
    masked, plain = MaskedBatchNorm2d(4).train(), torch.nn.BatchNorm2d(4).train()
    valid = torch.cat([x[0], x[2, :, :, :7]], dim=2)[None]   # the valid positions only: (1, 4, 5, 23)
    out = masked(x, m)
    torch.testing.assert_close(out[2, :, :, :7], plain(valid)[0, :, :, 16:])
    assert (out[1] == 0).all() and (out[2, :, :, 7:] == 0).all()     # padding: zero, as the next conv pads
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    before = masked.running_mean.clone()
    masked(x, torch.zeros_like(m))                           # nothing valid: running statistics kept
    torch.testing.assert_close(masked.running_mean, before)
    masked.eval()
    torch.testing.assert_close(masked(x, m), torch.nn.functional.batch_norm(
        x, masked.running_mean, masked.running_var, masked.weight, masked.bias, False, 0.0, masked.eps) * m)


def test_a_training_batch_without_any_audio_still_gives_every_audio_weight_a_gradient():
    model = AVEmotionNet(ModelConfig(face_trainable="none", modality_dropout=0)).train()
    faces = torch.randint(0, 255, (2, 2, 3, 112, 112), dtype=torch.uint8)
    face_mask = torch.ones(2, 2, dtype=torch.bool)
    before = [b.clone() for b in model.audio.buffers()]
    model(faces, face_mask, torch.zeros(2, 64, 64), torch.zeros(2, 64, dtype=torch.bool)).sum().backward()
    assert all(p.grad is not None for p in model.audio.parameters())   # DDP needs one for every weight
    for a, b in zip(before, model.audio.buffers()):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b)                             # statistics untouched


def _mixed_batch():
    """Eval inputs with a face-only clip, a voice-only clip, padding and junk in it."""
    g = torch.Generator().manual_seed(1)
    faces = torch.randint(0, 255, (3, 3, 3, 112, 112), dtype=torch.uint8, generator=g)
    face_mask = torch.tensor([[True, True, False], [False] * 3, [True, False, True]])
    mel = torch.randn(3, 64, 192, generator=g)
    mel_mask = torch.zeros(3, 192, dtype=torch.bool)
    mel_mask[1, :150], mel_mask[2, :77] = True, True         # clip 0: face only
    mel[2, :, 77:] = 40.0
    return faces, face_mask, mel, mel_mask


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_eager_traced_and_onnx_outputs_agree_on_a_batch_with_absent_modalities():
    import onnxruntime as ort
    from avemo.inference.export import ExportNet, to_onnx_bytes, OUTPUTS
    torch.manual_seed(0)
    # attentive statistics pooling, the bands kept apart, the strided first audio convolution and grey faces
    # ride along: the exported graph must hold them too (the defaults are exported by tests/test_export.py)
    net = AVEmotionNet(ModelConfig(face_trainable="last", mel_norm="utterance", audio_pool="attention",
                                   audio_freq="flatten", face_colour="grey", audio_time_stride=2))
    net.train()
    for _ in range(2):                                       # non-trivial running statistics
        net(*_mixed_batch())
    net.eval()
    inputs = _mixed_batch()
    with torch.no_grad():
        eager = net(*inputs)
        traced = torch.jit.trace(ExportNet(net), inputs, check_trace=False)(*inputs)[0]
        dense_audio = net.audio.encode(inputs[2], inputs[3])
        sparse_audio = net.audio(inputs[2], inputs[3])
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sparse_audio[1:], dense_audio[1:], atol=1e-5, rtol=1e-4)
    meta = {"labels": []}
    session = ort.InferenceSession(to_onnx_bytes(net, meta), providers=["CPUExecutionProvider"])
    logits, _ = session.run(OUTPUTS, dict(zip(["faces", "face_mask", "mel", "mel_mask"], (t.numpy() for t in inputs))))
    np.testing.assert_allclose(logits, eager.numpy(), atol=1e-4, rtol=1e-4)


def test_masked_norm_gradients_match_autograd_of_its_formula():
    """The hand-written backward (it keeps only the input and per-channel statistics) == gradcheck."""
    from avemo.model.net import _MaskedBatchNorm
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 6, dtype=torch.float64, requires_grad=True)
    m = torch.zeros(3, 1, 1, 6, dtype=torch.float64)
    m[0, ..., :6], m[2, ..., :4] = 1, 1
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _MaskedBatchNorm.apply(x, m, w, b, 1e-5)[0], (x, w, b))


def test_the_before_mode_of_the_dev_benchmark_is_the_unmasked_norm(monkeypatch):
    """bench/masked_audio_dev.py's `before` (the model until the masked norm) really takes statistics over
    face-only clips and padding: the same two clips come out differently in the mixed batch."""
    from tests.conftest import REPO
    from avemo.model import net
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.setattr(net.MaskedBatchNorm2d, "forward", net.MaskedBatchNorm2d.forward)   # undone after the test
    monkeypatch.setattr(net.AudioEncoder, "forward", net.AudioEncoder.forward)
    import masked_audio_dev
    masked_audio_dev.restore_unmasked_norm()
    mel, mask = _clips()
    big, big_mask, rows = _with_face_only_clips_and_more_padding(mel, mask)
    alone, mixed = _train_audio("utterance"), _train_audio("utterance")
    out_alone, out_mixed = alone(mel, mask), mixed(big, big_mask)
    assert not torch.allclose(out_mixed[rows], out_alone, atol=1e-3)
    first_norm = [next(m for m in enc.cnn if isinstance(m, MaskedBatchNorm2d)) for enc in (alone, mixed)]
    assert not torch.allclose(first_norm[0].running_mean, first_norm[1].running_mean)   # and its statistics
