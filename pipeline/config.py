"""build-shards configuration (section `build:` of a configs/*.yaml file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.core.config import DEVICE_RE, check
from avemo.core.storage import SECRETS_HELP, is_url, secret_keys
from avemo.pipeline.layout import SPLITS

SYNC_WEIGHT = 2.0   # lip sync in the speaking probability (pipeline/speaker.py; chosen on the take pairs)


@dataclass
class ProbeConfig:
    min_duration_s: float = 0.1      # shorter clips are rejected as too_short
    max_duration_s: float = 330.0    # longer ones as too_long (MELD's longest, test dia38_utt4, is 305 s)
    timeout_s: float = 60.0          # ffprobe gives up on a file after this long
    max_pixels: int = 40_000_000     # a picture or video frame with more pixels is too_large, refused before it is
                                     # decoded (a 775 KB PNG of 16000x16000 took ffmpeg ~830 MB)

    def __post_init__(self):
        check((self.min_duration_s >= 0, "min_duration_s must be >= 0"),
              (self.max_duration_s > self.min_duration_s, "max_duration_s must be greater than min_duration_s"),
              (self.timeout_s > 0, "timeout_s must be > 0"),
              (10_000 <= self.max_pixels <= 2**31 - 1, "max_pixels must be in [10000, 2147483647]"))


@dataclass
class DecodeConfig:
    fps: float = 4.0                 # frames sampled per second ...
    max_frames: int = 16             # ... at most this many, spread over the whole clip
    frame_size: int = 640            # longest side of the decoded frames: faces are cropped from these
    sample_rate: int = 16000         # audio resampled to this rate, mono
    max_audio_s: float = 30.0        # audio kept per clip (the log-mel of longer clips is cut here)
    ffmpeg_threads: int = 1          # threads per ffmpeg process; parallelism comes from many processes
    timeout_s: float = 300.0         # ffmpeg gives up on a clip after this long (decode_error)
    in_process: bool = True          # a media list's images (Pillow) and wav/flac/aiff audio (soundfile) are read in
                                     # this process, not by an ffprobe + ffmpeg process each; false: ffmpeg for all

    def __post_init__(self):
        check((self.fps > 0, "fps must be > 0"), (self.fps <= 60, "fps must be <= 60"),
              (1 <= self.max_frames <= 1024, "max_frames must be in [1, 1024]"),
              (64 <= self.frame_size <= 4096, "frame_size must be in [64, 4096]"),
              (8000 <= self.sample_rate <= 48000, "sample_rate must be in [8000, 48000]"),
              (0 < self.max_audio_s <= 3600, "max_audio_s must be in (0, 3600]"),
              (1 <= self.ffmpeg_threads <= 64, "ffmpeg_threads must be in [1, 64]"),
              (0 < self.timeout_s <= 86400, "timeout_s must be in (0, 86400]"))


@dataclass
class FaceConfig:
    backend: Literal["mobilenet0.25", "resnet50"] = "mobilenet0.25"   # RetinaFace backbone (resnet50: slower, more accurate)
    weights: str = ""                # explicit file; else $AVEMO_WEIGHTS_DIR, the cache, a download
    device: str = "auto"             # auto, cpu, cuda or cuda:N
    batch_frames: int = 0            # frames per detector pass, from many clips; 0 = auto: 8 on CPU, 64 on CUDA
    detect_size: int = 320           # longest side the detector sees (frames are shrunk for it; crops are
                                     # cut from the full decoded frame). Detector cost ~ size^2
    score_threshold: float = 0.8     # detections below this confidence are dropped
    nms_iou: float = 0.4             # non-maximum suppression overlap
    min_face_px: float = 16.0        # smaller detections (in decoded-frame pixels) are ignored
    crop: Literal["align", "box"] = "align"  # 5-landmark similarity alignment, or box + margin
    margin: float = 0.2              # extra border around the box (crop=box), fraction of its size
    crop_size: int = 112             # crop side in pixels (MobileFaceNet takes 112)
    track_iou: float = 0.3           # IoU linking detections of the same face across frames
    missing: Literal["keep", "reject"] = "keep"   # video with no face: keep audio + empty mask, or reject (image: always)
    jpeg_quality: int = 90           # of the face crops stored in the shards
    # a tightly cropped face (FER2013's 48x48) fills its whole picture, and the detector, trained on faces in
    # scenes, misses most of them: an image whose longest side is below pad_target_px is scaled up to it
    # and centred on a grey pad_canvas_px square before detection (its crops are cut from that frame too)
    pad_small_images: bool = True    # scale small images up and pad them before detection
    pad_target_px: int = 160         # a small image's longest side after scaling up
    pad_canvas_px: int = 320         # the grey square it is centred on
    image_mode: Literal["detect", "whole"] = "detect"   # a list's images: detect the face, or `whole`: each image
                                                        # is an already-cropped face (FER2013, aligned face sets),
                                                        # cropped as the aligned detection of such a face is framed,
                                                        # no detector run (10x faster); videos are always detected
    # whose face a clip's strip shows: `score` the most prominent face (detector score x size, gaps filled from
    # the next faces); `asd` the face that speaks (Light-ASD on every face track of the clip at 25 fps with its
    # audio): frames where the speaker is off screen get no face; a clip without audio, longer than asd_max_s
    # or where nobody speaks clearly (below speaking_min) keeps the `score` choice
    speaker: Literal["score", "asd"] = "score"   # whose face: the most prominent (score) or the one speaking (asd)
    speaking_min: float = 0.3        # the speaker's speaking probability (Light-ASD + lip sync) must reach this
    asd_variant: Literal["ava", "talkset"] = "ava"   # Light-ASD weights (ava: trained on AVA-ActiveSpeaker)
    asd_weights: str = ""            # an explicit Light-ASD file; else $AVEMO_WEIGHTS_DIR, the cache, a download
    asd_max_s: float = 12.0          # longer clips are not scored (25 fps frames of the whole clip are held)
    asd_detect_every: int = 5        # the 25 fps pass detects faces on every n-th frame (boxes linear between)
    asd_sync_weight: float = SYNC_WEIGHT   # log-odds the speaking probability gains per unit of lip-voice correlation (0: Light-ASD alone)
    # a clip whose sampled frames show one person only (at most one face per frame, one identity): its strip is
    # that face whoever speaks, so `skip` leaves Light-ASD out (speaker_conf stays empty); `score` runs it anyway
    asd_one_face: Literal["skip", "score"] = "skip"  # one person in the sampled frames: skip Light-ASD, or score it
    # MELD layout: link each dialogue's Speaker names to the faces that recur in their own utterances
    # (pipeline/names.py); where a name links, its face is the strip's, elsewhere face.speaker's choice stands
    speaker_names: bool = False      # MELD's Speaker column picks the face where it links (MobileFaceNet identities)
    names_min_sim: float = 0.5       # cosine similarity at which two faces of a dialogue are one person
    names_min_lift: float = 0.2      # a name links to a face shown this much more in its own clips than in others'
    names_max_clips: int = 16        # a dialogue's clips held at once (~30 MB each at 720p): longer ones link in parts

    def __post_init__(self):
        check((DEVICE_RE.match(self.device) is not None, f"device={self.device} is not auto, cpu, cuda or cuda:N"),
              (0 <= self.batch_frames <= 1024, "batch_frames must be in [0, 1024] (0 = auto)"),
              (64 <= self.detect_size <= 4096, "detect_size must be in [64, 4096]"),
              (0 < self.score_threshold < 1, "score_threshold must be in (0, 1)"),
              (0 < self.nms_iou < 1, "nms_iou must be in (0, 1)"),
              (self.min_face_px >= 0, "min_face_px must be >= 0"),
              (self.margin >= 0, "margin must be >= 0"),
              (self.crop_size == 112, "crop_size must be 112 (MobileFaceNet's input)"),
              (0 <= self.track_iou <= 1, "track_iou must be in [0, 1]"),
              (-1 <= self.names_min_sim <= 1, "names_min_sim must be in [-1, 1]"),
              (0 <= self.names_min_lift <= 1, "names_min_lift must be in [0, 1]"),
              (self.names_max_clips >= 1, "names_max_clips must be >= 1"),
              (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in [1, 100]"),
              (self.pad_target_px >= 16, "pad_target_px must be >= 16"),
              (self.pad_canvas_px >= self.pad_target_px, "pad_canvas_px must be >= pad_target_px"),
              (0 <= self.speaking_min <= 1, "speaking_min must be in [0, 1]"),
              (0 < self.asd_max_s <= 40, "asd_max_s must be in (0, 40] seconds (1,000 frames at 25 fps)"),
              (0 <= self.asd_sync_weight <= 20, "asd_sync_weight must be in [0, 20]"),
              (1 <= self.asd_detect_every <= 5, "asd_detect_every must be in [1, 5] frames (0.2 s at 25 fps: a "
                                                                    "track's 0.4 s gaps still bridge one miss)"))


@dataclass
class AudioConfig:
    missing: Literal["silent", "reject"] = "silent"  # no audio stream: keep with a silent mask, or reject
    n_mels: int = 64                 # mel bins of the log-mel
    n_fft: int = 400                 # FFT window (25 ms at 16 kHz)
    hop_length: int = 160            # hop between mel frames (10 ms at 16 kHz)
    pitch: bool = False              # also store each mel frame's F0 and periodicity (YIN, .pitch.npy), which
    #                                  a model with model.pitch=true reads beside the log-mel

    def __post_init__(self):
        check((8 <= self.n_mels <= 256, "n_mels must be in [8, 256]"),
              (16 <= self.n_fft <= 8192, "n_fft must be in [16, 8192]"),
              (0 < self.hop_length <= self.n_fft, "hop_length must be in (0, n_fft]"))


@dataclass
class ShardConfig:
    max_clips: int = 200             # a shard holds at most this many clips ...
    max_mb: float = 128.0            # ... and at most about this many MB (estimated from durations)

    def __post_init__(self):
        check((self.max_clips >= 1, "max_clips must be >= 1"), (self.max_mb > 0, "max_mb must be > 0"))


@dataclass
class DaskConfig:
    workers: int = 0                 # LocalCluster worker processes; 0 = one per core
    decode_threads: int = 2          # concurrent ffmpeg processes inside one shard task
    torch_threads: int = 1           # intra-op threads of the CPU detector in each worker
    retries: int = 2                 # a failed shard task is retried this many times
    gpu_resource: bool = False       # shard tasks need the Dask resource GPU=1 (workers started with --resources GPU=1)
    memory_limit: str = "auto"       # per LocalCluster worker (Dask syntax: "4GB"; auto = share of RAM)
    close_timeout_s: float = 30.0    # wait this long for the LocalCluster to stop after the build; longer is a warning

    def __post_init__(self):
        check((0 <= self.workers <= 1024, "workers must be in [0, 1024] (0 = one per core)"),
              (0 < self.close_timeout_s <= 3600, "close_timeout_s must be in (0, 3600] seconds"),
              (1 <= self.decode_threads <= 64, "decode_threads must be in [1, 64]"),
              (1 <= self.torch_threads <= 256, "torch_threads must be in [1, 256]"),
              (0 <= self.retries <= 100, "retries must be in [0, 100]"))


@dataclass
class BuildConfig:
    root: str = ""                   # MELD folder: CSVs + video folders (--root), the default source ...
    media_list: str = ""             # ... or a media list CSV: path,label,split[,key,speaker,start,end] (--list)
    out: str = ""                    # output folder or bucket URL for shards + manifest.parquet (--out)
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])   # splits to build (--splits)
    scheduler: str = ""              # address of an existing Dask scheduler; empty = LocalCluster
    limit: int = 0                   # only the first N rows of each split (0 = all): smoke runs
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL --out (no secrets)

    def __post_init__(self):
        check((not secret_keys(self.storage_options), SECRETS_HELP),
              (not is_url(self.root), f"root={self.root}: the MELD media must be a local or mounted folder "
                                      "(only --out, --shards and --checkpoint may be URLs)"),
              (not is_url(self.media_list), f"media_list={self.media_list}: a media list must be a local file"),
              (self.limit >= 0, "limit must be >= 0 (0 = all rows)"),
              (not (self.root and self.media_list), "root and media_list cannot both be given: one source of rows"),
              (len(self.splits) > 0, "splits must name at least one split"),
              (set(self.splits) <= set(SPLITS) and len(set(self.splits)) == len(self.splits),
               f"splits must name each of {', '.join(SPLITS)} at most once; got {self.splits}"))
