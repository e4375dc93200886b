"""train / evaluate configuration (sections `train:` and `evaluate:` of a configs/*.yaml file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.core.config import DEVICE_RE, check
from avemo.core.storage import SECRETS_HELP, secret_keys
from avemo.model.net import ModelConfig


@dataclass
class DataConfig:
    batch_size: int = 32
    workers: int = 4                   # DataLoader workers per rank (capped by the number of shards)
    shuffle_buffer: int = 1000         # samples
    max_frames: int = 16               # face frames per clip fed to the model (T)
    max_mel_frames: int = 1000         # log-mel frames per clip (10 s at hop 160 / 16 kHz); longer is cropped
    pin_memory: bool = True
    corrupt_shards: Literal["stop", "skip"] = "stop"   # a shard failing its manifest checksum
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL --shards (no secrets)

    def __post_init__(self):
        check((not secret_keys(self.storage_options), SECRETS_HELP),
              (self.batch_size >= 1, "batch_size must be >= 1"), (self.workers >= 0, "workers must be >= 0"),
              (self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0"),
              (self.max_frames >= 1, "max_frames must be >= 1"), (self.max_mel_frames >= 16, "max_mel_frames must be >= 16"))


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

    def __post_init__(self):
        check((0 <= self.flip_p <= 1, "flip_p must be in [0, 1]"),
              (min(self.brightness, self.contrast, self.saturation, self.rotate_deg, self.translate, self.scale,
                   self.gain_db) >= 0, "jitter amounts must be >= 0"),
              (min(self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width) >= 0,
               "SpecAugment mask counts and widths must be >= 0"))


@dataclass
class OptimConfig:
    epochs: int = 30
    lr: float = 1e-3
    face_lr_mult: float = 0.1          # pretrained MobileFaceNet learns slower
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        check((self.epochs >= 1, "epochs must be >= 1"), (0 < self.lr < 10, "lr must be in (0, 10)"),
              (self.face_lr_mult >= 0, "face_lr_mult must be >= 0"), (self.weight_decay >= 0, "weight_decay must be >= 0"),
              (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"), (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
              (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"))


@dataclass
class TrainConfig:
    shards: str = ""
    run: str = ""
    seed: int = 0
    device: str = "auto"                               # auto, cpu, cuda or cuda:N
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
        check((DEVICE_RE.match(self.device) is not None, f"device={self.device} is not auto, cpu, cuda or cuda:N"),
              (self.log_every >= 1, "log_every must be >= 1"), (self.eval_every >= 1, "eval_every must be >= 1"),
              (self.stop_after_epochs >= 0, "stop_after_epochs must be >= 0 (0 = never)"))


@dataclass
class EvalConfig:
    shards: str = ""
    checkpoint: str = ""
    split: str = "test"
    out: str = ""
    device: str = "auto"                               # auto, cpu, cuda or cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"       # auto = bf16 autocast on CUDA; off = float32
    batch_size: int = 32
    workers: int = 2
    ablation: bool = True              # also score face-only and audio-only (the other modality masked)
    corrupt_shards: Literal["stop", "skip"] = "stop"
    storage_options: dict = field(default_factory=dict)  # fsspec options for URL --shards/--checkpoint (no secrets)

    def __post_init__(self):
        check((not secret_keys(self.storage_options), SECRETS_HELP),
              (DEVICE_RE.match(self.device) is not None, f"device={self.device} is not auto, cpu, cuda or cuda:N"),
              (self.batch_size >= 1, "batch_size must be >= 1"), (self.workers >= 0, "workers must be >= 0"))
