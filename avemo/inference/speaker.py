"""Who speaks in a clip: faces detected in every frame (the pipeline's RetinaFace), followed as tracks (IoU,
re-linked by MobileFaceNet identity embeddings), each track scored by Light-ASD with the clip's audio and by
how closely its lips move with the voice (pipeline/speaker.py).

    finder = SpeakerFinder()
    result = finder(frames, times, audio)          # frames (T, H, W, 3) uint8 RGB at >= 15 fps (25 best)
    result.speech[0].prob, result.speech[0].window(0.5, 2.5), result.tracks[0].boxes

The pieces are separate for callers that already hold some of them (build-shards' detections, predict's
cache): pipeline.tracks.follow_faces, pipeline.speaker.score_tracks, model.asd.load_light_asd.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from avemo.core.weights import load_state_dict, resolve_weights
from avemo.model.asd import load_light_asd
from avemo.model.mobilefacenet import MobileFaceNet
from avemo.model.net import FACE_MEAN, FACE_STD
from avemo.pipeline.config import SYNC_WEIGHT, FaceConfig
from avemo.pipeline.faces import FrameDets, crop_faces, crop_transform, get_detector
from avemo.pipeline.speaker import TrackSpeech, score_tracks, speaking_in_window
from avemo.pipeline.tracks import Track, TrackConfig, follow_faces


@dataclass
class Speakers:
    dets: list[FrameDets]
    tracks: list[Track]
    speech: list[TrackSpeech]          # one per track, same order; [] without audio

    def speaker(self, start: float = 0.0, end: float = float("inf")) -> tuple[int, float] | None:
        """(track id, probability) of the face most likely speaking in [start, end) seconds; None: no face."""
        probs = speaking_in_window(self.speech, start, end)
        return max(probs.items(), key=lambda kv: kv[1]) if probs else None


@dataclass
class SpeakerConfig:
    face: FaceConfig = field(default_factory=FaceConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    asd_variant: str = "ava"           # Light-ASD weights: ava (AVA-ActiveSpeaker) or talkset (fine-tuned on TalkSet)
    asd_weights: str = ""              # explicit file; else $AVEMO_WEIGHTS_DIR, the cache, a download
    durations_s: tuple[int, ...] = (1, 2, 3, 4, 5, 6)   # Light-ASD passes, averaged (the original's)
    encoders_once: bool = False        # encoders over the whole track, only the GRU per chunk: ~6x cheaper
    embed_every: int = 5               # identity embedding of every n-th frame's faces (re-linking)
    sync_weight: float = SYNC_WEIGHT   # how much lip-voice sync moves a window's speaking probability (0: Light-ASD alone)


class SpeakerFinder:
    def __init__(self, cfg: SpeakerConfig | None = None, detector=None):
        self.cfg = cfg or SpeakerConfig()
        self.detector = detector if detector is not None else get_detector(self.cfg.face)
        self.asd = load_light_asd(self.cfg.asd_weights, self.cfg.asd_variant)
        self.embedder = MobileFaceNet()
        self.embedder.load_state_dict(load_state_dict(resolve_weights("mobilefacenet")))
        self.embedder.eval()
        self.mean = torch.tensor(FACE_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(FACE_STD).view(1, 3, 1, 1)

    @torch.inference_mode()
    def embed(self, frames: np.ndarray, dets: list[FrameDets], every: int | None = None) -> list[np.ndarray | None]:
        """(n_t, 128) embeddings of the aligned faces of every `every`-th frame (cfg.embed_every), None for the
        others."""
        every = every or self.cfg.embed_every
        rows = [(t, d) for t in range(0, len(dets), every) for d in range(len(dets[t].boxes))]
        out: list[np.ndarray | None] = [None] * len(dets)
        if not rows:
            return out
        mats = [crop_transform(dets[t].boxes[d], dets[t].landmarks[d], self.cfg.face) for t, d in rows]
        crops = crop_faces(frames, mats, [t for t, _ in rows], self.cfg.face.crop_size)  # (n, 112, 112, 3)
        x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        emb = self.embedder(x).numpy()                                                  # (n, 128)
        for t in {t for t, _ in rows}:
            out[t] = emb[[i for i, (s, _) in enumerate(rows) if s == t]]
        return out

    def scorer(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        return self.asd.speaking_logodds(faces, audio, self.cfg.durations_s, self.cfg.encoders_once)

    def __call__(self, frames: np.ndarray, times: np.ndarray, audio: np.ndarray | None,
                 sample_rate: int = 16000) -> Speakers:
        dets = self.detector.detect(list(frames))
        tracks = follow_faces(dets, self.embed(frames, dets), self.cfg.track)
        return Speakers(dets, tracks, score_tracks(frames, times, tracks, audio, self.scorer, sample_rate,
                                                  sync_weight=self.cfg.sync_weight))
