"""model.face_colour=grey: every face is read as grey (luma in all three channels) by the model itself, so
training, evaluate, predict and the exported graph see faces alike. A model that learnt from grey faces
(FER2013) then meets colour faces the way it learnt; on grey faces the setting changes nothing, and it adds
nothing to the state dict (checkpoints load either way)."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from avemo.model.net import AVEmotionNet, ModelConfig

pytestmark = pytest.mark.unit


def _faces(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2, 3, 3, 14, 14, generator=g)              # smooth colour blobs, upsampled
    faces = torch.nn.functional.interpolate(base.flatten(0, 1), size=112, mode="bilinear").view(2, 3, 3, 112, 112)
    return (faces * 255).round().to(torch.uint8)


def _pair():
    torch.manual_seed(0)
    rgb = AVEmotionNet(ModelConfig(face_trainable="none")).eval()
    grey = AVEmotionNet(ModelConfig(face_trainable="none", face_colour="grey")).eval()
    grey.load_state_dict(rgb.state_dict(), strict=True)          # same weights; strict: no new keys
    return rgb, grey


def _cnn_input(net: AVEmotionNet, faces: torch.Tensor) -> torch.Tensor:
    """What MobileFaceNet receives (after the grey conversion and the normalisation)."""
    seen = []
    cnn_embed = net.face.cnn_embed
    net.face.cnn_embed = lambda x: seen.append(x.clone()) or cnn_embed(x)   # type: ignore[method-assign]
    with torch.no_grad():
        net.embed_faces(faces)
    del net.face.cnn_embed                                            # the method again
    return seen[0]


def test_grey_reads_a_colour_face_as_its_grey_version():
    rgb, grey = _pair()
    colour = _faces()
    as_grey = TF.rgb_to_grayscale(colour.flatten(0, 1), num_output_channels=3).view_as(colour)
    x, y, z = _cnn_input(grey, colour), _cnn_input(grey, as_grey), _cnn_input(rgb, colour)
    one_level = 1.0 / (255 * min(0.229, 0.224, 0.225))                 # one uint8 step after normalisation
    assert float((x - y).abs().max()) <= 1.5 * one_level               # the uint8 grey image's rounding only
    u, w = x * grey.face.std + grey.face.mean, z * rgb.face.std + rgb.face.mean   # back to 0..255
    assert float((u[:, 0] - u[:, 1]).abs().max()) < 1e-3 and float((u[:, 2] - u[:, 1]).abs().max()) < 1e-3
    assert float((w[:, 0] - w[:, 1]).abs().mean()) > 10                # the RGB model sees the colour


def test_on_grey_faces_the_setting_changes_nothing():
    """Why a run on grey training data (FER2013) is the same model with or without it."""
    rgb, grey = _pair()
    faces = TF.rgb_to_grayscale(_faces(1).flatten(0, 1), num_output_channels=3).view(2, 3, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(grey.embed_faces(faces), rgb.embed_faces(faces), atol=1e-4, rtol=1e-4)
    assert set(grey.state_dict()) == set(rgb.state_dict())
