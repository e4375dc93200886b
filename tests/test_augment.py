"""Face augmentation of a whole batch at once (train/augment.py) against torchvision's per-image functional
ops, which it replaces in the loader, and its per-clip contract: one draw per clip for all its frames, frames
without a face left empty, clips without one untouched."""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from avemo.train.augment import augment_batch, augment_faces, face_draws, transform_faces
from avemo.train.config import AugmentConfig

SIZE = 112


def smooth_face(seed: int) -> torch.Tensor:
    """(3, 112, 112) uint8: smooth colour waves, so nearest sampling and rounding differ by a level or two."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    f = 5 + 10 * torch.rand(3, generator=g)
    return torch.stack([128 + 90 * torch.sin(xx / f[0] + yy / 23), 128 + 90 * torch.cos(yy / f[1]),
                        128 + 60 * torch.sin((xx + yy) / f[2])]).round().to(torch.uint8)


def torchvision_clip(frames: torch.Tensor, d: dict, i: int) -> torch.Tensor:
    """The per-clip pipeline the loader ran before, with clip i's draws."""
    x = frames.flip(-1) if d["flip"][i] else frames
    if d["grey"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    x = TF.adjust_brightness(x, float(d["brightness"][i]))
    x = TF.adjust_contrast(x, float(d["contrast"][i]))
    x = TF.adjust_saturation(x, float(d["saturation"][i]))
    shift = [round(float(d["shift"][i, 0]) * SIZE), round(float(d["shift"][i, 1]) * SIZE)]
    return TF.affine(x, angle=float(d["angle"][i]), translate=shift, scale=float(d["scale"][i]), shear=[0.0, 0.0])


def test_batch_transform_equals_torchvision_per_clip():
    torch.manual_seed(0)
    cfg = AugmentConfig(grey_p=0.3, brightness=0.4, contrast=0.4, saturation=0.4, rotate_deg=10, translate=0.08,
                        scale=0.1)
    n, t = 12, 2
    faces = torch.stack([torch.stack([smooth_face(2 * i), smooth_face(2 * i + 1)]) for i in range(n)])
    d = face_draws(n, cfg)
    assert d["flip"].any() and (~d["flip"]).any() and d["grey"].any()
    ours = transform_faces(faces, d)
    assert ours.shape == (n, t, 3, SIZE, SIZE) and ours.dtype == torch.uint8
    for i in range(n):
        ref = torchvision_clip(faces[i], d, i)
        diff = ours[i].int() - ref.int()
        # torchvision rounds down to uint8 after each of its four colour steps, the batch rounds once at the
        # end: ours is up to 4 levels above torchvision's, hardly ever below or further
        # (nearest sampling: a pixel centre that falls on a tie between two source pixels may go either way)
        assert ((diff < 0) | (diff > 4)).float().mean() < 0.01, i
        assert (diff.abs() > 6).float().mean() < 0.001 and 0 <= diff.float().mean() <= 3, (i, diff.float().mean())


def test_the_geometry_alone_matches_torchvision():
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, rotate_deg=10, translate=0.08, scale=0.1, flip_p=0.5)
    torch.manual_seed(1)
    faces = torch.stack([smooth_face(i)[None] for i in range(8)])
    d = face_draws(8, cfg)
    ours = transform_faces(faces, d)
    assert d["flip"].any() and (~d["flip"]).any()
    for i in range(8):   # the same pixels, but for the odd nearest-sampling tie that float order breaks apart
        assert (ours[i] == torchvision_clip(faces[i], d, i)).float().mean() > 0.999, i


def test_one_draw_per_clip_empty_frames_stay_empty_and_faceless_clips_untouched():
    torch.manual_seed(2)
    face = smooth_face(7)
    faces = torch.zeros(4, 3, 3, SIZE, SIZE, dtype=torch.uint8)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False], [True, True, False]])
    faces[mask] = face                     # the same face in every frame that has one
    out = augment_faces(faces, AugmentConfig(), mask)
    assert torch.equal(out[2], faces[2])                        # no face: not drawn, not touched
    assert not out[:, 2][~mask[:, 2]].any()                      # frames without a face stay zero
    for clip in (0, 1, 3):                                       # one draw for all frames of a clip
        frames = out[clip][mask[clip]]
        assert all(torch.equal(frames[0], f) for f in frames[1:])
        assert not torch.equal(frames[0], face)
    assert not torch.equal(out[0, 0], out[1, 0])                 # clips draw apart
    one = augment_faces(faces[1], AugmentConfig())               # one clip (T, 3, H, W) works alike
    assert one.shape == faces[1].shape and one.dtype == torch.uint8


def test_augment_batch_leaves_the_rest_of_the_batch_and_obeys_enabled():
    torch.manual_seed(3)
    faces = torch.stack([smooth_face(1)[None], smooth_face(2)[None]])
    batch = {"faces": faces, "face_mask": torch.ones(2, 1, dtype=torch.bool), "mel": torch.randn(2, 64, 64),
             "label": torch.tensor([1, 2])}
    out = augment_batch(batch, AugmentConfig())
    assert out["mel"] is batch["mel"] and out["label"] is batch["label"]
    assert not torch.equal(out["faces"], faces) and torch.equal(batch["faces"], faces)   # input not modified
    assert augment_batch(batch, AugmentConfig(enabled=False)) is batch


def test_mask_band_is_torchaudio_mask_along_axis():
    """The same draws mask the same band as torchaudio's SpecAugment mask, on both axes."""
    import torchaudio.functional as AF

    from avemo.train.augment import mask_band
    mel = torch.randn(64, 300)
    masked = 0
    for seed in range(40):
        for dim, width in ((0, 8), (1, 25)):
            torch.manual_seed(seed)
            ref = AF.mask_along_axis(mel[None], width, -7.0, axis=dim + 1)[0]
            torch.manual_seed(seed)
            ours = mel.clone()
            mask_band(ours, width, -7.0, dim)
            assert torch.equal(ours, ref), (seed, dim)
            masked += not torch.equal(ours, mel)
    assert masked > 60                                            # most draws mask a band at all


def test_non_square_geometry_matches_torchvision():
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, rotate_deg=15, translate=0.08, scale=0.1)
    torch.manual_seed(4)
    face = smooth_face(3)[:, :64, :]                             # 64 x 112
    faces = face[None, None].repeat(6, 1, 1, 1, 1)
    d = face_draws(6, cfg)
    ours = transform_faces(faces, d)
    for i in range(6):
        x = face.flip(-1) if d["flip"][i] else face
        shift = [round(float(d["shift"][i, 0]) * 112), round(float(d["shift"][i, 1]) * 64)]
        ref = TF.affine(x, angle=float(d["angle"][i]), translate=shift, scale=float(d["scale"][i]), shear=[0.0, 0.0])
        assert (ours[i, 0] == ref).float().mean() > 0.999, i


def test_contrast_pulls_each_frame_to_its_own_mean():
    """A dark and a bright frame of one clip: each moves towards its own mean grey, not the clip's."""
    cfg = AugmentConfig(flip_p=0, brightness=0, contrast=0.5, saturation=0, rotate_deg=0, translate=0, scale=0)
    torch.manual_seed(5)
    dark, bright = smooth_face(1) // 4, 255 - smooth_face(2) // 4
    faces = torch.stack([torch.stack([dark, bright])] * 4)
    d = face_draws(4, cfg)
    ours = transform_faces(faces, d)
    for i in range(4):
        for frame in range(2):
            ref = TF.adjust_contrast(faces[i, frame], float(d["contrast"][i]))
            assert (ours[i, frame].int() - ref.int()).abs().max() <= 1, (i, frame)


def test_faceless_clips_take_no_draws_and_chunking_changes_nothing(monkeypatch):
    import avemo.train.augment as augment
    faces = torch.stack([torch.stack([smooth_face(i), smooth_face(i + 50)]) for i in range(5)])
    mask = torch.ones(5, 2, dtype=torch.bool)
    torch.manual_seed(6)
    whole = augment_faces(faces, AugmentConfig(), mask)
    with_faceless = torch.cat([faces[:2], torch.zeros_like(faces[:1]), faces[2:]])
    mask_faceless = torch.cat([mask[:2], torch.zeros(1, 2, dtype=torch.bool), mask[2:]])
    torch.manual_seed(6)
    out = augment_faces(with_faceless, AugmentConfig(), mask_faceless)
    assert torch.equal(torch.cat([out[:2], out[3:]]), whole) and not out[2].any()
    monkeypatch.setattr(augment, "CHUNK_FRAMES", 4)              # two clips of two frames per chunk
    torch.manual_seed(6)
    assert torch.equal(augment_faces(faces, AugmentConfig(), mask), whole)


def test_mask_band_wider_than_the_axis_and_zero_width_as_torchaudio():
    import torchaudio.functional as AF

    from avemo.train.augment import mask_band
    mel = torch.randn(6, 40)
    for seed in range(30):
        torch.manual_seed(seed)
        ref = AF.mask_along_axis(mel[None], 9, 0.0, axis=1)[0]     # 9 > 6 mel bins
        after_ref = torch.rand(())
        torch.manual_seed(seed)
        ours = mel.clone()
        mask_band(ours, 9, 0.0, 0)
        assert torch.equal(ours, ref) and torch.equal(torch.rand(()), after_ref), seed   # same draws taken
    torch.manual_seed(0)
    ours = mel.clone()
    mask_band(ours, 0, 0.0, 1)
    after = torch.rand(())
    torch.manual_seed(0)
    assert torch.equal(ours, mel) and torch.equal(torch.rand(()), after)   # nothing drawn, nothing masked


def _tones(hz: list[float], sample_rate: int = 16000):
    import numpy as np
    t = np.arange(sample_rate) / sample_rate
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in hz)).astype(np.float32)


def test_frequency_warp_reads_as_the_tones_moved_by_its_factor():
    """A log-mel of three tones warped by alpha is the log-mel of the tones at alpha times their frequency
    (the build's own log_mel on real samples), up to the filterbank's resolution; alpha 1 is exact."""
    import pytest

    from avemo.core.errors import ConfigError
    from avemo.pipeline.audio import log_mel
    from avemo.pipeline.config import AudioConfig
    from avemo.train.augment import warp_frequency

    cfg = AudioConfig()
    tones = [300.0, 1200.0, 3000.0]
    mel = torch.tensor(log_mel(_tones(tones), 16000, cfg)).float()
    assert torch.equal(warp_frequency(mel, 1.0), mel)
    for alpha in (0.9, 1.1):
        want = torch.tensor(log_mel(_tones([f * alpha for f in tones]), 16000, cfg)).float().mean(1)
        got = warp_frequency(mel, alpha).mean(1)
        peaks = lambda p: sorted(torch.topk(p, 3).indices.tolist())   # noqa: E731
        assert all(abs(a - b) <= 1 for a, b in zip(peaks(got), peaks(want)))
        assert peaks(got) != peaks(mel.mean(1))                       # the peaks did move
        # the whole profile: 1.5x or more closer to the moved tones than the unwarped mel is (measured 2.0x, 3.3x)
        assert (got - want).abs().mean() * 1.5 < (mel.mean(1) - want).abs().mean()
    with pytest.raises(ConfigError, match="freq_warp"):
        AugmentConfig(freq_warp=0.35)


def test_frequency_warp_in_augment_audio_moves_f0_on_voiced_frames_only():
    from avemo.train.augment import augment_audio, warp_frequency

    cfg = AugmentConfig(freq_warp=0.1, gain_db=0.0, freq_masks=0, time_masks=0)
    mel = torch.randn(64, 20)
    pitch = torch.stack([torch.linspace(-1, 1, 20), (torch.arange(20) % 3 != 0).float() * 0.8])
    pitch[0, pitch[1] == 0] = 0.0
    torch.manual_seed(3)
    out, moved = augment_audio(mel.clone(), pitch.clone(), cfg)
    torch.manual_seed(3)
    alpha = 0.9 + 0.2 * float(torch.rand(()))                           # the one draw it made
    assert torch.allclose(out, warp_frequency(mel, alpha))
    voiced = pitch[1] > 0
    assert torch.allclose(moved[0][voiced], pitch[0][voiced] + torch.log2(torch.tensor(alpha)))
    assert torch.equal(moved[0][~voiced], torch.zeros(int((~voiced).sum())))
    assert torch.equal(moved[1], pitch[1])
    # off (0) draws nothing: the gain takes the first draw, and the next one is still the stream's second
    quiet = AugmentConfig(gain_db=6.0, freq_warp=0.0, freq_masks=0, time_masks=0)
    torch.manual_seed(3)
    gain = -6.0 + 12.0 * float(torch.rand(()))
    after = torch.rand(())
    torch.manual_seed(3)
    out = augment_audio(mel.clone(), None, quiet)[0]
    assert torch.allclose(out, mel + gain / 10.0 * math.log(10.0))
    assert torch.equal(torch.rand(()), after)


def test_random_erasing_blanks_one_rectangle_per_clip_on_all_its_frames():
    """augment.erase_p: each erased clip loses one rectangle, the same on every frame, filled with the ImageNet
    mean colour, of an area within [2 %, erase_area] of the crop; frames without a face stay empty."""
    from avemo.train.augment import ERASE_FILL
    torch.manual_seed(4)
    n, t = 16, 3
    faces = torch.stack([torch.stack([smooth_face(3 * i + k) for k in range(t)]) for i in range(n)])
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[0, 2] = False
    faces[0, 2] = 0
    plain = AugmentConfig(flip_p=0, brightness=0, contrast=0, saturation=0, rotate_deg=0, translate=0, scale=0)
    cfg = AugmentConfig(**{**plain.__dict__, "erase_p": 1.0, "erase_area": 0.2})
    out = augment_faces(faces, cfg, mask)
    fill = torch.tensor(ERASE_FILL, dtype=torch.uint8).view(3, 1, 1)
    # the fill is what the model's ImageNet normalisation maps to ~0 (torchvision's fill on normalised images)
    normalised = (torch.tensor(ERASE_FILL) / 255 - torch.tensor((0.485, 0.456, 0.406))) / torch.tensor((0.229, 0.224, 0.225))
    assert normalised.abs().max() < 0.01, normalised
    areas = []
    for i in range(n):
        changed = (out[i] != faces[i]).any(1)                    # (T, H, W): the pixels the eraser wrote
        assert changed[0].any(), i
        frames = [k for k in range(t) if mask[i, k]]
        assert all(torch.equal(changed[frames[0]], changed[k]) for k in frames[1:]), i   # same place on all
        rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert (out[i][frames][:, :, box[0], box[1]] == fill).all(), i                   # one filled rectangle
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[box] = True
        assert torch.equal(changed[0], inside), i                # nothing changed outside it
        areas.append(len(rows) * len(cols) / SIZE ** 2)
    assert not out[0, 2].any()                                    # a frame without a face stays empty
    assert min(areas) >= 0.015 and max(areas) <= 0.21 and max(areas) - min(areas) > 0.05, areas
    # erase_p 0 (the default) draws nothing: the other augmentations' stream is untouched, so older runs reproduce
    torch.manual_seed(5)
    off = augment_faces(faces, AugmentConfig(), mask)
    after_off = torch.rand(3)
    torch.manual_seed(5)
    draws = face_draws(n, AugmentConfig())
    assert torch.equal(off, transform_faces(faces, draws) * mask.view(n, t, 1, 1, 1))
    assert torch.equal(torch.rand(3), after_off)
    half = augment_faces(faces, AugmentConfig(**{**plain.__dict__, "erase_p": 0.5}), mask)
    erased = [(half[i] != faces[i]).any() for i in range(n)]
    assert 0 < sum(erased) < n                                    # erase_p is a probability per clip


def test_erase_settings_are_checked():
    import pytest

    from avemo.core.errors import ConfigError
    with pytest.raises(ConfigError, match="erase_p"):
        AugmentConfig(erase_p=1.5)
    with pytest.raises(ConfigError, match="erase_area"):
        AugmentConfig(erase_area=0.01)
    with pytest.raises(ConfigError, match="erase_area"):
        AugmentConfig(erase_area=0.6)
