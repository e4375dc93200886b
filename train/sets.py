"""The shard sets a run trains on: every shard of their train and eval splits verified, a short name per set
for its metrics, the sets' audio settings checked against each other, and the log-mel statistics that
scale the model's input."""
from __future__ import annotations

import re

import torch

from avemo.core.errors import ConfigError
from avemo.core.melscale import LOG_MEL_RATE
from avemo.shards.manifest import read_build_config
from avemo.train.config import TrainConfig
from avemo.train.data import EmptySplitError, SplitShards, eval_loader, split_shards


# build settings that shape the model's input: every set trained on together must share them
AUDIO_KEYS = ("n_mels", "n_fft", "hop_length", "sample_rate")


def set_names(shards: list[str]) -> list[str]:
    """A short name per shard set for its metrics (dev_NAME_weighted_f1): the folder's name, made unique."""
    names: list[str] = []
    for i, url in enumerate(shards):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(url).rstrip("/").rsplit("/", 1)[-1]) or f"set{i}"
        name = f"{name}_set" if name in ("best", "set", "raw") else name    # dev_best_weighted_f1 is the run's best
        names.append(name if name not in names else f"{name}_{i}")
    return names


def prepare_data(cfg: TrainConfig, log) -> tuple[list, list, dict]:
    """([train split per set], [eval split per set, None where a later set has none], build config of the
    first set): every shard of both splits hashed against its manifest; sets whose audio settings differ
    are refused (one model reads them all)."""
    options = cfg.data.storage_options    # a --shards may be a URL (avemo.core.storage)
    trains: list[SplitShards] = []
    evals: list[SplitShards | None] = []
    builds: list[dict] = []
    for i, shards in enumerate(cfg.shards):
        trains.append(split_shards(shards, cfg.train_split, cfg.data.corrupt_shards, log_fn=log, options=options))
        try:
            evals.append(split_shards(shards, cfg.eval_split, cfg.data.corrupt_shards, log_fn=log, options=options))
        except EmptySplitError:
            if i == 0:
                raise
            log(f"note: {shards} has no {cfg.eval_split} samples: it is trained on, not scored")
            evals.append(None)
        builds.append(read_build_config(shards, options))   # the first travels in every checkpoint (predict)
    # sample_rate is the decode: section's, the rest the audio: section's
    audio = [{k: (b.get("decode" if k == "sample_rate" else "audio") or {}).get(k) for k in AUDIO_KEYS}
             for b in builds]
    for shards, settings in zip(cfg.shards[1:], audio[1:]):
        differ = [f"{k} {audio[0][k]} vs {settings[k]}" for k in AUDIO_KEYS
                  if None not in (audio[0][k], settings[k]) and audio[0][k] != settings[k]]
        if differ:
            raise ConfigError(f"--shards {shards} was built with other audio settings than {cfg.shards[0]} "
                              f"({', '.join(differ)}): rebuild it with the same audio: and decode.sample_rate")
    rate = audio[0]["sample_rate"]
    for on, name, off in ((cfg.augment.freq_warp, "augment.freq_warp", "0"),
                          (cfg.model.voice_warp_tta, "model.voice_warp_tta", "[]")):
        if on and rate not in (None, LOG_MEL_RATE):
            raise ConfigError(f"{name} reads the log-mel's bins as a {LOG_MEL_RATE} Hz build's, and "
                              f"--shards {cfg.shards[0]} was built at {rate} Hz: set {name}={off}")
    for shards, build in zip(cfg.shards, builds):
        require_pitch(shards, build, cfg.model.pitch)
    return trains, evals, builds[0]


def require_pitch(shards: str, build: dict, pitch: bool) -> None:
    """A model with model.pitch=true reads each clip's pitch track: refuse, in one line and before any work,
    shards built without it (their every clip with audio would otherwise be skipped)."""
    if pitch and not (build.get("audio") or {}).get("pitch"):
        raise ConfigError(f"model.pitch=true reads each clip's pitch track, and --shards {shards} was built "
                          "without one: rebuild it with audio.pitch=true (a set of images costs nothing more)")


@torch.no_grad()
def mel_statistics(urls: list[str] | list[list[str]], cfg: TrainConfig,
                   max_batches: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean/std over valid frames of the first train samples of each set (model buffers)."""
    total = torch.zeros(cfg.model.n_mels, dtype=torch.float64)
    sq = torch.zeros_like(total)
    n = 0
    for set_urls in (urls if urls and isinstance(urls[0], list) else [urls]):
        for i, batch in enumerate(eval_loader(set_urls, cfg.data.batch_size, 0, cfg.data.max_frames,  # type: ignore[arg-type]
                                              cfg.data.max_mel_frames, n_mels=cfg.model.n_mels)):
            m = batch["mel_mask"].unsqueeze(1)
            total += (batch["mel"] * m).sum((0, 2)).double()
            sq += (batch["mel"] ** 2 * m).sum((0, 2)).double()
            n += int(m.sum())
            if i + 1 >= max_batches:
                break
    if n == 0:
        return torch.zeros(cfg.model.n_mels), torch.ones(cfg.model.n_mels)
    mean = total / n
    return mean.float(), (sq / n - mean ** 2).clamp(min=1e-4).sqrt().float()
