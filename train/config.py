"""train / evaluate configuration (sections `train:` and `evaluate:` of a configs/*.yaml file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.config import ConfigError
from model.net import ModelConfig


@dataclass
class DataConfig:
    batch_size: int = 32
    workers: int = 4                   # DataLoader workers per rank (capped by the number of shards)
    shuffle_buffer: int = 1000         # samples
    max_frames: int = 16               # face frames per clip fed to the model (T)
    max_mel_frames: int = 1000         # log-mel frames per clip (10 s at hop 160 / 16 kHz); longer is cropped
    pin_memory: bool = True
    corrupt_shards: Literal["stop", "skip"] = "stop"   # a shard failing its manifest checksum


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip_p: float = 0.5
    brightness: float = 0.25           # colour jitter factors, drawn once per clip
    contrast: float = 0.25
    saturation: float = 0.25
    rotate_deg: float = 8.0            # small affine, once per clip
    translate: float = 0.05
    scale: float = 0.08
    freq_masks: int = 2                # SpecAugment
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_width: int = 25
    gain_db: float = 6.0               # random loudness change, +-


@dataclass
class OptimConfig:
    epochs: int = 30
    lr: float = 1e-3
    face_lr_mult: float = 0.1          # pretrained MobileFaceNet learns slower
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    shards: str = ""
    run: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"       # auto = bf16 autocast on CUDA
    compile: bool = False                              # torch.compile the model
    imbalance: Literal["weighted_loss", "sqrt_weighted_loss", "none"] = "weighted_loss"
    train_split: str = "train"
    eval_split: str = "dev"
    log_every: int = 20                                # steps between metric lines
    eval_every: int = 1                                # epochs between dev evaluations (best.pt)
    stop_after_epochs: int = 0                         # end this run early (tests, time-boxed jobs); 0 = never
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if self.data.batch_size < 1 or self.data.workers < 0:
            raise ConfigError("data.batch_size must be >= 1 and data.workers >= 0")
        if self.optim.epochs < 1 or self.optim.lr <= 0:
            raise ConfigError("optim.epochs must be >= 1 and optim.lr > 0")
        if self.data.max_frames < 1 or self.data.max_mel_frames < 16:
            raise ConfigError("data.max_frames must be >= 1 and data.max_mel_frames >= 16")


@dataclass
class EvalConfig:
    shards: str = ""
    checkpoint: str = ""
    split: str = "test"
    out: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"       # auto = bf16 autocast on CUDA; off = float32
    batch_size: int = 32
    workers: int = 2
    ablation: bool = True              # also score face-only and audio-only (the other modality masked)
    corrupt_shards: Literal["stop", "skip"] = "stop"
