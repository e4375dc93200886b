"""Per-clip augmentation on tensors, in the DataLoader workers (train split only).

faces (T, 3, 112, 112) uint8: one flip / colour jitter / small affine per clip, so time stays coherent.
mel (n_mels, F) float32 log-power (natural log): speed perturbation (a time stretch of the log-mel), random
gain, stationary noise at a random SNR, then SpecAugment frequency and time masks.
Draws come from torch's global RNG, which DataLoader seeds per worker from the main process's RNG, so a
run resumed from a checkpoint (which restores that RNG) draws the same augmentations.
"""
from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as TF

from avemo.train.config import AugmentConfig


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def augment_faces(faces: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    if float(torch.rand(())) < cfg.flip_p:
        faces = faces.flip(-1)
    if cfg.grey_p and float(torch.rand(())) < cfg.grey_p:
        faces = TF.rgb_to_grayscale(faces, num_output_channels=3)
    faces = TF.adjust_brightness(faces, _uniform(1 - cfg.brightness, 1 + cfg.brightness))
    faces = TF.adjust_contrast(faces, _uniform(1 - cfg.contrast, 1 + cfg.contrast))
    faces = TF.adjust_saturation(faces, _uniform(1 - cfg.saturation, 1 + cfg.saturation))
    size = faces.shape[-1]
    shift = [round(_uniform(-cfg.translate, cfg.translate) * size) for _ in range(2)]
    return TF.affine(faces, angle=_uniform(-cfg.rotate_deg, cfg.rotate_deg), translate=shift,
                     scale=_uniform(1 - cfg.scale, 1 + cfg.scale), shear=[0.0, 0.0])


def augment_mel(mel: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    return augment_audio(mel, None, cfg)[0]


def augment_audio(mel: torch.Tensor, pitch: torch.Tensor | None, cfg: AugmentConfig):
    """(mel, pitch track or None) -> the same, augmented: the pitch track (2, F) is time-stretched with its
    mel; gain, noise and the masks act on the mel alone (they are not in its F0 or periodicity)."""
    if mel.shape[-1] == 0:
        return mel, pitch
    if cfg.speed:
        frames = max(1, round(mel.shape[-1] / _uniform(1 - cfg.speed, 1 + cfg.speed)))
        # the track as (F0 x periodicity, periodicity): an unvoiced frame (F0 row 0) then weighs nothing in
        # its voiced neighbour's interpolated F0
        both = mel if pitch is None else torch.cat([mel, pitch[:1] * pitch[1:], pitch[1:]])
        stretched = torch.nn.functional.interpolate(both[None], size=frames, mode="linear", align_corners=False)[0]
        stretched = stretched[:, : mel.shape[-1]]   # a slow-down keeps the clip's length (max_mel_frames holds)
        if pitch is not None:
            weighted, periodicity = stretched[-2], stretched[-1]
            f0 = torch.where(periodicity > 0, weighted / periodicity.clamp(min=1e-6), torch.zeros_like(weighted))
            pitch = torch.stack([f0, periodicity])
        mel = stretched[: mel.shape[0]]
    mel = mel + _uniform(-cfg.gain_db, cfg.gain_db) / 10.0 * math.log(10.0)
    if cfg.noise_p and float(torch.rand(())) < cfg.noise_p:
        snr_db = _uniform(cfg.noise_snr_db, cfg.noise_snr_db + 20.0)
        power = torch.logsumexp(mel, dim=(0, 1)) - math.log(mel.numel())     # log of the mean power
        noise = power - snr_db / 10.0 * math.log(10.0) + 0.5 * torch.randn(mel.shape[0], 1)  # coloured a little
        mel = torch.logaddexp(mel, noise.expand_as(mel))
    fill = float(mel.mean())
    for _ in range(cfg.freq_masks):
        mel = AF.mask_along_axis(mel.unsqueeze(0), cfg.freq_mask_width, fill, axis=1).squeeze(0)
    for _ in range(cfg.time_masks):
        width = min(cfg.time_mask_width, mel.shape[-1] // 4)
        if width > 0:
            mel = AF.mask_along_axis(mel.unsqueeze(0), width, fill, axis=2).squeeze(0)
    return mel, pitch


def augment_sample(sample: dict, cfg: AugmentConfig) -> dict:
    if not cfg.enabled:
        return sample
    mel, pitch = augment_audio(sample["mel"], sample.get("pitch"), cfg)
    out = dict(sample, faces=augment_faces(sample["faces"], cfg), mel=mel)
    if pitch is not None:
        out["pitch"] = pitch
    return out
