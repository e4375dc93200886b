"""augment.mixup: clips are mixed with partners of the same modalities in a training batch (faces with
faces, voices with voices), and the loss weighs each clip's two labels by the mixing weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avemo.train.augment import augment_batch, mixup
from avemo.train.config import AugmentConfig, OptimConfig
from avemo.train.loop import train_step

pytestmark = pytest.mark.unit


def _batch(n: int = 24) -> dict:
    """Clips of the three kinds a mixed-set batch holds (face-only, voice-only, both), each with its own values."""
    g = torch.Generator().manual_seed(0)
    kind = torch.arange(n) % 3                                         # 0 face-only, 1 voice-only, 2 both
    face_mask = torch.zeros(n, 2, dtype=torch.bool)
    mel_mask = torch.zeros(n, 50, dtype=torch.bool)
    for i in range(n):
        if kind[i] != 1:
            face_mask[i, : 1 + i % 2] = True                           # 1 or 2 face frames
        if kind[i] != 0:
            mel_mask[i, : 20 + i] = True                               # voices of different lengths
    faces = torch.randint(0, 256, (n, 2, 3, 8, 8), generator=g, dtype=torch.uint8) * face_mask[..., None, None, None]
    mel = torch.randn(n, 16, 50, generator=g) * mel_mask[:, None]
    return {"faces": faces, "face_mask": face_mask, "mel": mel, "mel_mask": mel_mask,
            "label": torch.arange(n) % 7, "key": [f"c{i}" for i in range(n)]}


def test_partners_share_the_modalities_and_both_clips_data_is_mixed_where_both_have_it():
    torch.manual_seed(1)
    batch = _batch()
    out = mixup(batch, 0.4)
    idx, lam = out["mix_index"], float(out["mix_lam"])
    has = lambda b: (b["face_mask"].any(1), b["mel_mask"].any(1))    # noqa: E731
    face, voice = has(batch)
    assert torch.equal(face[idx], face) and torch.equal(voice[idx], voice)   # a partner of its own kind
    assert sorted(idx.tolist()) == list(range(24))                   # a permutation: every clip is a partner once
    assert (idx != torch.arange(24)).sum() >= 12                    # most clips are mixed with another one
    assert 0.5 <= lam <= 1.0
    mel_both = (batch["mel_mask"] & batch["mel_mask"][idx])[:, None].expand_as(batch["mel"])
    torch.testing.assert_close(out["mel"][mel_both], (lam * batch["mel"] + (1 - lam) * batch["mel"][idx])[mel_both])
    assert torch.equal(out["mel"][~mel_both], batch["mel"][~mel_both])   # own data and own padding elsewhere
    assert (batch["mel_mask"] & ~batch["mel_mask"][idx]).any()          # some clips outlast their partner
    face_both = batch["face_mask"] & batch["face_mask"][idx]
    want = (lam * batch["faces"].float() + (1 - lam) * batch["faces"][idx].float()).round().to(torch.uint8)
    assert out["faces"].dtype == torch.uint8 and torch.equal(out["faces"][face_both], want[face_both])
    assert torch.equal(out["faces"][~face_both], batch["faces"][~face_both])
    assert (batch["face_mask"] & ~batch["face_mask"][idx]).any()        # a 2-frame clip with a 1-frame partner
    assert out["mel_mask"] is batch["mel_mask"] and out["face_mask"] is batch["face_mask"]   # masks stay own
    assert (out["mel"] != batch["mel"]).any() and (out["faces"] != batch["faces"]).any()
    assert out["label"] is batch["label"] and out["key"] is batch["key"]


def test_lam_follows_its_beta_and_off_means_untouched():
    torch.manual_seed(2)
    lams = torch.tensor([float(mixup(_batch(6), 0.2)["mix_lam"]) for _ in range(400)])
    assert lams.min() >= 0.5 and lams.max() <= 1.0
    assert (lams > 0.95).float().mean() > 0.4                        # Beta(0.2, 0.2): mostly near 0 or 1
    lams = torch.tensor([float(mixup(_batch(6), 4.0)["mix_lam"]) for _ in range(400)])
    assert (lams < 0.75).float().mean() > 0.6                        # Beta(4, 4): mostly near the middle
    batch = _batch()
    plain = augment_batch(batch, AugmentConfig())                    # mixup 0 (the default): no partner
    assert "mix_index" not in plain and torch.equal(plain["mel"], batch["mel"])
    assert "mix_lam" in augment_batch(batch, AugmentConfig(mixup=0.4))
    with pytest.raises(Exception, match="mixup"):
        AugmentConfig(mixup=-1.0)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 7)

    def forward(self, faces, face_mask, mel, mel_mask):
        return self.fc(mel.mean(-1))


def test_the_loss_weighs_both_labels_by_lam():
    torch.manual_seed(3)
    batch = mixup(_batch(), 1.0)
    lam, idx = float(batch["mix_lam"]), batch["mix_index"]
    net = _Linear()
    with torch.no_grad():
        net.fc.weight.mul_(30.0)                                      # confident logits: the label matters
    weights = torch.linspace(0.5, 1.5, 7)
    optim = OptimConfig(label_smoothing=0.1)
    with torch.no_grad():
        logits = net(None, None, batch["mel"], None)
    want = lam * F.cross_entropy(logits, batch["label"], weight=weights, label_smoothing=0.1) + (1 - lam) * \
        F.cross_entropy(logits, batch["label"][idx], weight=weights, label_smoothing=0.1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss, _, _ = train_step(net, opt, None, batch, optim, weights)
    torch.testing.assert_close(loss, want)
    plain, _, _ = train_step(net, opt, None, {k: v for k, v in batch.items() if not k.startswith("mix_")}, optim,
                             weights)
    assert abs(float(plain.detach()) - float(want)) > 1e-3                    # the partner's label changed the loss
