"""model.face_flip_tta: in use, each face is read as is and mirrored and the two MobileFaceNet embeddings are
averaged (test-time augmentation; training flips faces at random, augment.flip_p). Training never sees it,
it adds nothing to the state dict, and it makes the model's answer the same for a face and its mirror image."""
from __future__ import annotations

import pytest
import torch

from avemo.model.net import AVEmotionNet, ModelConfig

pytestmark = pytest.mark.unit


def _faces(seed: int = 0, frames: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2 * frames, 3, 14, 14, generator=g)         # smooth colour blobs, upsampled
    faces = torch.nn.functional.interpolate(base, size=112, mode="bilinear").view(2, frames, 3, 112, 112)
    return (faces * 255).round().to(torch.uint8)


def _pair(**kw):
    torch.manual_seed(0)
    plain = AVEmotionNet(ModelConfig(face_trainable="last", face_train_blocks=2, **kw))
    flip = AVEmotionNet(ModelConfig(face_trainable="last", face_train_blocks=2, face_flip_tta=True, **kw))
    # a random MobileFaceNet with fresh BatchNorm statistics answers almost the same for every face: calibrate
    # them on faces (cumulative averages) so that embeddings differ from face to face, as trained ones do
    for m in plain.face.cnn.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    plain.face.cnn.train()
    with torch.no_grad():
        plain.face.cnn(((_faces(9).flatten(0, 1).float() - 128) / 64).contiguous(memory_format=torch.channels_last))
    plain.train()
    flip.load_state_dict(plain.state_dict(), strict=True)        # same weights; strict: no new keys
    return plain, flip


def test_in_use_the_embedding_is_the_mean_of_the_face_and_its_mirror():
    plain, flip = _pair()
    plain.eval(), flip.eval()
    faces = _faces()
    with torch.no_grad():
        want = (plain.embed_faces(faces) + plain.embed_faces(faces.flip(-1))) / 2
        got = flip.embed_faces(faces)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert float((got - plain.embed_faces(faces)).abs().max()) > 1e-3   # the mirror moved it
        # a face and its mirror image now get the same answer, logits included
        torch.testing.assert_close(flip.embed_faces(faces.flip(-1)), got, atol=1e-5, rtol=1e-4)
        mask = torch.ones(2, 3, dtype=torch.bool)
        mel, mel_mask = torch.randn(2, 64, 50), torch.ones(2, 50, dtype=torch.bool)
        torch.testing.assert_close(flip(faces.flip(-1), mask, mel, mel_mask), flip(faces, mask, mel, mel_mask),
                                   atol=1e-5, rtol=1e-4)


def test_frames_without_a_face_stay_empty_rows():
    plain, flip = _pair()
    flip.eval()
    faces, mask = _faces(1), torch.tensor([[True, False, True], [False, False, False]])
    with torch.no_grad():
        emb = flip.embed_faces(faces, mask)
        whole = flip.embed_faces(faces)
    assert float(emb[~mask].abs().max()) == 0.0
    torch.testing.assert_close(emb[mask], whole[mask], atol=1e-5, rtol=1e-4)


def test_training_never_sees_it():
    plain, flip = _pair()
    plain.train(), flip.train()
    faces = _faces(2)
    torch.testing.assert_close(flip.embed_faces(faces), plain.embed_faces(faces))
    assert set(flip.state_dict()) == set(plain.state_dict())
