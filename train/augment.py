"""Training augmentation on tensors, in the DataLoader workers (train split only), one draw per clip.

faces (B, T, 3, 112, 112) uint8, a whole collated batch at once (augment_batch, after collation): one flip /
colour jitter / small affine / erased rectangle per clip, for all its frames, so time stays coherent.
mel (n_mels, F) float32 log-power (natural log), per clip before collation (augment_sample): speed
perturbation (a time stretch of the log-mel), a vocal tract length warp of its frequency axis, random gain,
stationary noise at a random SNR, then SpecAugment frequency and time masks.
Draws come from torch's global RNG, which train/data.py seeds in each worker from (seed, epoch, rank, worker)
at every epoch, so a run resumed at an epoch draws the augmentations an uninterrupted one draws.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomErasing

from avemo.core.melscale import LOG_MEL_RATE, warp_positions
from avemo.model.net import FACE_MEAN
from avemo.train.config import AugmentConfig


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


_GREY = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights
CHUNK_FRAMES = 64   # face frames transformed at once: ~10 MB of float per copy at 112 px (a MELD batch of 32
#                     clips x 16 frames whole would be 77 MB per copy, several copies per loader worker)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(n, T, 3, H, W) float -> (n, T, 1, H, W): one matrix product over the channels."""
    n, t, _, h, w = x.shape
    return (torch.tensor(_GREY, device=x.device) @ x.reshape(n * t, 3, h * w)).view(n, t, 1, h, w)


def face_draws(n: int, cfg: AugmentConfig) -> dict[str, torch.Tensor]:
    """One draw per clip of n: flip and grey (bool), brightness/contrast/saturation factors, rotation in
    degrees, zoom, and shift in whole pixels as fractions of the size (n, 2: x, y)."""
    u = torch.rand(n, 9)
    lerp = lambda amount, col: (1 - amount) + 2 * amount * u[:, col]   # noqa: E731  factor in 1 +- amount
    return {"flip": u[:, 0] < cfg.flip_p, "grey": u[:, 1] < cfg.grey_p,
            "brightness": lerp(cfg.brightness, 2), "contrast": lerp(cfg.contrast, 3),
            "saturation": lerp(cfg.saturation, 4), "angle": cfg.rotate_deg * (2 * u[:, 5] - 1),
            "scale": lerp(cfg.scale, 6), "shift": cfg.translate * (2 * u[:, 7:9] - 1)}


def transform_faces(faces: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, T, 3, H, W) uint8 and face_draws(n) -> the transformed clips, uint8: flip, grey, brightness,
    contrast (towards each frame's mean grey), saturation (towards each pixel's grey), then the affine about
    the centre (nearest, zero fill), in torchvision's order and definitions; in float until one rounding.
    The colour steps are per pixel (contrast: per frame), so the flip is folded into the affine's sampling
    grid, and a clip's frames are sampled as channels of one image through its one grid."""
    n, t, c, h, w = faces.shape
    view = (n, 1, 1, 1, 1)
    draws = {k: v.to(faces.device) for k, v in draws.items()}
    x = faces.to(torch.float32, copy=True)   # in place from here: each step writes over the last
    if draws["grey"].any():
        x = torch.where(draws["grey"].view(view), _grey(x).expand_as(x), x)
    x.mul_(draws["brightness"].view(view)).clamp_(0, 255)
    contrast = draws["contrast"].view(view)
    mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)          # each frame's mean grey
    x.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 255)
    saturation = draws["saturation"].view(view)
    x = torch.lerp(_grey(x).expand_as(x), x, saturation).clamp_(0, 255)
    # output pixel p reads input R(angle)^-1 (p - shift) / scale in pixels about the centre, then mirrored if
    # flipped; in grid_sample's [-1, 1] pixel-centre coordinates (align_corners=False) a whole-pixel shift s
    # is 2 s / size and the rotation's off-diagonal terms take the aspect ratio; torchvision's positive angle
    # turns the picture anticlockwise
    size = torch.tensor([w, h], dtype=torch.float32, device=faces.device)
    shift = torch.round(draws["shift"] * size) * 2 / size
    angle = torch.deg2rad(draws["angle"])
    cos, sin = torch.cos(angle) / draws["scale"], torch.sin(angle) / draws["scale"]
    rot = torch.stack([torch.stack([cos, sin * h / w], 1), torch.stack([-sin * w / h, cos], 1)], 1)   # (n, 2, 2)
    rot[:, 0] *= torch.where(draws["flip"], -1.0, 1.0)[:, None]
    offset = -(rot @ shift[:, :, None])[:, :, 0]                                     # (n, 2)
    xs = (torch.arange(w, dtype=torch.float32, device=faces.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=torch.float32, device=faces.device) * 2 + 1) / h - 1
    # grid[k, i, j] = rot[k] @ (xs[j], ys[i]) + offset[k]: by broadcasting, not affine_grid's batched matmul
    # over a (n, H, W, 3) base (2-4x the time for 24 clips on one thread)
    grid = (rot[:, None, None, :, 0] * xs[None, None, :, None] + rot[:, None, None, :, 1] * ys[None, :, None, None]
            + offset[:, None, None, :])                                               # (n, H, W, 2)
    x = F.grid_sample(x.reshape(n, t * c, h, w), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x.reshape(n, t, c, h, w).round_().to(torch.uint8)


def augment_faces(faces: torch.Tensor, cfg: AugmentConfig, face_mask: torch.Tensor | None = None) -> torch.Tensor:
    """faces (B, T, 3, H, W) or one clip's (T, 3, H, W) uint8 -> the same, augmented: per clip one horizontal
    flip, grey, brightness/contrast/saturation and affine (rotation, shift, zoom; nearest, zero fill) draw,
    then, when augment.erase_p > 0, one erased rectangle (face_eraser), each applied to all its frames so
    time stays coherent. face_mask (B, T): only clips with a face are drawn and
    computed, and frames without one stay zero.

    The whole batch at once (transform_faces): broadcast colour factors and one nearest sampling grid per
    clip, in float until one rounding at the end. The same transforms as torchvision's per-image functional
    ops (adjust_brightness/contrast/saturation, affine; tests/test_augment.py compares the two), which the
    loader called one clip at a time, rounding to uint8 after every step and on faceless clips too: 2.4x the
    time per batch of the real recipe, of which ~1.3x is the faceless clips now skipped
    (bench/results/loader_cpu.md)."""
    if faces.dim() == 4:
        return augment_faces(faces[None], cfg, None if face_mask is None else face_mask[None])[0]
    b, t, c, h, w = faces.shape
    mask = torch.ones(b, t, dtype=torch.bool, device=faces.device) if face_mask is None else face_mask.bool()
    rows = mask.any(1).nonzero().flatten()
    n = int(rows.numel())
    if n == 0 or t == 0:
        return faces
    draws = face_draws(n, cfg)               # all clips' draws first: the chunking below does not change them
    eraser = face_eraser(cfg)
    out = faces.clone()
    step = max(1, CHUNK_FRAMES // t)         # clips per chunk: a bounded float working set at any clip length
    for lo in range(0, n, step):
        part = rows[lo: lo + step]
        x = transform_faces(faces[part], {k: v[lo: lo + len(part)] for k, v in draws.items()})
        if eraser is not None:
            for k in range(len(part)):
                eraser(x[k])                 # (T, 3, H, W), in place: one rectangle on all the clip's frames
        out[part] = x * mask[part].view(len(part), t, 1, 1, 1)       # frames without a face stay empty
    return out


ERASE_FILL = tuple(round(255 * m) for m in FACE_MEAN)   # the ImageNet mean colour: ~0 after the model's normalisation


def face_eraser(cfg: AugmentConfig) -> RandomErasing | None:
    """torchvision's RandomErasing for augment.erase_p (None when off, so it draws nothing and a run without
    it reproduces older ones): called on one clip's (T, 3, H, W) uint8 faces, with probability erase_p it
    fills one rectangle of area 2 %-erase_area of the crop and aspect ratio 0.3-3.3 (torchvision redraws one
    that does not fit, up to 10 times) at the same place on every frame, in place, with ERASE_FILL, which the
    model's ImageNet normalisation maps to ~0 (within 0.01; torchvision's default fill on normalised
    images). Its draws come from torch's global RNG, like the rest of this module."""
    if cfg.erase_p <= 0:
        return None
    return RandomErasing(p=cfg.erase_p, scale=(0.02, cfg.erase_area), ratio=(0.3, 3.3), value=list(ERASE_FILL),
                         inplace=True)


def augment_batch(batch: dict, cfg: AugmentConfig) -> dict:
    """A collated training batch -> the same with its faces augmented (augment_faces), then mixed (mixup,
    when cfg.mixup > 0); its log-mels were augmented per clip before batching (augment_sample), as their
    lengths differ."""
    if not cfg.enabled:
        return batch
    batch = dict(batch, faces=augment_faces(batch["faces"], cfg, batch["face_mask"]))
    return mixup(batch, cfg.mixup) if cfg.mixup > 0 else batch


def mixup(batch: dict, alpha: float) -> dict:
    """Mixup (Zhang et al. 2018) within a batch, among clips with the same modalities: each clip is mixed
    with a partner drawn from the clips that have a face if it has one and a voice if it has one (a voice
    is mixed with a voice, a face with a face; a face-only FER image never gains a voice), with one weight
    lam ~ Beta(alpha, alpha) for the batch, folded to >= 0.5 so every clip stays mostly itself. Where both
    clips have data (face frames both hold, log-mel frames within both lengths) it becomes lam * own +
    (1 - lam) * partner; elsewhere the clip keeps its own data and its masks stay its own (a partner's
    padding is not silence: raw log-mel 0 is loud, and marking it valid would skew the clip's utterance
    statistics). Pitch rows, when the shards carry them, are mixed with the mel rows. The batch gains
    `mix_index` (B,) (each clip's partner; itself when it has none) and `mix_lam` (a 0-d tensor): the loss is
    lam * CE(label) + (1 - lam) * CE(label[mix_index]) (train_step). Draws come from torch's global RNG, like
    every augmentation here."""
    face_mask, mel_mask = batch["face_mask"], batch["mel_mask"]
    b = face_mask.shape[0]
    group = face_mask.any(1).long() * 2 + mel_mask.any(1).long()          # 0..3: which modalities a clip has
    # two random orders that both sort by group: position k holds a clip of the same group in each, so
    # pairing them gives every clip a random partner of its own group (possibly itself)
    first = torch.argsort(group * 2 + torch.rand(b))
    second = torch.argsort(group * 2 + torch.rand(b))
    index = torch.empty(b, dtype=torch.long)
    index[first] = second
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)
    src = batch["faces"]
    faces = src.clone()
    both = (face_mask & face_mask[index]).nonzero()                       # (N, 2): clip, frame
    for lo in range(0, len(both), CHUNK_FRAMES):                          # a bounded float working set
        clip, frame = both[lo: lo + CHUNK_FRAMES].unbind(1)
        mixed = src[clip, frame].float().mul_(lam).add_(src[index[clip], frame].float(), alpha=1 - lam)
        faces[clip, frame] = mixed.round_().to(src.dtype)
    mel = batch["mel"]
    mel = torch.where((mel_mask & mel_mask[index]).unsqueeze(1), lam * mel + (1 - lam) * mel[index], mel)
    return dict(batch, faces=faces, mel=mel, mix_index=index, mix_lam=torch.tensor(lam))


def warp_frequency(mel: torch.Tensor, alpha: float, sample_rate: int = LOG_MEL_RATE) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton 2013) of a log-mel (n_mels, F): the spectrum as a
    speaker whose formants lie alpha times higher would give it, S'(f) = S(f / alpha). Each bin of the
    build's mel filterbank reads the log-power at its centre frequency / alpha, interpolated linearly between
    the two nearest bins (avemo.core.melscale.warp_positions, shared with the model's model.voice_warp_tta). A
    pure scaling, without Jaitly & Hinton's bend near the top: at alpha 0.9 the top 3-4 of 64 bins repeat the
    last one. alpha 1 gives the mel back exactly. Written here because torchaudio's transforms warp a linear
    spectrogram (or stretch time), not a finished log-mel, and the shards keep only the log-mel."""
    lo, hi, w = warp_positions(mel.shape[0], alpha, sample_rate)
    weight = torch.from_numpy(w).to(mel.dtype)[:, None]
    return mel[torch.from_numpy(lo)] * (1 - weight) + mel[torch.from_numpy(hi)] * weight


def augment_mel(mel: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    return augment_audio(mel, None, cfg)[0]


def augment_audio(mel: torch.Tensor, pitch: torch.Tensor | None, cfg: AugmentConfig):
    """(mel, pitch track or None) -> the same, augmented: the pitch track (2, F) is time-stretched with its
    mel, and its F0 moves by the frequency warp's factor on voiced frames; gain, noise and the masks act on
    the mel alone (they are not in its F0 or periodicity)."""
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
    if cfg.freq_warp:
        alpha = _uniform(1 - cfg.freq_warp, 1 + cfg.freq_warp)
        mel = warp_frequency(mel, alpha)
        if pitch is not None:
            pitch = torch.stack([torch.where(pitch[1] > 0, pitch[0] + math.log2(alpha), pitch[0]), pitch[1]])
    mel = mel + _uniform(-cfg.gain_db, cfg.gain_db) / 10.0 * math.log(10.0)
    if cfg.noise_p and float(torch.rand(())) < cfg.noise_p:
        snr_db = _uniform(cfg.noise_snr_db, cfg.noise_snr_db + 20.0)
        power = torch.logsumexp(mel, dim=(0, 1)) - math.log(mel.numel())     # log of the mean power
        noise = power - snr_db / 10.0 * math.log(10.0) + 0.5 * torch.randn(mel.shape[0], 1)  # coloured a little
        mel = torch.logaddexp(mel, noise.expand_as(mel))
    fill = float(mel.mean())                 # mel is this function's own tensor since the gain: masked in place
    for _ in range(cfg.freq_masks):
        mask_band(mel, cfg.freq_mask_width, fill, dim=0)
    for _ in range(cfg.time_masks):
        width = min(cfg.time_mask_width, mel.shape[-1] // 4)
        if width > 0:
            mask_band(mel, width, fill, dim=1)
    return mel, pitch


def mask_band(mel: torch.Tensor, max_width: int, fill: float, dim: int) -> None:
    """SpecAugment's mask of (n_mels, F) in place: a band of dim (0: mel bins, 1: frames) up to max_width wide
    set to fill. The draws and the band are torchaudio.functional.mask_along_axis's (tests/test_augment.py),
    written as a slice: that builds a full-size mask and a new tensor per call, 0.2 ms each, four per clip.
    Like it, a max_width under 1 draws nothing, and a band wider than the axis masks what lies on it."""
    if max_width < 1:
        return
    width = torch.rand(1) * max_width
    start = torch.rand(1) * (mel.shape[dim] - width)
    lo = int(start.long())                  # towards zero, as torchaudio's .long()
    hi = min(lo + int(width.long()), mel.shape[dim])
    lo = max(lo, 0)
    if hi > lo:
        mel.narrow(dim, lo, hi - lo).fill_(fill)


def augment_sample(sample: dict, cfg: AugmentConfig) -> dict:
    if not cfg.enabled:
        return sample
    mel, pitch = augment_audio(sample["mel"], sample.get("pitch"), cfg)
    out = dict(sample, mel=mel)          # its faces: augment_batch, after collation
    if pitch is not None:
        out["pitch"] = pitch
    return out
