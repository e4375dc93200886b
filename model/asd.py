"""Light-ASD (Liao et al., CVPR 2023): is this face speaking, from its track and the clip's audio.

Written from the paper's description and the published state dict (`finetuning_TalkSet.model`,
`pretrain_AVA_CVPR.model`: they load here with strict=True): 1.02 M parameters.

    faces (B, T, 112, 112) grey 0-255 at 25 fps  -> visual encoder -> (B, T, 128) \
                                                                                  + -> BGRU -> FC -> (B, T, 2)
    MFCC  (B, 4T, 13) at 100 frames/s            -> audio encoder  -> (B, T, 128) /

Each encoder is three blocks of split convolutions: a k x k (x k) convolution as a conv over the first
axes (space for faces, MFCC bins for audio) then one over time, for k = 3 and 5 side by side, summed and
mixed by a 1x1 convolution. The "BGRU" is two one-way GRUs run one after the other (forward, then over the
reversed sequence), not a bidirectional GRU: the weights only fit that way. `lossAV.FC` is the speaking
head; `lossV.FC` (faces alone) is the paper's auxiliary training head, kept for strict loading.

`mfcc` is python_speech_features 0.6's `mfcc(audio, 16000, numcep=13, winlen=0.025, winstep=0.010)` (what
the model was trained on) in numpy: int16-scaled samples, pre-emphasis 0.97, rectangular 400-sample
windows every 160 samples, 512-point power spectrum, 26 triangular mel filters, log, orthonormal DCT-II,
lifter 22, c0 replaced by the log frame energy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from avemo.core.errors import WeightsError
from avemo.core.melscale import hz_to_mel, mel_to_hz
from avemo.core.weights import load_state_dict, resolve_weights

ASD_FPS = 25                  # face frames per second the model was trained on
MFCC_PER_FRAME = 4            # 100 MFCC frames per second
SAMPLE_RATE = 16000
WINDOW, HOP = 400, 160        # 25 ms / 10 ms at 16 kHz
PIXEL_MEAN, PIXEL_STD = 0.4161, 0.1688   # of the grey training crops, pixels in [0, 1]
VARIANTS = {"talkset": "light-asd-talkset", "ava": "light-asd-ava"}   # -> avemo.core.weights.WEIGHTS
# The original scores a track as the mean over windows of 1..6 s (its evaluation writes the multiset
# {1,1,1,2,2,2,3,3,4,5,6}, which as a Python set literal is {1,2,3,4,5,6}): each pass splits the track
# into chunks of that length, so frames see different context.
DURATIONS_S = (1, 2, 3, 4, 5, 6)


# inference (no grad, eval, CPU) runs the face encoder through SplitBlock._infer_faces; False: the modules as
# written (bench/asd_encoder.py compares the two)
INFERENCE_KERNELS = True


class SplitBlock(nn.Module):
    """For k in (3, 5): conv over the first axes (`{first}_k`), then over time (`t_k`), each + BN + ReLU;
    the two paths summed, then a 1x1 conv (`last`) + BN + ReLU. dims=3: faces (B, C, T, H, W), first =
    "s" (space, kernel (1, k, k)); dims=2: audio (B, C, 13, F), first = "m" (MFCC bins, kernel (k, 1))."""

    def __init__(self, dims: int, first: str, cin: int, cout: int, down: bool = False):
        super().__init__()
        conv: Any = nn.Conv3d if dims == 3 else nn.Conv2d
        bn: Any = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
        self.paths: list[tuple[nn.Module, nn.Module, nn.Module, nn.Module]] = []   # the modules, by path
        ka: tuple[int, ...]
        pa: tuple[int, ...]
        sa: tuple[int, ...] | int
        kt: tuple[int, ...]
        pt: tuple[int, ...]
        for k in (3, 5):
            if dims == 3:   # (T, H, W); the first block also halves H and W
                ka, pa, sa, kt, pt = (1, k, k), (0, k // 2, k // 2), (1, 2, 2) if down else 1, (k, 1, 1), (k // 2, 0, 0)
            else:           # (MFCC bins, time)
                ka, pa, sa, kt, pt = (k, 1), (k // 2, 0), 1, (1, k), (0, k // 2)
            path = (conv(cin, cout, ka, sa, pa, bias=False), bn(cout, eps=1e-3, momentum=0.01),
                    conv(cout, cout, kt, 1, pt, bias=False), bn(cout, eps=1e-3, momentum=0.01))
            for name, module in zip((f"{first}_{k}", f"bn_{first}_{k}", f"t_{k}", f"bn_t_{k}"), path):
                self.add_module(name, module)
            self.paths.append(path)
        self.last = conv(cout, cout, 1, bias=False)
        self.bn_last = bn(cout, eps=1e-3, momentum=0.01)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (INFERENCE_KERNELS and x.dim() == 5 and x.device.type == "cpu" and not self.training
                and not torch.is_grad_enabled()):
            return self._infer_faces(x)
        k3, k5 = (self.relu(bn_t(t(self.relu(bn_a(a(x)))))) for a, bn_a, t, bn_t in self.paths)
        return self.relu(self.bn_last(self.last(k3 + k5)))

    def _infer_faces(self, x: torch.Tensor) -> torch.Tensor:
        """The same function for inference on faces (B, C, T, H, W) on CPU, 1.3-1.6x faster there: BatchNorm
        folded into the convolutions, and the (k, 1, 1) time convolutions and the 1x1 mix written as matrix
        products over the (C, T*H*W) layout the tensor already has (PyTorch's CPU Conv3d takes its slow im2col
        path for them: about half the encoder's time; bench/results/asd_encoder.md). Not on CUDA: cuDNN's
        Conv3d is the fast path there."""
        out: torch.Tensor | None = None
        paths: list[tuple[Any, Any, Any, Any]] = self.paths
        for a, bn_a, t, bn_t in paths:
            wa, ba = _fold(a, bn_a)
            wt, bt = _fold(t, bn_t)
            y = nn.functional.conv3d(x, wa, ba, a.stride, a.padding).relu_()
            z = _time_conv(y, wt[:, :, :, 0, 0], bt, t.padding[0]).relu_()
            out = z if out is None else out.add_(z)
        assert out is not None
        wl, bl = _fold(self.last, self.bn_last)
        b, c, t_, h, w = out.shape
        mixed = torch.stack([torch.addmm(bl[:, None], wl.flatten(1), o.reshape(c, -1)) for o in out])
        return mixed.relu_().view(b, -1, t_, h, w)


def _fold(conv: Any, bn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free convolution followed by an eval-mode BatchNorm -> one convolution's (weight, bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1)), bn.bias - bn.running_mean * scale


def _time_conv(y: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, pad: int) -> torch.Tensor:
    """y (B, C, T, H, W), w (O, C, k) -> (B, O, T, H, W): a convolution over T with zero padding `pad`, as k
    matrix products of (O, C) with (C, T*H*W) slices of one zero-padded copy of each sample."""
    b, c, t, h, wd = y.shape
    hw, k = h * wd, w.shape[-1]
    padded = y.new_zeros((c, (t + 2 * pad) * hw))
    out = y.new_empty((b, w.shape[0], t * hw))
    for i in range(b):
        padded[:, pad * hw: (pad + t) * hw] = y[i].reshape(c, -1)
        out[i] = bias[:, None]
        for j in range(k):
            out[i].addmm_(w[:, :, j], padded[:, j * hw: (j + t) * hw])
    return out.view(b, -1, t, h, wd)


class VisualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = SplitBlock(3, "s", 1, 32, down=True)     # (B, 32, T, 56, 56)
        self.block2 = SplitBlock(3, "s", 32, 64)               # after a 3x3/2 max pool: (B, 64, T, 28, 28)
        self.block3 = SplitBlock(3, "s", 64, 128)              # after another: (B, 128, T, 14, 14)
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, 1, T, 112, 112) normalised
        x = self.block3(self._pool(self.block2(self._pool(self.block1(x)))))
        return x.amax(dim=(3, 4)).transpose(1, 2)              # (B, T, 128)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if not INFERENCE_KERNELS or self.training or torch.is_grad_enabled() or x.device.type != "cpu":
            return self.pool(x)
        b, c, t, h, w = x.shape     # a (1, 3, 3) pool is a 2-D pool of every (channel, frame): 4x faster on CPU
        pooled = nn.functional.max_pool2d(x.reshape(b, c * t, h, w), 3, 2, 1)
        return pooled.view(b, c, t, *pooled.shape[-2:])


class AudioEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = SplitBlock(2, "m", 1, 32)                # (B, 32, 13, 4T)
        self.block2 = SplitBlock(2, "m", 32, 64)               # after a time max pool /2: (B, 64, 13, 2T)
        self.block3 = SplitBlock(2, "m", 64, 128)              # after another: (B, 128, 13, T)
        self.pool = nn.MaxPool2d((1, 3), (1, 2), (0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, 1, 13, 4T)
        x = self.block3(self.pool(self.block2(self.pool(self.block1(x)))))
        return x.mean(dim=2).transpose(1, 2)                   # (B, T, 128)


class BGRU(nn.Module):
    def __init__(self, dim: int = 128):
        super().__init__()
        self.gru_forward = nn.GRU(dim, dim, batch_first=True)
        self.gru_backward = nn.GRU(dim, dim, batch_first=True)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, T, 128) -> (B, T, 128)
        x = self.gelu(self.gru_forward(x)[0])
        x = self.gru_backward(x.flip(1))[0].flip(1)
        return self.gelu(x)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoder()
        self.GRU = BGRU(128)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.FC = nn.Linear(128, 2)


class LightASD(nn.Module):
    """forward(mfcc (B, 4T, 13), faces (B, T, 112, 112) grey 0-255) -> logits (B, T, 2); class 1 = speaking."""

    def __init__(self):
        super().__init__()
        self.model = Backbone()      # parameter names as in the published checkpoints
        self.lossAV = Head()
        self.lossV = Head()

    def encode_faces(self, faces: torch.Tensor) -> torch.Tensor:     # (B, T, 112, 112) 0-255 -> (B, T, 128)
        faces = (faces.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
        return self.model.visualEncoder(faces.unsqueeze(1))

    def encode_audio(self, mfcc: torch.Tensor) -> torch.Tensor:      # (B, 4T, 13) -> (B, T, 128)
        return self.model.audioEncoder(mfcc.float().unsqueeze(1).transpose(2, 3))

    def head(self, audio_emb: torch.Tensor, face_emb: torch.Tensor) -> torch.Tensor:   # -> (B, T, 2)
        return self.lossAV.FC(self.model.GRU(audio_emb + face_emb))

    def forward(self, mfcc: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode_audio(mfcc), self.encode_faces(faces))

    @torch.inference_mode()
    def speaking_logodds(self, faces: np.ndarray, audio: np.ndarray | Sequence[np.ndarray],
                         durations_s: Sequence[int] = DURATIONS_S, encoders_once: bool = False) -> np.ndarray:
        """One face track: faces (T, 112, 112) uint8 grey at 25 fps, audio (N,) float32 16 kHz mono starting at
        the first face frame -> (T,) float32 log-odds that the face speaks in each frame (its sigmoid is
        softmax[:, 1]), averaged over one pass per window length in `durations_s` (each pass cuts the track
        into chunks of that many seconds, as the original). Missing audio at the end reads as silence.

        audio may also be K candidate tracks (a sequence of (N,) arrays) -> (K, T): they share the visual
        pass, ~90 % of the work. encoders_once: run both encoders once over the whole track and cut only
        the GRU's input into chunks (len(durations_s) times less work; differs from the original only
        within ~6 frames of a chunk border, where its convolutions saw zero padding)."""
        single = isinstance(audio, np.ndarray) and audio.ndim == 1
        audios = [np.asarray(audio)] if single else [np.asarray(a) for a in audio]
        t = len(faces)
        total = torch.zeros((len(audios), t), dtype=torch.float64)
        if t == 0:
            return total[0].numpy().astype(np.float32) if single else total.numpy().astype(np.float32)
        device = next(self.parameters()).device
        mfccs = [torch.from_numpy(_track_mfcc(a, t)).to(device) for a in audios]          # (4T, 13) each
        frames = torch.from_numpy(np.ascontiguousarray(faces)).to(device)                 # (T, 112, 112)
        if encoders_once:
            face_emb = self.encode_faces(frames[None])[0]                                 # (T, 128)
            audio_embs = [self.encode_audio(m[None])[0] for m in mfccs]
        for seconds in durations_s:
            step = seconds * ASD_FPS
            for start, stop in _chunks(t, step):   # the whole chunks in one batch, then the rest
                n = (stop - start) // step if stop - start >= step else 1
                size = (stop - start) // n
                if encoders_once:
                    v = face_emb[start:stop].reshape(n, size, -1)
                else:
                    v = self.encode_faces(frames[start:stop].reshape(n, size, *frames.shape[1:]))
                for k, m in enumerate(mfccs):
                    if encoders_once:
                        a = audio_embs[k][start:stop].reshape(n, size, -1)
                    else:
                        a = self.encode_audio(m[start * MFCC_PER_FRAME: stop * MFCC_PER_FRAME]
                                              .reshape(n, size * MFCC_PER_FRAME, -1))
                    logits = self.head(a, v).reshape(-1, 2).double().cpu()
                    total[k, start:stop] += logits[:, 1] - logits[:, 0]
        out = (total / len(durations_s)).numpy().astype(np.float32)
        return out[0] if single else out


def _track_mfcc(audio: np.ndarray, t: int) -> np.ndarray:
    """Audio from the first of T face frames -> (4T, 13): MFCC frame 4i + j starts at sample 640 i + 160 j,
    as the original aligned them; audio missing at the end is padded with silence."""
    need = t * MFCC_PER_FRAME * HOP + (WINDOW - HOP)       # samples for 4T whole windows
    audio = np.asarray(audio, dtype=np.float32)[:need]
    return mfcc(np.pad(audio, (0, need - len(audio))))[: t * MFCC_PER_FRAME]


def _chunks(t: int, step: int) -> list[tuple[int, int]]:
    """Frame ranges: all whole chunks of `step` frames as one range, then the remainder."""
    whole = t // step * step
    return [r for r in ((0, whole), (whole, t)) if r[1] > r[0]]


def load_light_asd(weights: str = "", variant: str = "ava", device: str | torch.device = "cpu") -> LightASD:
    """The pretrained network in eval mode. weights: an explicit file; else the variant ("ava": trained on
    AVA-ActiveSpeaker, the default of the authors' demo and of ours: it separates speech from muted or
    shifted audio far better on real faces, bench/results/asd_check.md; "talkset": fine-tuned on TalkSet)
    from $AVEMO_WEIGHTS_DIR, the cache or a sha256-verified download."""
    if variant not in VARIANTS:
        raise WeightsError(f"unknown Light-ASD variant {variant!r}: choose {', '.join(VARIANTS)}")
    path = resolve_weights(VARIANTS[variant], weights)
    net = LightASD()
    try:
        net.load_state_dict(load_state_dict(Path(path)), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit Light-ASD: {str(exc).splitlines()[0][:300]}") from None
    return net.eval().to(device)


# ---------------------------------------------------------------- MFCC, as python_speech_features 0.6

N_FFT, N_FILT, N_CEP, PREEMPH, LIFTER = 512, 26, 13, 0.97, 22


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(26, 257) triangular filters on FFT bins, with python_speech_features' integer bin edges."""
    edges = np.floor((N_FFT + 1) * mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(SAMPLE_RATE / 2), N_FILT + 2))
                     / SAMPLE_RATE)
    bins = np.arange(N_FFT // 2 + 1)
    fb = np.zeros((N_FILT, len(bins)))
    for j in range(N_FILT):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        rise, fall = (bins >= lo) & (bins < mid), (bins >= mid) & (bins < hi)
        fb[j, rise] = (bins[rise] - lo) / (mid - lo)
        fb[j, fall] = (hi - bins[fall]) / (hi - mid)
    return fb


@functools.lru_cache(maxsize=1)
def _dct_lifter() -> np.ndarray:
    """(26, 13): orthonormal DCT-II (first 13 rows, transposed) times the sinusoidal lifter."""
    n, k = np.arange(N_FILT), np.arange(N_CEP)[:, None]
    dct = np.cos(np.pi * k * (2 * n + 1) / (2 * N_FILT)) * np.sqrt(2.0 / N_FILT)
    dct[0] /= np.sqrt(2.0)
    lift = 1 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEP) / LIFTER)
    return (dct * lift[:, None]).T


def mfcc(audio: np.ndarray) -> np.ndarray:
    """(N,) float in [-1, 1] at 16 kHz -> (F, 13) float32, F = 1 + ceil((N - 400) / 160) (1 if N <= 400);
    the last window is zero-padded. Samples are scaled to int16 as the original read them from a wav file
    (the log energy in c0 depends on that scale)."""
    x = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767)
    if x.size == 0:
        x = np.zeros(1)
    x = np.append(x[0], x[1:] - PREEMPH * x[:-1])
    frames = 1 if len(x) <= WINDOW else 1 + int(np.ceil((len(x) - WINDOW) / HOP))
    x = np.pad(x, (0, (frames - 1) * HOP + WINDOW - len(x)))
    windows = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]          # (F, 400)
    power = np.abs(np.fft.rfft(windows, N_FFT)) ** 2 / N_FFT                       # (F, 257)
    tiny = np.finfo(float).eps                      # exact zeros only (digital silence), as the original
    energy = power.sum(1)
    fbank = power @ _mel_filters().T                                               # (F, 26)
    feat = np.log(np.where(fbank == 0, tiny, fbank)) @ _dct_lifter()               # (F, 13)
    energy = np.where(energy == 0, tiny, energy)
    feat[:, 0] = np.log(energy)
    return feat.astype(np.float32)


@functools.lru_cache(maxsize=2)
def _shared_net(weights: str, variant: str) -> LightASD:
    return load_light_asd(weights, variant)


@functools.lru_cache(maxsize=1)
def _identity_net() -> nn.Module:
    from avemo.model.mobilefacenet import MobileFaceNet
    net = MobileFaceNet()
    net.load_state_dict(load_state_dict(resolve_weights("mobilefacenet")))
    return net.eval()


@torch.inference_mode()
def embed_identities(crops: np.ndarray) -> np.ndarray:
    """(n, 112, 112, 3) uint8 aligned faces -> (n, 128) embeddings of the pretrained MobileFaceNet."""
    from avemo.model.net import FACE_MEAN, FACE_STD
    mean, std = torch.tensor(FACE_MEAN).view(1, 3, 1, 1), torch.tensor(FACE_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    return _identity_net()(x).numpy()


@dataclass(frozen=True)
class FaceIdentities:
    """build-shards' face identity network alone (face.speaker_names without face.speaker=asd): picklable, the
    pretrained MobileFaceNet loaded once per process."""

    def load(self) -> "FaceIdentities":
        _identity_net()
        return self

    def identities(self, crops: np.ndarray) -> np.ndarray:
        """(n, 112, 112, 3) uint8 aligned faces -> (n, 128) identity embeddings."""
        return embed_identities(crops)


@dataclass(frozen=True)
class LightASDScorer:
    """pipeline.speaker's Scorer for build-shards: picklable (a Dask task carries it to its worker), the networks
    loaded once per process on first use; encoders over the whole track, the GRU per 1..6 s pass (~6x cheaper
    than the original's passes, bench/results/asd_check.md). `identities` embeds aligned face crops with the
    pretrained MobileFaceNet, so that tracks are not joined across a cut (pipeline.tracks.follow_faces)."""
    weights: str = ""
    variant: str = "ava"

    def load(self) -> "LightASDScorer":
        _shared_net(self.weights, self.variant)      # unusable weights: one line before any work
        _identity_net()
        return self

    def __call__(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        return _shared_net(self.weights, self.variant).speaking_logodds(faces, audio, encoders_once=True)

    def identities(self, crops: np.ndarray) -> np.ndarray:
        """(n, 112, 112, 3) uint8 aligned faces -> (n, 128) identity embeddings."""
        return embed_identities(crops)
