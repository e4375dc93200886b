"""The model's settings (section `model:` of train's config), apart from the model so that reading and
checking a config never imports torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avemo.core.config import check

PITCH_ROWS = 2       # log2(F0 / 200 Hz) and periodicity per mel frame (pipeline.audio.pitch_track)


@dataclass
class ModelConfig:
    face_weights: str = ""                        # MobileFaceNet init: a file, or "auto" = $AVEMO_WEIGHTS_DIR/cache
    face_trainable: Literal["all", "none", "last"] = "all"  # "none": frozen encoder in eval mode (fast CPU
    #                                              runs); "last": only its last face_train_blocks blocks learn
    face_train_blocks: int = 4                    # with face_trainable=last: how many of MobileFaceNet's 21 blocks
    face_colour: Literal["rgb", "grey"] = "rgb"   # "grey": every face read as grey (luma), in training and in use
    #                                              (a model that learnt from grey FER2013 faces sees colour ones alike)
    face_flip_tta: bool = False                   # in use only: each face read as is and mirrored, embeddings averaged
    #                                              (test-time augmentation; 2x the face CNN's cost per frame)
    voice_warp_tta: list[float] = field(default_factory=list)  # in use only: voices also read warped, averaged
    #                                              ([0.9, 1.1]: each voice as is and with its frequencies scaled
    #                                              by 0.9 and 1.1, augment.freq_warp's warp; voice embeddings
    #                                              averaged; [] = off; (1 + len) x the audio CNN's cost)
    n_mels: int = 64                              # mel bins: must match the shards' audio.n_mels
    mel_norm: Literal["global", "utterance"] = "global"  # log-mel scaling: train set's or each clip's per-bin mean/std
    voice_trim_db: float = 0.0                    # > 0: the voice branch skips each clip's quiet ends (0 = off)
    #                                              (leading and trailing frames more than this many dB below the
    #                                              clip's loudest: left out of its norm statistics and pooling as
    #                                              padding is), so 1 s or no silence around the words read alike
    audio_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # audio CNN stage widths
    audio_time_stride: int = 1                    # the audio CNN's first convolution steps this many mel frames
    #                                              (1 or 2): 2 reads the voice at 50 frames/s after a learnt
    #                                              3x3 filter over the full 100, half the audio CNN's cost
    hidden: int = 128                             # LSTM hidden size per modality
    audio_pool: Literal["mean", "stats", "attention"] = "mean"  # voice frames -> clip: mean; mean + std; attentive
    #                                              statistics (learnt frame weights); std = how pitch/energy move
    audio_freq: Literal["mean", "flatten"] = "mean"  # audio CNN output -> LSTM per frame: mean over mel bands (blind to
    #                                              where in frequency a pattern sits); flatten: bands x channels kept
    pitch: bool = False                           # the voice branch also reads each frame's F0 and periodicity:
    #                                              shards built with audio.pitch=true; its input then carries
    #                                              PITCH_ROWS rows after the n_mels mel bins
    voice_stats: float = 0.0                      # weight of a late-fused voice classifier on utterance mel statistics
    #                                              (0 = none; docs/config.md): fitted before training on the train
    #                                              voices, its log-probabilities x this weight added to the logits
    #                                              of clips with audio in use (not in training)
    voice_stats_l2: float = 0.1                   # its L2 penalty (sum of squared weights, per unit mean loss)
    fusion_dim: int = 128                         # width of the fused clip embedding
    dropout: float = 0.3                          # before the classifier
    modality_dropout: float = 0.2                 # per sample, drop one present modality in training

    @property
    def audio_rows(self) -> int:
        """Rows of the model's audio input: the mel bins, then the pitch track's (model.pitch)."""
        return self.n_mels + (PITCH_ROWS if self.pitch else 0)

    def __post_init__(self):
        check((1 <= self.face_train_blocks <= 21, "face_train_blocks must be in 1..21 (MobileFaceNet's blocks)"),
              (self.audio_freq == "mean" or self.n_mels >= 2 ** len(self.audio_channels),
               "audio_freq=flatten needs n_mels >= 2 ** (audio CNN stages): each stage halves the bands"),
              (self.audio_time_stride in (1, 2), "audio_time_stride must be 1 or 2"),
              (all(0.5 <= a <= 2.0 and a != 1.0 for a in self.voice_warp_tta),
               "voice_warp_tta: factors in 0.5..2.0 other than 1 (the voice is always read as is too)"),
              (self.voice_trim_db >= 0, "voice_trim_db must be >= 0 (0 = off)"),
              (self.voice_stats >= 0 and self.voice_stats_l2 > 0, "voice_stats must be >= 0 and voice_stats_l2 > 0"))
