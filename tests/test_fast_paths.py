"""Two exact speed-ups of a training step (bench/results/train_step.md): the face blocks that need no gradient
run as copies with BatchNorm folded into their convolutions, rebuilt whenever the weights change; the audio
CNN applies each stage's ReLU after its max-pool (they commute). Neither changes what the model computes."""
from __future__ import annotations

import pytest
import torch

from avemo.model import net
from avemo.model.mobilefacenet import MobileFaceNet, fold_batchnorm
from avemo.model.net import AudioEncoder, FaceEncoder, ModelConfig

pytestmark = pytest.mark.unit


def _randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """BatchNorm statistics and affine parameters away from identity, as trained ones are, so folding them
    is visible: a fresh BatchNorm (mean 0, var 1, weight 1, bias 0) is nearly the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)


def _encoder(seed: int = 0, **kw) -> FaceEncoder:
    torch.manual_seed(seed)
    enc = FaceEncoder(ModelConfig(face_trainable="last", face_train_blocks=4, **kw))
    _randomise_batchnorm(enc, seed)
    return enc


def _faces(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, n, 3, 112, 112), dtype=torch.uint8, generator=g)


def _unfolded(monkeypatch):
    monkeypatch.setattr(FaceEncoder, "fold_frozen_bn", False)


def test_folded_blocks_compute_what_the_blocks_compute():
    cnn = MobileFaceNet().eval()
    _randomise_batchnorm(cnn, 3)
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        y = z = x
        for block in cnn.blocks():
            folded = fold_batchnorm(block)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) or block is cnn.bn
            assert not any(p.requires_grad for p in folded.parameters())
            y, z = block(y), folded(z)
            torch.testing.assert_close(z, y, rtol=1e-4, atol=1e-4 * float(y.abs().mean()))


def test_in_use_embeddings_equal_the_unfolded_network(monkeypatch):
    faces = _faces()
    folded = _encoder().eval()
    with torch.inference_mode():
        got = folded.embed(faces)
    assert folded._folded is not None and len(folded._folded[1]) == len(folded.cnn.blocks())   # all 21 folded
    _unfolded(monkeypatch)
    with torch.inference_mode():
        want = _encoder().eval().embed(faces)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_folds_only_the_frozen_blocks_and_trains_the_rest(monkeypatch):
    """In training the trainable blocks run as they are (batch statistics, gradients); what they receive from
    the folded frozen blocks equals the unfolded blocks' output. (Their training-mode BatchNorm over a few
    random frames of a random network amplifies float rounding ~1e4x, so the comparison is made there.)"""
    faces = _faces()
    folded = _encoder().train()
    seen: list[torch.Tensor] = []
    block = folded.cnn.blocks()[folded.split]
    block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    folded.embed(faces).square().sum().backward()
    assert folded._folded is not None and len(folded._folded[1]) == folded.split      # only the frozen ones
    trainable = [p for b in folded.cnn.blocks()[folded.split:] for p in b.parameters()]
    assert trainable and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainable)
    assert all(p.grad is None for b in folded.cnn.blocks()[: folded.split] for p in b.parameters())
    assert all(b.training for b in folded.cnn.blocks()[folded.split:])
    _unfolded(monkeypatch)
    plain = _encoder().train()
    plain.cnn.blocks()[plain.split].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    plain.embed(faces)
    torch.testing.assert_close(seen[0], seen[1], rtol=1e-4, atol=1e-5)


def test_the_folded_copies_follow_the_weights():
    """Loaded, written in place, loaded into the CNN alone (as build_model does) or converted: the next
    call folds the new weights, never stale ones."""
    faces = _faces(3)
    enc, other = _encoder(0).eval(), _encoder(1).eval()

    def check(reference: FaceEncoder) -> None:
        with torch.inference_mode():
            got = enc.embed(faces.to(torch.uint8)).double()
        with torch.inference_mode():
            fresh = FaceEncoder(ModelConfig(face_trainable="last", face_train_blocks=4)).eval().to(got.dtype)
            fresh.load_state_dict(reference.state_dict())
            FaceEncoder.fold_frozen_bn = False
            try:
                want = fresh.embed(faces).double()
            finally:
                FaceEncoder.fold_frozen_bn = True
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    with torch.inference_mode():
        before = enc.embed(faces)
    enc.load_state_dict(other.state_dict())                         # the whole encoder
    check(other)
    with torch.inference_mode():
        assert float((enc.embed(faces) - before).abs().max()) > 1e-3   # the check can tell them apart
    with torch.no_grad():
        enc.cnn.conv1[1].running_var.mul_(4.0)                     # one statistic, in place
    check(enc)
    enc.cnn.load_state_dict(_encoder(2).cnn.state_dict())          # the CNN alone
    check(enc)
    enc.double()                                                   # new storage, same Parameter objects
    check(enc)


def test_audio_relu_after_the_pool_is_exact(monkeypatch):
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(4, 64, 96, generator=g)
    mask = torch.ones(4, 96, dtype=torch.bool)
    mask[1, 60:] = False
    mask[3, 30:] = False
    outs, grads = [], []
    for after in (True, False):
        monkeypatch.setattr(AudioEncoder, "relu_after_pool", after)
        torch.manual_seed(0)
        enc = AudioEncoder(ModelConfig()).train()
        out = enc(mel, mask)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in enc.parameters() if p.grad is not None])
    assert torch.equal(outs[0], outs[1])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_model_made_under_inference_mode_runs_unfolded():
    """Inference tensors count no in-place writes, so a cache keyed on them could go stale: not folded."""
    faces = _faces(2)
    with torch.inference_mode():
        enc = _encoder().eval()
        out = enc.embed(faces)
        assert enc._folded is None
        with torch.no_grad():
            enc.cnn.bn.bias.add_(1.0)                                  # the last BatchNorm, in place
        torch.testing.assert_close(enc.embed(faces), out + 1.0)        # the write is seen


def test_every_mode_switch_folds_afresh_so_fused_optimiser_steps_are_seen():
    """A fused AdamW writes the weights without counting them in _version: the copies are dropped at each
    train() / eval() (and the in-use copies cover other blocks than the training ones), so scoring after
    training steps folds the stepped weights."""
    faces = _faces(3)
    enc = _encoder().eval()
    with torch.inference_mode():
        enc.embed(faces)
    assert enc._folded is not None
    enc.train()
    assert enc._folded is None
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=0.05, fused=True)
    for _ in range(2):
        opt.zero_grad()
        enc.embed(_faces(4, seed=5)).square().mean().backward()
        opt.step()
    enc.eval()
    with torch.inference_mode():
        got = enc.embed(faces)
    FaceEncoder.fold_frozen_bn = False
    try:
        with torch.inference_mode():
            want = enc.embed(faces)
    finally:
        FaceEncoder.fold_frozen_bn = True
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_in_training_a_copy_of_the_same_statistics_keeps_the_folded_blocks():
    """DDP copies rank 0's buffers into every rank's before each training forward: the frozen blocks'
    statistics keep their values, and the folded copies are kept rather than rebuilt every step."""
    enc = _encoder().train()
    enc.embed(_faces(2))
    kept = enc._folded
    assert kept is not None
    with torch.no_grad():
        for block in enc.cnn.blocks()[: enc.split]:
            for t in block.buffers():
                t.copy_(t.clone())                                  # what broadcast_buffers does
    enc.embed(_faces(2))
    assert enc._folded is kept
    with torch.no_grad():
        enc.cnn.conv1[0].weight.mul_(1.5)                          # a frozen weight written in place
    enc.embed(_faces(2))
    assert enc._folded is not kept
