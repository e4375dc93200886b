"""build-shards configuration (section `build:` of a configs/*.yaml file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.config import ConfigError


@dataclass
class ProbeConfig:
    min_duration_s: float = 0.1      # shorter clips are rejected as too_short
    max_duration_s: float = 330.0    # longer ones as too_long (MELD's longest, test dia38_utt4, is 305 s)
    timeout_s: float = 60.0


@dataclass
class DecodeConfig:
    fps: float = 4.0                 # frames sampled per second ...
    max_frames: int = 16             # ... at most this many, spread over the whole clip
    frame_size: int = 640            # longest side of the decoded frames: faces are cropped from these
    sample_rate: int = 16000
    max_audio_s: float = 30.0        # audio kept per clip (the log-mel of longer clips is cut here)
    ffmpeg_threads: int = 1          # threads per ffmpeg process; parallelism comes from many processes
    timeout_s: float = 300.0


@dataclass
class FaceConfig:
    backend: Literal["mobilenet0.25", "resnet50"] = "mobilenet0.25"
    weights: str = ""                # explicit file; else $AVEMO_WEIGHTS_DIR, the cache, a download
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_frames: int = 0            # frames per detector pass, from many clips; 0 = auto: 8 on CPU, 64 on CUDA
    detect_size: int = 320           # longest side the detector sees (frames are shrunk for it; crops are
                                     # cut from the full decoded frame). Detector cost ~ size^2
    score_threshold: float = 0.8
    nms_iou: float = 0.4
    min_face_px: float = 16.0        # smaller detections (in decoded-frame pixels) are ignored
    crop: Literal["align", "box"] = "align"  # 5-landmark similarity alignment, or box + margin
    margin: float = 0.2
    crop_size: int = 112
    track_iou: float = 0.3           # IoU linking detections of the same face across frames
    missing: Literal["keep", "reject"] = "keep"   # clip with no face: keep audio + empty mask, or reject
    jpeg_quality: int = 90


@dataclass
class AudioConfig:
    missing: Literal["silent", "reject"] = "silent"  # no audio stream: keep with a silent mask, or reject
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160


@dataclass
class ShardConfig:
    max_clips: int = 200             # a shard holds at most this many clips ...
    max_mb: float = 128.0            # ... and at most about this many MB (estimated from durations)


@dataclass
class DaskConfig:
    workers: int = 0                 # LocalCluster worker processes; 0 = one per core
    decode_threads: int = 2          # concurrent ffmpeg processes inside one shard task
    torch_threads: int = 1           # intra-op threads of the CPU detector in each worker
    retries: int = 2                 # a failed shard task is retried this many times
    gpu_resource: bool = False       # shard tasks need the Dask resource GPU=1 (workers started with --resources GPU=1)
    memory_limit: str = "auto"


@dataclass
class BuildConfig:
    root: str = ""
    out: str = ""
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])
    scheduler: str = ""              # address of an existing Dask scheduler; empty = LocalCluster
    limit: int = 0                   # only the first N rows of each split (0 = all): smoke runs
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)

    def __post_init__(self):
        checks = [
            (self.decode.fps > 0, "decode.fps must be > 0"),
            (self.decode.max_frames >= 1, "decode.max_frames must be >= 1"),
            (self.decode.frame_size >= 64, "decode.frame_size must be >= 64"),
            (self.face.detect_size >= 64, "face.detect_size must be >= 64"),
            (self.probe.max_duration_s > self.probe.min_duration_s,
             "probe.max_duration_s must be greater than probe.min_duration_s"),
            (0 < self.face.score_threshold < 1, "face.score_threshold must be in (0, 1)"),
            (self.face.batch_frames >= 0, "face.batch_frames must be >= 0 (0 = auto)"),
            (self.face.crop_size == 112, "face.crop_size must be 112 (MobileFaceNet's input)"),
            (self.shards.max_clips >= 1, "shards.max_clips must be >= 1"),
            (self.dask.decode_threads >= 1, "dask.decode_threads must be >= 1"),
            (self.dask.retries >= 0, "dask.retries must be >= 0"),
            (self.audio.hop_length > 0 and self.audio.n_mels > 0, "audio.n_mels and hop_length must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
