"""model.voice_stats: fit the late-fusion voice classifier (model/net.py VoiceStats) on the train voices,
once, before training; the fitted numbers travel in every checkpoint as the model's buffers.

One pass over the train splits' shards that hold a voice (a set of images is not read), every clip as
evaluation sees it (no augmentation, the mel cropped from its start to data.max_mel_frames), then a
multinomial logistic regression on the standardised utterance statistics: L-BFGS in float64, L2 on the
weights (model.voice_stats_l2), each clip's loss weighted for its class by train.imbalance's rule applied to
the voice clips' own class counts. A convex problem, so the same clips give the same classifier on any
machine. Emotions without a train voice are left out of the fit (VoiceStats.present).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from avemo.model.net import VoiceStats
from avemo.shards.labels import EMOTIONS
from avemo.train.config import TrainConfig
from avemo.train.data import SplitShards, eval_loader

MAX_CLIPS = 100_000      # ~100 MB of float64 features at 64 bins; MELD's train split is 10k


@torch.no_grad()
def voice_features(splits: Sequence[SplitShards], cfg: TrainConfig,
                   max_clips: int = MAX_CLIPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2 x n_mels) float64 VoiceStats features and (N,) labels of the train clips with audio."""
    head = VoiceStats(cfg.model.n_mels)
    feats, labels, n = [], [], 0
    for split in splits:
        urls = split.audio_urls()
        if not urls:
            continue
        for batch in eval_loader(urls, cfg.data.batch_size, 0, cfg.data.max_frames, cfg.data.max_mel_frames,
                                 n_mels=cfg.model.n_mels, listed=split.listed, pitch=cfg.model.pitch):
            keep = batch["mel_mask"].any(1)
            if keep.any():
                feats.append(head.features(batch["mel"][keep], batch["mel_mask"][keep]).double())
                labels.append(batch["label"][keep])
                n += int(keep.sum())
            if n >= max_clips:
                break
        if n >= max_clips:
            break
    if not feats:
        return torch.zeros(0, 2 * cfg.model.n_mels, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats)[:max_clips], torch.cat(labels)[:max_clips]


def fit_linear(x: torch.Tensor, y: torch.Tensor, l2: float,
               class_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Multinomial logistic regression on standardised x: VoiceStats's buffers (mean, std, weight, bias,
    present); a class absent from y keeps a zero row and bias and present 0."""
    x, y = x.double(), y.long()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)     # a constant statistic: left unscaled
    xs = (x - mean) / std
    present = torch.bincount(y, minlength=len(EMOTIONS)) > 0
    weight = torch.zeros(len(EMOTIONS), x.shape[1], dtype=torch.float64, requires_grad=True)  # no RNG drawn:
    bias = torch.zeros(len(EMOTIONS), dtype=torch.float64, requires_grad=True)              # training's stays
    cw = None if class_weight is None else class_weight.double()
    opt = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = (xs @ weight.T + bias).masked_fill(~present, -1e4)        # no voices: not fitted
        loss = torch.nn.functional.cross_entropy(logits, y, weight=cw) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return {"mean": mean.float(), "std": std.float(), "weight": weight.detach().float(), "bias": bias.detach().float(),
            "present": present.float()}


def fit_voice_stats(splits: Sequence[SplitShards], cfg: TrainConfig,
                    weigh: Callable[[list[int]], torch.Tensor | None], say=print) -> dict[str, torch.Tensor] | None:
    """VoiceStats's fitted buffers, or None (with a note) when the train splits hold too few voices to fit:
    clips of fewer than 2 emotions; the model then keeps an unfitted one (no vote)."""
    x, y = voice_features(splits, cfg)
    counts = torch.bincount(y, minlength=len(EMOTIONS)).tolist()
    if sum(c > 0 for c in counts) < 2:
        say(f"note: model.voice_stats is not fitted: {len(y)} train clips with audio "
            f"({sum(c > 0 for c in counts)} emotions): it gives no vote")
        return None
    state = fit_linear(x, y, cfg.model.voice_stats_l2, weigh(counts))
    head = VoiceStats(cfg.model.n_mels)
    head.load_state_dict(state)
    with torch.no_grad():
        accuracy = float((head.classify(x.float()).argmax(1) == y).float().mean())
    say(f"model.voice_stats: fitted on {len(y)} train clips with audio (train accuracy {accuracy:.3f})")
    return state
