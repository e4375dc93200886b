"""The frozen face blocks (face_trainable=last) run in passes of FROZEN_CHUNK frames (bounded memory, issue
19.4): the embeddings and the trainable blocks' gradients are those of one pass over the whole batch, and no
pass is wider than the chunk; traced, the batch goes through in one pass."""
from __future__ import annotations

import pytest
import torch

from avemo.model import net
from avemo.model.net import FaceEncoder, ModelConfig

pytestmark = pytest.mark.unit


def _encoder() -> FaceEncoder:
    torch.manual_seed(0)
    return FaceEncoder(ModelConfig(face_trainable="last", face_train_blocks=4)).train()


def _faces(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, n, 3, 112, 112), dtype=torch.uint8, generator=g)


class _Embed(torch.nn.Module):
    def __init__(self, enc: FaceEncoder):
        super().__init__()
        self.enc = enc

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.enc.embed(faces)


def _widths(enc: FaceEncoder) -> list[int]:
    widths: list[int] = []
    frozen = enc.frozen
    enc.frozen = lambda x, blocks: widths.append(x.shape[0]) or frozen(x, blocks)   # type: ignore[method-assign]
    return widths


def test_chunked_frozen_pass_equals_one_pass_with_the_same_gradients(monkeypatch):
    chunk = net.FROZEN_CHUNK
    n = 2 * chunk + 5                                  # two full chunks and a short one
    faces = _faces(n)
    chunked, whole = _encoder(), _encoder()
    widths = _widths(chunked)
    out_chunked = chunked.embed(faces)
    monkeypatch.setattr(net, "FROZEN_CHUNK", n)           # the reference: everything in one pass
    out_whole = whole.embed(faces)
    assert widths == [chunk, chunk, 5]
    torch.testing.assert_close(out_chunked, out_whole, rtol=1e-4, atol=1e-4)
    out_chunked.square().sum().backward()
    out_whole.square().sum().backward()
    trainable = [(a, b) for a, b in zip(chunked.cnn.parameters(), whole.cnn.parameters()) if a.requires_grad]
    assert trainable and all(a.grad is not None for a, _ in trainable)
    for a, b in trainable:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4)
    frozen = chunked.cnn.blocks()[0]
    assert all(p.grad is None for p in frozen.parameters())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_traced_encoder_takes_the_whole_batch_in_one_pass():
    enc = _encoder().eval()
    faces = _faces(net.FROZEN_CHUNK + 3)
    widths = _widths(enc)
    with torch.no_grad():
        traced = torch.jit.trace(_Embed(enc), faces, check_trace=False)
    assert [int(w) for w in widths] == [net.FROZEN_CHUNK + 3]
    with torch.no_grad():
        torch.testing.assert_close(traced(faces), enc.embed(faces), rtol=1e-4, atol=1e-4)
