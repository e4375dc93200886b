"""train / evaluate configuration (sections `train:` and `evaluate:` of a configs/*.yaml file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.core.config import DEVICE_RE, check
from avemo.core.storage import SECRETS_HELP, secret_keys
from avemo.model.config import ModelConfig


@dataclass
class DataConfig:
    batch_size: int = 32               # clips per step per rank
    workers: int = 4                   # DataLoader workers per rank (capped by the number of shards)
    shuffle_buffer: int = 1000         # samples
    max_frames: int = 16               # face frames per clip fed to the model (T)
    max_mel_frames: int = 1000         # log-mel frames per clip (10 s at hop 160 / 16 kHz); longer is cropped
    pin_memory: bool = True            # page-locked batches for faster copies to CUDA
    corrupt_shards: Literal["stop", "skip"] = "stop"   # a shard failing its manifest checksum
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL --shards (no secrets)
    weights: list[float] = field(default_factory=list)  # several --shards: sampling weight per set; [] = by size
    epoch_samples: int = 0             # samples per epoch (all ranks); 0 = the sets' train samples together (docs/config.md)

    def __post_init__(self):
        check((not secret_keys(self.storage_options), SECRETS_HELP),
              (all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
               "weights must be >= 0 with a positive sum"),
              (self.epoch_samples >= 0, "epoch_samples must be >= 0 (0 = the sets' train samples together)"),
              (self.batch_size >= 1, "batch_size must be >= 1"), (self.workers >= 0, "workers must be >= 0"),
              (self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0"),
              (self.max_frames >= 1, "max_frames must be >= 1"), (self.max_mel_frames >= 16, "max_mel_frames must be >= 16"))


@dataclass
class AugmentConfig:
    enabled: bool = True               # augment training clips (faces and log-mels)
    flip_p: float = 0.5                # probability of a horizontal flip of a clip's faces
    brightness: float = 0.25           # colour jitter factors, drawn once per clip
    contrast: float = 0.25             # colour jitter factor
    saturation: float = 0.25           # colour jitter factor
    rotate_deg: float = 8.0            # small affine, once per clip
    translate: float = 0.05            # affine shift, fraction of the crop
    scale: float = 0.08                # affine zoom, +- fraction
    freq_masks: int = 2                # SpecAugment: mel-band masks per clip ...
    freq_mask_width: int = 8           # ... each at most this many mel bins wide
    time_masks: int = 2                # SpecAugment: time masks per clip ...
    time_mask_width: int = 25          # ... each at most this many mel frames long
    gain_db: float = 6.0               # random loudness change, +-
    grey_p: float = 0.0                # probability of turning a clip's faces grey (mixing grey and colour sets)
    erase_p: float = 0.0               # random erasing (Zhong et al. 2020; torchvision's RandomErasing): probability that a clip's faces lose one rectangle, the same on all its frames, filled with the ImageNet mean colour (what the model's normalisation maps to ~0): a hand, a microphone or a shadow over part of the face; 0 = off ...
    erase_area: float = 0.33           # ... the rectangle's area a fraction in [0.02, erase_area] of the crop (at most 0.5), aspect ratio 0.3-3.3
    speed: float = 0.0                 # speed perturbation of the log-mel: stretch by a factor in 1 +- speed
    freq_warp: float = 0.0             # vocal tract length perturbation: the log-mel's frequencies scaled by a factor in 1 +- freq_warp (a speaker with formants that much higher or lower; F0 moves with it; below 1 the top bins repeat the last one). Reads the bins as a 16 kHz build's (decode.sample_rate; other rates are refused); 0 = off
    noise_p: float = 0.0               # probability of adding stationary noise to a clip's log-mel ...
    noise_snr_db: float = 10.0         # ... at an SNR drawn from [noise_snr_db, noise_snr_db + 20] dB
    mixup: float = 0.0                 # mixup of clips with the same modalities in a batch: lam ~ Beta(mixup, mixup); 0 = off. train_acc counts each clip's own label

    def __post_init__(self):
        check((0 <= self.flip_p <= 1, "flip_p must be in [0, 1]"),
              (min(self.brightness, self.contrast, self.saturation, self.rotate_deg, self.translate, self.scale,
                   self.gain_db) >= 0, "jitter amounts must be >= 0"),
              (0 <= self.grey_p <= 1 and 0 <= self.noise_p <= 1, "grey_p and noise_p must be in [0, 1]"),
              (0 <= self.erase_p <= 1, "erase_p must be in [0, 1]"),
              (0.02 <= self.erase_area <= 0.5, "erase_area must be in [0.02, 0.5]: the rectangle's largest share of the crop"),
              (0 <= self.speed < 1, "speed must be in [0, 1)"),
              (0 <= self.freq_warp <= 0.3, "freq_warp must be in [0, 0.3]"),
              (self.mixup >= 0, "mixup (the Beta distribution's alpha) must be >= 0; 0 = off"),
              (self.scale < 1, "scale must be in [0, 1): a zoom of 1 - scale must stay above 0"),
              (min(self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width) >= 0,
               "SpecAugment mask counts and widths must be >= 0"))


@dataclass
class OptimConfig:
    epochs: int = 30                   # may grow on --resume: the cosine is re-planned over the new total
    lr: float = 1e-3                   # peak AdamW learning rate (after warmup; cosine decay to 0)
    face_lr_mult: float = 0.1          # pretrained MobileFaceNet learns slower
    weight_decay: float = 0.05         # AdamW, on weights with >= 2 dims only
    warmup_epochs: float = 1.0         # linear warmup from 0
    grad_clip: float = 1.0             # max gradient norm; 0 = off
    label_smoothing: float = 0.0       # cross-entropy label smoothing
    ema_decay: float = 0.0             # EMA of the weights per step (torch AveragedModel, warm-up min(d, (1+n)/(10+n))): 0 = off; e.g. 0.999 ~ the last 1,000 steps. The EMA weights are scored on dev (the trained ones beside them: dev_raw_*), pick best.pt and are the checkpoints' `model`. On the real recipe 0.999 scored below the trained weights on paired dev (bench/results/real_emotion_ema.md)

    def __post_init__(self):
        check((self.epochs >= 1, "epochs must be >= 1"), (0 < self.lr < 10, "lr must be in (0, 10)"),
              (self.face_lr_mult >= 0, "face_lr_mult must be >= 0"), (self.weight_decay >= 0, "weight_decay must be >= 0"),
              (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"), (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
              (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
              (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 = off)"))


REPORT_TO = ("tensorboard", "jsonl", "wandb", "mlflow")


@dataclass
class TrackerConfig:
    project: str = "avemo"             # W&B project / MLflow experiment
    run_name: str = ""                 # the run's name in W&B / MLflow; "" = the run folder's name
    mlflow_uri: str = ""               # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI, else MLflow's default


@dataclass
class TrainConfig:
    shards: list[str] | str = field(default_factory=list)  # build-shards folder(s) (--shards, repeatable: mixed by data.weights; the first one's dev split picks best.pt)
    run: str = ""                      # output folder: checkpoints, config.yaml, logs (--run)
    shards_sha256: str = ""            # sha256 of each SHARDS/manifest.parquet (comma list); "" = any data
    init_from: str = ""                # a checkpoint whose model weights start a new run (--init-from)
    seed: int = 0                      # model init, shuffling and augmentation
    device: str = "auto"                               # auto, cpu, cuda or cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"       # auto = bf16 autocast on CUDA
    compile: bool = False                              # torch.compile the model
    imbalance: Literal["weighted_loss", "sqrt_weighted_loss", "none"] = "weighted_loss"  # class weights in the loss
    train_split: str = "train"         # split trained on
    eval_split: str = "dev"            # split scored each eval_every epochs; its weighted F1 picks best.pt
    report_to: str = "tensorboard,jsonl"               # comma list of tensorboard, jsonl, wandb, mlflow
    log_every: int = 20                                # steps between metric lines
    eval_every: int = 1                                # epochs between dev evaluations (best.pt)
    stop_after_epochs: int = 0                         # end this run early (tests, time-boxed jobs); 0 = never
    dist_timeout_min: float = 60.0                     # DDP: how long ranks wait for rank 0 (dev scoring, hashing)
    allocator: Literal["glibc", "jemalloc", "auto"] = "glibc"   # malloc of `avemo train`: glibc (its heap kept, avemo/core/memory.py); jemalloc (it starts itself again with libjemalloc2 preloaded: the trainer's own memory 1.97 vs ~3 GB RSS, but the whole real recipe peaked at 4.41 vs 3.91 GB PSS, its loader processes grew: bench/results/real_emotion_jemalloc.md); auto = jemalloc where installed, on CPU, and no LD_PRELOAD of your own
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self):
        if isinstance(self.shards, str):        # one folder, as configs written before multi-set training
            self.shards = [self.shards] if self.shards else []
        self.shards = list(self.shards)
        unknown = [n for n in self.report_to.split(",") if n.strip() and n.strip() not in REPORT_TO]
        check((not unknown, f"report_to: unknown tracker {unknown[0] if unknown else ''!r} (known: "
                            f"{', '.join(REPORT_TO)})"),
              (DEVICE_RE.match(self.device) is not None, f"device={self.device} is not auto, cpu, cuda or cuda:N"),
              (self.log_every >= 1, "log_every must be >= 1"), (self.eval_every >= 1, "eval_every must be >= 1"),
              (self.stop_after_epochs >= 0, "stop_after_epochs must be >= 0 (0 = never)"),
              (self.dist_timeout_min > 0, "dist_timeout_min must be > 0"),
              (not self.data.weights or len(self.data.weights) == len(self.shards),
               f"data.weights has {len(self.data.weights)} value(s) for {len(self.shards)} --shards set(s)"),
              (len(set(self.shards)) == len(self.shards), "the same --shards folder is given twice"))


@dataclass
class EvalConfig:
    shards: str = ""                   # folder written by build-shards (--shards)
    checkpoint: str = ""               # best.pt or last.pt of a run (--checkpoint)
    split: str = "test"                # train, dev or test (--split)
    out: str = ""                      # folder for metrics.json, predictions.parquet, confusion.png (--out)
    device: str = "auto"                               # auto, cpu, cuda or cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"       # auto = bf16 autocast on CUDA; off = float32
    batch_size: int = 32               # clips per forward pass
    workers: int = 2                   # DataLoader workers
    ablation: bool = True              # also score face-only and audio-only (the other modality masked)
    corrupt_shards: Literal["stop", "skip"] = "stop"   # a shard failing its manifest checksum
    storage_options: dict = field(default_factory=dict)  # fsspec options for URL --shards/--checkpoint (no secrets)
    log_to_run: bool = False           # attach the metrics (test/...) to the checkpoint's run and its trackers

    def __post_init__(self):
        check((not secret_keys(self.storage_options), SECRETS_HELP),
              (DEVICE_RE.match(self.device) is not None, f"device={self.device} is not auto, cpu, cuda or cuda:N"),
              (self.batch_size >= 1, "batch_size must be >= 1"), (self.workers >= 0, "workers must be >= 0"))
