"""The seed's model done properly: MobileFaceNet per face frame + CNN on log-mel, an LSTM over time per
modality with masks (padding and frames without a face), modality-aware fusion, 7 logits.

Shapes: faces (B, T, 3, 112, 112) uint8, face_mask (B, T) bool, mel (B, n_mels, F) float, mel_mask (B, F)
bool -> logits (B, 7). Static shapes throughout (no packing, no boolean indexing) when traced or compiled,
so the same module trains, compiles, and exports to ONNX / TorchScript; in eager mode only frames with a
face go through the face CNN (FaceEncoder.embed) and only clips with audio through the audio CNN
(AudioEncoder.forward). Either way an absent modality never moves the other branch: the audio CNN's
BatchNorm takes its batch statistics over valid time steps only (MaskedBatchNorm2d), so neither face-only
clips' empty mels nor padding skew them, and padding is zero before every convolution.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avemo.core.melscale import warp_positions
from avemo.model.config import PITCH_ROWS, ModelConfig
from avemo.model.mobilefacenet import MobileFaceNet, fold_batchnorm
from avemo.shards.labels import EMOTIONS

LUMA = (0.299, 0.587, 0.114)         # ITU-R BT.601, as PIL's and torchvision's rgb_to_grayscale
FACE_MEAN = (0.485, 0.456, 0.406)   # MobileFaceNet was trained on ImageNet-normalised RGB
FACE_STD = (0.229, 0.224, 0.225)
# Frames per pass through the frozen face blocks (face_trainable=last). They run without autograd, so only
# one block's input and output are alive at a time, but at 112x112 those are large: 64 frames through the
# first blocks make ~100 MB tensors, and glibc's heap (kept, avemo/core/memory.py) keeps every high-water mark
# and fragments around the batch-dependent sizes. In passes of 16 the same work peaked at 2.35 vs 3.41 GB (the
# run's processes, 2 epochs of the real recipe) at the same speed: bench/results/train_memory_chunk.md.
FROZEN_CHUNK = 16
PROSODY_DIM = 16     # model.pitch: features per audio CNN frame from the pitch track


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # x (B, T, C), mask (B, T) bool -> (B, C); all-masked rows give 0
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class StatsPool(nn.Module):
    """(B, T, C) frames -> (B, C): the masked mean and standard deviation of each channel over the clip's
    frames, weighted equally ("stats") or by a learnt frame score ("attention", attentive statistics pooling,
    Okabe et al. 2018), projected back to C. The deviation says how the voice moves (pitch and energy
    contours), which a mean over frames averages away."""

    def __init__(self, channels: int, attention: bool):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(channels, 64), nn.Tanh(), nn.Linear(64, 1)) if attention else None
        self.proj = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.score is None:
            w = mask.to(x.dtype).unsqueeze(-1)
            w = w / w.sum(1, keepdim=True).clamp(min=1.0)                    # (B, T, 1), rows sum to 1 (or 0)
        else:
            logits = self.score(x).masked_fill(~mask.unsqueeze(-1), -1e4)     # float16-safe "minus infinity"
            w = torch.softmax(logits.float(), dim=1).to(x.dtype) * mask.unsqueeze(-1).to(x.dtype)
        mean = (x * w).sum(1)
        std = ((x - mean.unsqueeze(1)) ** 2 * w).sum(1).clamp(min=1e-5).sqrt()
        return self.proj(torch.cat([mean, std], dim=1)) * mask.any(1, keepdim=True).to(x.dtype)


class VoiceStats(nn.Module):
    """model.voice_stats: a linear classifier on a clip's utterance statistics (per mel band, the mean less
    the clip's overall mean, and the standard deviation, over its valid frames: 2 x n_mels numbers that
    neither the recording's gain nor the words said set), fitted on the train voices before training
    (train/voice_stats.py) and kept in buffers: the optimiser never moves it. forward gives its
    log-probabilities, zero for clips without audio. An unfitted one (all zeros) gives a constant: no vote.
    An emotion without train voices (`present` 0) gets the mean log-probability of the others: no vote
    against it (its fitted probability would be ~0 and veto it for every clip, whatever the face shows).
    The prosody probe (bench/results/prosody_probe.md) found such a classifier, fused late with the trained
    voice branch, adds what the branch does not take from its mels."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    present: torch.Tensor

    def __init__(self, n_mels: int):
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("mean", torch.zeros(2 * n_mels))
        self.register_buffer("std", torch.ones(2 * n_mels))
        self.register_buffer("weight", torch.zeros(len(EMOTIONS), 2 * n_mels))
        self.register_buffer("bias", torch.zeros(len(EMOTIONS)))
        self.register_buffer("present", torch.ones(len(EMOTIONS)))       # 1 = the fit saw voices of it

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "present", torch.ones(len(EMOTIONS)))   # fitted before `present` existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        """(B, rows, F) raw log-mel (pitch rows after the bins ignored), (B, F) -> (B, 2 x n_mels)."""
        mel = mel[:, : self.n_mels].float()
        w = mel_mask.unsqueeze(1).to(mel.dtype)                      # (B, 1, F)
        n = w.sum(2).clamp(min=1.0)                                  # (B, 1)
        mean = (mel * w).sum(2) / n                                  # (B, n_mels)
        std = (((mel - mean.unsqueeze(2)) ** 2 * w).sum(2) / n).clamp(min=0.0).sqrt()
        return torch.cat([mean - mean.mean(1, keepdim=True), std], dim=1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 2 x n_mels) features -> (B, 7) log-probabilities; absent emotions get the others' mean."""
        present = self.present > 0
        logits = F.linear((features - self.mean) / self.std, self.weight, self.bias).masked_fill(~present, -1e4)
        logp = torch.log_softmax(logits, dim=1)
        mean = (logp * present).sum(1, keepdim=True) / present.sum().clamp(min=1)
        return torch.where(present, logp, mean)

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(mel.device.type, enabled=False):           # float32 under AMP too: CPU == GPU
            logp = self.classify(self.features(mel, mel_mask))
            return logp * mel_mask.any(1, keepdim=True).to(logp.dtype)     # (B, 7), 0 without audio


def _dynamic_shapes_ok(x: torch.Tensor) -> bool:
    """Eager on a real device: data-dependent shapes (boolean selection of samples) are allowed. Traced,
    scripted or compiled graphs, and the meta device (FLOP counts), take the static dense path."""
    return x.device.type != "meta" and not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x (B, C, H, W) -> (C,): sum over all but the channel, without an (a * b) temporary."""
    n, c = a.shape[:2]
    return torch.matmul(a.reshape(n, c, 1, -1), b.reshape(n, c, -1, 1)).sum(0).view(c)


class _MaskedBatchNorm(torch.autograd.Function):
    """Training BatchNorm over the positions mask marks, output zero elsewhere. Written out rather than
    composed from autograd ops so that it holds what nn.BatchNorm2d holds: its input and per-channel
    statistics for backward, no activation-sized temporaries (composed, a CPU training step of the recipe
    peaked ~0.6 GB higher). Statistics in float32 at least (bf16 autocast)."""

    @staticmethod
    def forward(ctx, x, mask, weight, bias, eps: float):  # x (B, C, H, W), mask (B, 1, 1, W) 0/1
        acc = torch.promote_types(x.dtype, torch.float32)
        m = mask.to(acc)
        n = (m.sum() * x.shape[2]).clamp(min=1.0)            # valid positions per channel
        mean = (x.to(acc).sum(2, keepdim=True) * m).sum((0, 2, 3)) / n      # (C,)
        d = (x.to(acc) - mean[:, None, None]).mul_(m)        # centred, padding 0
        var = _channel_dot(d, d) / n                         # biased: what normalises, as BatchNorm
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight.to(acc)
        y = d.mul_(scale[:, None, None]).add_(bias.to(acc)[:, None, None]).mul_(m)
        ctx.save_for_backward(x, m, mean, rstd, scale, n)
        ctx.mark_non_differentiable(mean, var)
        ctx.param_dtype = weight.dtype
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):
        x, m, mean, rstd, scale, n = ctx.saved_tensors
        g = grad.to(m.dtype) * m                             # padding's output was constant 0
        sum_g = g.sum((0, 2, 3))                             # = d bias
        sum_gx = (_channel_dot(g, x.to(m.dtype)) - mean * sum_g) * rstd     # sum(g * xhat) = d weight
        # dx = scale * (g - m * (sum_g + xhat * sum_gx) / n), xhat = (x - mean) * rstd, as
        # scale * g - x * c1 - c0 with (B, C, 1, W) coefficients: no activation-sized temporary
        b = (scale * rstd * sum_gx / n)[:, None, None]
        c1 = m * b
        c0 = m * (scale * sum_g / n)[:, None, None] - c1 * mean[:, None, None]
        dx = g.mul_(scale[:, None, None]).addcmul_(x.to(m.dtype), c1, value=-1.0).sub_(c0)
        return dx.to(x.dtype), None, sum_gx.to(ctx.param_dtype), sum_g.to(ctx.param_dtype), None


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics (batch and running) come from the valid positions only:
    mask (B, 1, 1, W) marks the time steps that hold audio, so padding and clips without audio do not move
    them; the output is zero at the other positions (as the zero padding the next convolution expects). A
    batch without any valid position leaves the running statistics as they were. Without a mask it is
    BatchNorm2d; parameters and buffers are BatchNorm2d's (checkpoints load either way)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        if not self.training:
            return super().forward(x) * mask.to(x.dtype)
        y, mean, var = _MaskedBatchNorm.apply(x, mask, self.weight, self.bias, self.eps)
        with torch.no_grad():                                    # no .item(): nothing waits for the device
            n = mask.sum().to(mean.dtype) * x.shape[2]
            momentum = (n > 1).to(mean.dtype) * (self.momentum if self.momentum is not None else 0.1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)   # type: ignore[union-attr]
            unbiased = var * n / (n - 1).clamp(min=1.0)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)  # type: ignore[union-attr]
            self.num_batches_tracked.add_(1)                     # type: ignore[union-attr]
        return y


class AudioEncoder(nn.Module):
    relu_after_pool = True   # False: each stage's ReLU before its pool, as first written (bench/train_step.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, inp = [], 1
        for i, ch in enumerate(cfg.audio_channels):
            stride = (1, cfg.audio_time_stride) if i == 0 else 1   # model.audio_time_stride: time only
            layers += [nn.Conv2d(inp, ch, 3, stride=stride, padding=1, bias=False), MaskedBatchNorm2d(ch),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            inp = ch
        self.cnn = nn.Sequential(*layers)   # stages of (conv, norm, relu, pool); the mask runs beside them
        self.stride = 2 ** len(cfg.audio_channels)             # mel bands per CNN output band
        self.flatten = cfg.audio_freq == "flatten"
        width = inp * (cfg.n_mels // self.stride) if self.flatten else inp   # the bands left after the pools
        self.n_mels = cfg.n_mels
        # pitch per CNN frame (its periodicity-weighted log F0, the same relative to the clip's, the voiced
        # share) -> PROSODY_DIM features beside the CNN's channels
        self.prosody = nn.Sequential(nn.Linear(3, PROSODY_DIM), nn.ReLU(inplace=True)) if cfg.pitch else None
        width += PROSODY_DIM if cfg.pitch else 0
        self.norm = nn.LayerNorm(width)
        self.lstm = nn.LSTM(width, cfg.hidden, batch_first=True)
        self.pool = None if cfg.audio_pool == "mean" else StatsPool(cfg.hidden, cfg.audio_pool == "attention")
        self.utterance_norm = cfg.mel_norm == "utterance"
        self.trim_ln = cfg.voice_trim_db * math.log(10.0) / 10.0     # dB of power -> natural log (the log-mel's)
        self.hidden = cfg.hidden
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        # model.voice_warp_tta (in use only; not in the state dict): per factor, where each warped bin reads
        self.warp_tta = [float(a) for a in cfg.voice_warp_tta]
        reads = [warp_positions(cfg.n_mels, a) for a in self.warp_tta]
        for name, i, dtype in (("warp_lo", 0, torch.long), ("warp_hi", 1, torch.long), ("warp_w", 2, torch.float32)):
            rows = np.array([r[i] for r in reads]).reshape(-1, cfg.n_mels)   # (factors, n_mels); (0, n_mels) when off
            self.register_buffer(name, torch.tensor(rows, dtype=dtype), persistent=False)

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, F), (B, F) -> (B, hidden); clips without audio give zero rows. In eager mode only the
        clips with audio go through the CNN (face-only clips cost nothing); traced or compiled, all of them
        (static shapes): the masked norm makes both give the same outputs and statistics. With
        model.voice_trim_db, each clip's quiet ends are cut off first (speech_span)."""
        if self.trim_ln > 0:
            mel, mel_mask = self.speech_span(mel, mel_mask)
        if self.warp_tta and not self.training:                      # in use: as is and at each warp, averaged
            b, k = mel.shape[0], 1 + len(self.warp_tta)
            out = self._encode_present(self.warped(mel), mel_mask.repeat(k, 1))
            return out.view(k, b, -1).mean(0)
        return self._encode_present(mel, mel_mask)

    def warped(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, rows, F) -> ((1 + len(voice_warp_tta)) x B, rows, F): the clips as they are, then warped by
        each factor as augment.freq_warp warps a training voice (the mel bins by
        avemo.core.melscale.warp_positions, the pitch track's F0 by the same factor on voiced frames). In
        use the warp acts after model.voice_trim_db's cut, in training before it (the loader warps, the model
        cuts): the cut reads each frame's total power, which a warp barely moves."""
        self.check_rows(mel)
        out = [mel]
        for i, alpha in enumerate(self.warp_tta):
            w = self.warp_w[i].to(mel.dtype)[:, None]                # (n_mels, 1)
            bins = mel[:, self.warp_lo[i]] * (1 - w) + mel[:, self.warp_hi[i]] * w
            if self.prosody is not None:                             # the pitch rows (model.pitch)
                f0, periodicity = mel[:, self.n_mels], mel[:, self.n_mels + 1]
                f0 = torch.where(periodicity > 0, f0 + math.log2(alpha), f0)
                bins = torch.cat([bins, f0[:, None], periodicity[:, None]], dim=1)
            out.append(bins)
        return torch.cat(out)

    def check_rows(self, mel: torch.Tensor) -> None:
        rows = self.n_mels + (PITCH_ROWS if self.prosody is not None else 0)
        if mel.shape[1] != rows:                                     # a caller that left out (or added) the pitch rows
            raise ValueError(f"the audio input has {mel.shape[1]} rows; this model reads {rows} "
                             f"({self.n_mels} mel bins{' + the pitch track' if self.prosody is not None else ''})")

    def _encode_present(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        if _dynamic_shapes_ok(mel):
            index = mel_mask.any(1).nonzero().squeeze(1)
            if index.numel() < mel.shape[0]:
                if index.numel() == 0 and self.training:
                    index = torch.zeros(1, dtype=torch.long, device=mel.device)  # DDP: a (zero) gradient for every weight
                out = torch.zeros(mel.shape[0], self.hidden, device=mel.device)
                if index.numel():
                    enc = self.encode(mel[index], mel_mask[index])
                    out = out.to(enc.dtype).index_copy(0, index, enc)
                return out
        return self.encode(mel, mel_mask)

    def speech_span(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, rows, F), (B, F) -> the same with each clip's leading and trailing frames whose power is more
        than model.voice_trim_db below its loudest frame cut off: its first loud frame moved to frame 0 and
        the frames after its last loud one made padding, so a clip reads exactly as its tightly cut copy
        would (that frame always stays: a clip with audio keeps at least one; pauses between the words stay).
        Static shapes: traces and exports. It cuts what the model is given: after the loader's crop to
        data.max_mel_frames (leading silence still takes its share of a long clip's crop) and, in training,
        after the noise and SpecAugment, so a noisy clip is cut only where its noise floor lies below the
        threshold, as a noisy recording is in use. model.voice_stats reads every frame."""
        power = torch.logsumexp(mel[:, : self.n_mels].float(), dim=1)          # (B, F): ln of each frame's power
        power = power.masked_fill(~mel_mask, float("-inf"))
        loud = (power >= power.amax(1, keepdim=True) - self.trim_ln) & mel_mask
        before_last = loud.flip(1).to(torch.int32).cumsum(1).flip(1) > 0    # at or before the last loud frame
        start = (loud.to(torch.int32).cumsum(1) == 0).sum(1, keepdim=True)  # (B, 1): frames before the first
        frames = mel.shape[2]
        index = torch.arange(frames, device=mel.device)[None] + start       # (B, F): where each frame comes from
        inside = index < frames
        index = index.clamp(max=frames - 1)
        mask = (mel_mask & before_last).gather(1, index) & inside
        mel = mel.gather(2, index[:, None].expand(-1, mel.shape[1], -1)) * mask[:, None].to(mel.dtype)
        return mel, mask

    def encode(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        """The dense path: every clip, padding zeroed before each convolution and left out of the norm."""
        self.check_rows(mel)
        mel, pitch = (mel[:, : self.n_mels], mel[:, self.n_mels:]) if self.prosody is not None else (mel, None)
        if self.utterance_norm:   # per clip and bin, over its valid frames (cepstral mean/variance normalisation)
            w = mel_mask.unsqueeze(1).to(mel.dtype)                  # (B, 1, F)
            n = w.sum(2, keepdim=True).clamp(min=1.0)
            mean = (mel * w).sum(2, keepdim=True) / n
            std = (((mel - mean) ** 2 * w).sum(2, keepdim=True) / n).clamp(min=1e-4).sqrt()
            x = (mel - mean) / std
        else:
            x = (mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        m = mel_mask[:, None, None, :].to(x.dtype)                   # (B, 1, 1, F)
        x = x.unsqueeze(1) * m                                       # (B, 1, n_mels, F), padding = 0
        for i in range(0, len(self.cnn), 4):
            conv, norm, act, pool = (self.cnn[j] for j in range(i, i + 4))
            x = conv(x)
            if conv.stride[1] > 1:                                   # frame j read 2j-1..2j+1: valid where 2j was
                m = m[..., :: conv.stride[1]]
            x = norm(x, m)                                           # the norm leaves padding at 0
            # max-pooling and ReLU commute (ReLU is monotone): the same values, ReLU on a quarter of them
            x = act(pool(x)) if self.relu_after_pool else pool(act(x))
            m = F.max_pool2d(m, (1, 2))                              # (B, 1, 1, F / (stride x 2^stage))
        if self.flatten:   # (B, C, n_mels/8, F/k) -> (B, F/k, C * n_mels/8): which band a pattern is in stays
            x = x.flatten(1, 2).transpose(1, 2)
        else:
            x = x.mean(2).transpose(1, 2)                            # (B, F/k, C), k = time_stride
        mask = m[:, 0, 0, : x.shape[1]] > 0                          # (B, F/k)
        if pitch is not None and self.prosody is not None:
            x = torch.cat([x, self.prosody(self._pitch_features(pitch, mel_mask, x.shape[1]))], dim=2)
        out, _ = self.lstm(self.norm(x))                             # (B, F/k, hidden)
        return _masked_mean(out, mask) if self.pool is None else self.pool(out, mask)

    @property
    def time_stride(self) -> int:
        """Mel frames per CNN output frame: the pools' 2 per stage x the first convolution's time stride."""
        return self.stride * self.cnn[0].stride[1]

    def _pitch_features(self, pitch: torch.Tensor, mel_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, 2, F) log2 F0 / periodicity, (B, F) -> (B, frames, 3) on the CNN's frames (stride mel frames
        each): the periodicity-weighted mean log F0, the same minus the clip's, the mean periodicity. A frame
        without voicing (or padding) gives zeros."""
        w = pitch[:, 1] * mel_mask.to(pitch.dtype)                   # (B, F), 0 on padding and silence
        f0w = pitch[:, 0] * w
        k = self.time_stride
        short = frames * k - w.shape[1]       # the CNN rounds its strided frames up: pad as a batch's padding would
        if short > 0:
            w, f0w = F.pad(w, (0, short)), F.pad(f0w, (0, short))
        voiced = F.avg_pool1d(w[:, None], k, k)[:, 0, :frames]       # (B, frames)
        f0 = F.avg_pool1d(f0w[:, None], k, k)[:, 0, :frames] / voiced.clamp(min=1e-3)
        clip = f0w.sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1e-3)
        on = (voiced > 0.05).to(f0.dtype)
        return torch.stack([f0 * on, (f0 - clip) * on, voiced], dim=2)


class FaceEncoder(nn.Module):
    """MobileFaceNet per frame, then an LSTM over the clip's frames. With face_trainable=last the frozen first
    blocks run without autograd and in eval mode (their BatchNorm statistics kept), the last ones learn."""

    fold_frozen_bn = True   # frozen_blocks folds BatchNorm (False: the blocks as they are; bench/train_step.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cnn = MobileFaceNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # ~1.5x faster convs
        blocks = self.cnn.blocks()
        n_train = {"all": len(blocks), "none": 0}.get(cfg.face_trainable, min(cfg.face_train_blocks, len(blocks)))
        self.split = len(blocks) - n_train             # blocks [0, split) are frozen
        self.trainable = n_train > 0
        for block in blocks[: self.split]:
            block.requires_grad_(False)
        self.norm = nn.LayerNorm(MobileFaceNet.embedding_dim)  # embeddings are large: keep LSTM gates unsaturated
        self.lstm = nn.LSTM(MobileFaceNet.embedding_dim + 1, cfg.hidden, batch_first=True)
        self.register_buffer("mean", torch.tensor(FACE_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(FACE_STD).view(1, 3, 1, 1) * 255)
        self.grey = cfg.face_colour == "grey"          # not in the state dict: checkpoints load either way
        self.flip_tta = cfg.face_flip_tta              # in use only; not in the state dict either
        self._folded: tuple[list[tuple[torch.Tensor, int, int]], list[nn.Module]] | None = None  # frozen_blocks':
        #                                              a tuple, so neither submodules nor state
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self.cnn.blocks()[: self.split]:
            block.eval()  # frozen blocks keep their BatchNorm statistics
        self._folded = None   # frozen_blocks folds afresh in the new mode
        return self

    def forward(self, faces: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.embed(faces), face_mask)

    def embed(self, faces: torch.Tensor, face_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, 112, 112) uint8 -> (B, T, 128): per frame, so a stream embeds each face once. With
        face_mask (B, T) only the frames that hold a face go through the CNN (the rest are zero rows, which
        pool() ignores): unimodal and faceless clips cost nothing. Traced or compiled, every frame goes
        through (static shapes), as on the meta device (FLOP counts)."""
        if face_mask is not None and _dynamic_shapes_ok(faces):
            b, t = faces.shape[:2]
            index = face_mask.reshape(-1).nonzero().squeeze(1)
            if self.training and self.trainable and index.numel() < 2:
                # training BatchNorm needs >= 2 frames, and DDP a gradient for every trainable weight: run
                # frames without a face too (their rows are ignored by pool())
                index = torch.arange(min(2, b * t), device=faces.device)
            out = torch.zeros(b * t, MobileFaceNet.embedding_dim, device=faces.device)
            if index.numel():
                emb = self.embed(faces.flatten(0, 1)[index][None])[0]
                out = out.to(emb.dtype).index_copy(0, index, emb)
            return out.view(b, t, -1)
        b, t = faces.shape[:2]
        x = faces.flatten(0, 1).float()                              # (B*T, 3, 112, 112)
        if self.grey:                                                # colour -> luma in all 3 channels
            x = (x * self.luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        flip = self.flip_tta and not self.training                   # in use: each face read as is and mirrored
        if flip:
            x = torch.cat([x, x.flip(-1)])
        x = self.cnn_embed(x.contiguous(memory_format=torch.channels_last))
        if flip:
            x = (x[: b * t] + x[b * t:]) / 2                         # the mean of the two embeddings
        return x.reshape(b, t, -1)                                   # (B, T, 128)

    def cnn_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, 112, 112) -> (N, 128). Blocks that need no gradient (the frozen ones; in use under
        no_grad / inference_mode, all of them) run without autograd, in passes of FROZEN_CHUNK frames, and in
        eager mode as BatchNorm-folded copies (frozen_blocks); traced or compiled graphs hold the blocks
        themselves (ONNX Runtime folds BatchNorm on its own)."""
        blocks = self.cnn.blocks()
        eager = _dynamic_shapes_ok(x)
        in_use = not self.training and not torch.is_grad_enabled()
        n_frozen = len(blocks) if in_use or not self.trainable else self.split
        with torch.no_grad():
            if n_frozen:
                head = self.frozen_blocks(n_frozen) if eager else blocks[:n_frozen]
                if x.shape[0] > FROZEN_CHUNK and eager:           # traced / compiled: one pass (static)
                    x = torch.cat([self.frozen(chunk, head) for chunk in x.split(FROZEN_CHUNK)])
                else:
                    x = self.frozen(x, head)
        for block in blocks[n_frozen:]:
            x = block(x)
        return x.reshape(x.shape[0], -1)

    def frozen(self, x: torch.Tensor, blocks) -> torch.Tensor:
        for block in blocks:
            x = block(x)
        return x

    def frozen_blocks(self, n: int) -> list[nn.Module]:
        """MobileFaceNet's first n blocks to run without autograd: with fold_frozen_bn, copies with BatchNorm
        folded into the convolutions (mobilefacenet.fold_batchnorm, the same function ~1.6x faster on a CPU),
        kept between calls. They are dropped at every train() / eval() (a fused optimiser's writes are not
        counted by _version), and rebuilt when a tensor of the blocks was replaced or given new storage
        (load_state_dict, .to(): identity, data_ptr) or written in place (copy_, an EMA update: _version). In
        training, in-place writes to the frozen blocks' BatchNorm statistics are not counted: DDP copies rank
        0's into every rank's before each forward (broadcast_buffers), the same values, since frozen blocks
        never update them. Weights made under inference_mode count no writes at all: those blocks run as
        they are."""
        blocks = self.cnn.blocks()[:n]
        params = [t for block in blocks for t in block.parameters()]
        buffers = [t for block in blocks for t in block.buffers()]
        if not self.fold_frozen_bn or any(t.is_inference() for t in params + buffers):
            return blocks
        key = ([(t, t.data_ptr(), t._version) for t in params]
               + [(t, t.data_ptr(), -1 if self.training else t._version) for t in buffers])
        cached = self._folded
        if (cached is None or len(cached[0]) != len(key)
                or any(a[0] is not b[0] or a[1:] != b[1:] for a, b in zip(key, cached[0]))):
            with torch.inference_mode(False), torch.no_grad():       # ordinary tensors, whoever calls first
                folded = [fold_batchnorm(block) for block in blocks]
            self._folded = cached = (key, folded)
        return cached[1]

    def pool(self, emb: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
        m = face_mask.to(emb.dtype).unsqueeze(-1)
        out, _ = self.lstm(torch.cat([self.norm(emb) * m, m], dim=-1))  # (B, T, hidden)
        return _masked_mean(out, face_mask)


class AVEmotionNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.face = FaceEncoder(cfg)
        self.audio = AudioEncoder(cfg)
        self.head = nn.Sequential(nn.Linear(2 * cfg.hidden + 2, cfg.fusion_dim), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.fusion_dim, len(EMOTIONS)))  # the shard contract's label map
        self.voice_stats = VoiceStats(cfg.n_mels) if cfg.voice_stats > 0 else None

    def _modality_dropout(self, face_mask, mel_mask):
        has_face, has_audio = face_mask.any(1), mel_mask.any(1)
        both = has_face & has_audio
        r = torch.rand(face_mask.shape[0], device=face_mask.device)
        p = self.cfg.modality_dropout
        drop_face = both & (r < p)
        drop_audio = both & (r >= p) & (r < 2 * p)
        return face_mask & ~drop_face[:, None], mel_mask & ~drop_audio[:, None]

    def forward(self, faces, face_mask, mel, mel_mask):
        if self.training and self.cfg.modality_dropout > 0:
            face_mask, mel_mask = self._modality_dropout(face_mask, mel_mask)
        return self.forward_from_embeddings(self.embed_faces(faces, face_mask), face_mask, mel, mel_mask)  # (B, 7)

    # The two halves of forward: forward_from_embeddings ignores the embedding rows of frames without a
    # face, so a stream can embed only the new face crops and cache the rest (avemo predict), and an
    # evaluation can embed a batch once and score several modality masks from it (train/evaluate.py).
    def embed_faces(self, faces: torch.Tensor, face_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.face.embed(faces, face_mask)                     # (B, T, 128)

    def forward_from_embeddings(self, emb, face_mask, mel, mel_mask):
        has_face = face_mask.any(1, keepdim=True).float()           # (B, 1)
        has_audio = mel_mask.any(1, keepdim=True).float()
        f = self.face.pool(emb, face_mask) * has_face                # (B, hidden)
        a = self.audio(mel, mel_mask) * has_audio
        logits = self.head(torch.cat([f, a, has_face, has_audio], dim=1))  # (B, 7)
        if self.voice_stats is not None and not self.training:       # the late-fusion partner, in use only
            logits = logits + self.cfg.voice_stats * self.voice_stats(mel, mel_mask).to(logits.dtype)
        return logits


def build_model(cfg: ModelConfig, log=print) -> AVEmotionNet:
    model = AVEmotionNet(cfg)
    if cfg.face_weights:
        from avemo.core.weights import WeightsError, load_state_dict, resolve_weights
        try:
            path = resolve_weights("mobilefacenet", "" if cfg.face_weights == "auto" else cfg.face_weights)
        except WeightsError as exc:
            if cfg.face_weights != "auto":
                raise
            log(f"note: MobileFaceNet starts from random weights ({exc})")
        else:
            model.face.cnn.load_state_dict(load_state_dict(Path(path)), strict=True)
            log(f"MobileFaceNet initialised from {path}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_clip(model: "AVEmotionNet", frames: int = 16, mel_frames: int = 400) -> int:
    """Forward FLOPs for one clip (torch's FLOP counter), with dummy inputs on the model's device."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    args = (torch.zeros(1, frames, 3, 112, 112, dtype=torch.uint8, device=device),
            torch.ones(1, frames, dtype=torch.bool, device=device),
            torch.zeros(1, int(model.cfg.audio_rows), mel_frames, device=device),
            torch.ones(1, mel_frames, dtype=torch.bool, device=device))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args)
    model.train(was_training)
    return int(counter.get_total_flops())
