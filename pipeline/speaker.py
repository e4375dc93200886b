"""Who is speaking: each face track's active-speaker input (grey 112x112 crops at 25 fps + the audio from its
first frame), scored by a network passed in, and its speaking probability per frame, per track and per window.

The network is a `Scorer` (avemo.model.asd.LightASD.speaking_logodds fits): the pipeline does not import
the model layer, so build-shards can be handed one without a cycle.

Crops as Light-ASD's authors prepare them (TalkNet's convention): the box's centre and half-size
s = max(w, h) / 2 median-filtered over 13 frames; a square of side 2.8 s from s above the centre to 1.8 s
below it, out-of-frame pixels grey (110), resized to 224, grey, and its central 112x112. Here that central
square (side 1.4 s, centred 0.4 s below the box centre: mouth, nose and cheeks) is sampled from the grey
frame straight at 112 pixels (bilinear, as their resize; no intermediate 224 video file), and the median
filter holds the track's first and last values at its ends (theirs pads with zeros, which shrinks the
box of tracks shorter than 13 frames to nothing).

Light-ASD alone cannot tell two faces apart that both talk at about the time the voice does (two takes of one
sentence side by side: the own face chosen in 18/30 scenes, bench/results/speaker_sync.md; its score is flat
within +-0.2 s of audio shift). So each window's speaking probability also weighs lip sync by hand: the
Pearson correlation, over the window's 25 fps samples, between how much the lower face changes from one
sample to the next and the voice's loudness (log RMS of each sample's 40 ms), the classic audio-visual
synchrony measure (Hershey & Movellan 2000; Cutler & Davis 2000). The window's probability is
sigmoid(logit(Light-ASD's mean probability) + sync_weight x correlation): a face whose lips move in step
with the voice gains, one whose lips move out of step (or not at all) does not, and Light-ASD's verdict on a
silent listener (probability ~0.01) stands. sync_weight 0 is Light-ASD alone. Measured on the take pairs:
bench/results/speaker.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avemo.core.errors import DataError
from avemo.pipeline.config import SYNC_WEIGHT
from avemo.pipeline.tracks import Track, TrackConfig, follow_faces, iou_matrix, shot_changes

ASD_FPS = 25
ASD_RATE = 16000
CROP = 112
PAD_GREY = 110.0          # the original's out-of-frame fill
SMOOTH = 13               # median filter length of the box centre and size, in 25 fps frames
GREY = (0.299, 0.587, 0.114)
SYNC_REGION = (56, 112, 20, 92)   # rows, columns of the 112x112 crop whose change is lip motion: the lower face
SYNC_MIN_SAMPLES = 8      # a window needs this many samples (0.32 s) for a correlation; fewer: Light-ASD alone
SYNC_CAP = 90             # lip motion above this percentile of the window's counts as that much (a cut's jump)

# faces (T, 112, 112) uint8 grey at 25 fps, audio (N,) float32 16 kHz from the first face -> (T,) log-odds
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def lip_motion(faces: np.ndarray) -> np.ndarray:
    """(n, 112, 112) grey crops at 25 fps -> (n,) float64: the mean absolute change of the lower face from the
    previous sample (the first sample repeats the second's). Sample i's change (frames i-1 to i) is paired
    with the voice's loudness over sample i's 40 ms: the lips lead the sound by about a frame (pairing it
    with frames i to i+1 instead chose the own face in 22 vs 28 of 30 take pairs)."""
    y0, y1, x0, x1 = SYNC_REGION
    region = np.asarray(faces)[:, y0:y1, x0:x1].astype(np.float32)
    if len(region) < 2:
        return np.zeros(len(region))
    change = np.abs(np.diff(region, axis=0)).mean(axis=(1, 2)).astype(np.float64)
    return np.concatenate([change[:1], change])


def voice_envelope(audio: np.ndarray, n: int, rate: int = ASD_RATE) -> np.ndarray:
    """(N,) audio from the first sample's time -> (n,) float64 log RMS of each 25 fps sample's 40 ms; NaN for
    samples past the audio's end (no sound to compare with, not silence)."""
    hop = rate // ASD_FPS
    wave = np.asarray(audio, dtype=np.float64)[: n * hop]
    whole = len(wave) // hop
    out = np.full(n, np.nan)
    if whole:
        out[:whole] = np.log(1e-4 + np.sqrt((wave[: whole * hop].reshape(whole, hop) ** 2).mean(axis=1)))
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over the pairs where both are known (not NaN); None with fewer than
    SYNC_MIN_SAMPLES of them or a flat series."""
    known = ~(np.isnan(a) | np.isnan(b))
    a, b = a[known], b[known]
    if len(a) < SYNC_MIN_SAMPLES or float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class TrackSpeech:
    track: int
    times: np.ndarray     # (n,) seconds of the 25 fps samples of the track
    boxes: np.ndarray     # (n, 4) xyxy pixels of the face box at those times
    logodds: np.ndarray   # (n,) Light-ASD's speaking log-odds per sample
    motion: np.ndarray | None = None     # (n,) lip motion per sample (lip_motion); None: Light-ASD alone
    envelope: np.ndarray | None = None   # (n,) the voice's loudness per sample (voice_envelope)
    sync_weight: float = 0.0             # log-odds per unit of lip-voice correlation (module docstring)

    @property
    def probs(self) -> np.ndarray:
        """Light-ASD's speaking probability per sample."""
        return 1.0 / (1.0 + np.exp(-self.logodds.astype(np.float64)))

    @property
    def prob(self) -> float:
        """Speaking probability of the track: window() over all of it."""
        p = self.window(-np.inf, np.inf)
        return 0.0 if p is None else p

    def sync(self, start: float, end: float) -> float | None:
        """Correlation of the lips' motion with the voice's loudness over the samples in [start, end) seconds;
        None where it cannot be told (no audio or motion kept, too few samples, a still face, a flat voice).
        The motion is capped at its SYNC_CAP-th percentile in the window: one jump (a cut within the track, the
        box catching up) does not decide the correlation (on the take pairs: 28/30 clips, 70/80 windows
        capped, 28/30 and 69/80 uncapped, offline)."""
        if self.motion is None or self.envelope is None:
            return None
        sel = (self.times >= start) & (self.times < end)
        motion = self.motion[sel]
        return correlation(np.minimum(motion, np.percentile(motion, SYNC_CAP)) if len(motion) else motion,
                           self.envelope[sel])

    def window(self, start: float, end: float) -> float | None:
        """Speaking probability over the track's samples in [start, end) seconds: Light-ASD's mean probability,
        its log-odds moved by sync_weight x the lip-voice correlation; None: not on screen."""
        sel = (self.times >= start) & (self.times < end)
        if not sel.any():
            return None
        p = float(self.probs[sel].mean())
        r = self.sync(start, end) if self.sync_weight else None
        if r is None:
            return p
        p = min(max(p, 1e-6), 1 - 1e-6)
        return float(1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + self.sync_weight * r))))


def median_smooth(x: np.ndarray, size: int = SMOOTH) -> np.ndarray:
    """(n, c) -> running median over `size` rows, the first and last rows repeated at the ends."""
    if len(x) < 2 or size < 2:
        return x.copy()
    half = size // 2
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, size, axis=0), axis=-1)


def crop_squares(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) xyxy face boxes at 25 fps -> (n, 3) crop squares (centre x, centre y, side) in pixels."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    cx, cy, half = median_smooth(np.stack([cx, cy, half], 1).astype(np.float64)).T
    return np.stack([cx, cy + 0.4 * half, 1.4 * half], 1)


def grey_crops(frames: np.ndarray, ids: np.ndarray, squares: np.ndarray, chunk: int = 16) -> np.ndarray:
    """frames (T, H, W, 3) uint8 RGB, ids (n,) frame of each crop, squares (n, 3) -> (n, 112, 112) uint8 grey."""
    n, (h, w) = len(ids), frames.shape[1:3]
    out = np.empty((n, CROP, CROP), dtype=np.uint8)
    weights = torch.tensor(GREY).view(1, 1, 1, 3)
    for lo in range(0, n, chunk):
        sel, sq = ids[lo: lo + chunk], torch.from_numpy(squares[lo: lo + chunk]).float()
        uniq, inverse = np.unique(sel, return_inverse=True)       # a frame held for several samples: once
        grey = (torch.from_numpy(frames[uniq]).float() * weights).sum(-1, keepdim=True) - PAD_GREY
        grey = grey.permute(0, 3, 1, 2)[torch.from_numpy(inverse.reshape(-1))]          # (m, 1, H, W)
        theta = torch.zeros((len(sel), 2, 3))                     # crop pixel -> normalised frame coordinates
        theta[:, 0, 0], theta[:, 1, 1] = sq[:, 2] / w, sq[:, 2] / h
        theta[:, 0, 2], theta[:, 1, 2] = 2 * sq[:, 0] / w - 1, 2 * sq[:, 1] / h - 1
        grid = F.affine_grid(theta, [len(sel), 1, CROP, CROP], align_corners=False)
        crops = F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[lo: lo + chunk] = (crops[:, 0] + PAD_GREY).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def track_samples(track: Track, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The track's 25 fps samples: (n,) times from its first frame to the end of its last, (n,) index of the
    decoded frame shown at each, (n, 4) boxes (linear between detections)."""
    times = np.asarray(times, dtype=np.float64)
    first, last = track.span
    frame_s = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / ASD_FPS
    n = max(1, int(round((times[last] + frame_s - times[first]) * ASD_FPS)))
    at = times[first] + np.arange(n) / ASD_FPS
    ids = np.clip(np.searchsorted(times, at + 1e-6, side="right") - 1, first, last)
    pos = np.interp(at, times, np.arange(len(times)))             # fractional frame position of each sample
    return at, ids, track.boxes_at(pos)


def check_frame_rate(times: np.ndarray, min_fps: float) -> None:
    if len(times) > 1:
        fps = 1.0 / max(float(np.median(np.diff(times))), 1e-9)
        if fps < min_fps:
            raise DataError(f"frames at {fps:.1f} fps: the speaker detector reads lip motion and needs "
                            f">= {min_fps:g} fps (decode at 25)")


def score_tracks(frames: np.ndarray, times: np.ndarray, tracks: Sequence[Track], audio: np.ndarray | None,
                 scorer: Scorer, sample_rate: int = ASD_RATE, min_fps: float = 15.0,
                 max_gap_s: float = 0.4, sync_weight: float = SYNC_WEIGHT) -> list[TrackSpeech]:
    """frames (T, H, W, 3) uint8 RGB at their source rate (or 25 fps), times (T,) seconds, the clip's mono
    audio -> one TrackSpeech per track. No audio: nothing to say about speaking, []. A track is scored in
    segments split where it goes undetected for more than max_gap_s (re-linked across a cut: the frames
    between show someone else). sync_weight: how much lip sync moves the speaking probability (0: Light-ASD
    alone; module docstring)."""
    if audio is None or not len(audio) or not len(tracks):   # an empty track says no more than none
        return []
    check_frame_rate(times, min_fps)
    wave = np.asarray(audio, dtype=np.float32)
    if sample_rate != ASD_RATE:
        import torchaudio
        wave = torchaudio.functional.resample(torch.from_numpy(wave), sample_rate, ASD_RATE).numpy()
    times = np.asarray(times, dtype=np.float64)
    gap = max(1, int(np.floor(max_gap_s / max(float(np.median(np.diff(times))), 1e-9)))) if len(times) > 1 else 1
    out = []
    for track in tracks:
        parts: list[tuple[np.ndarray, ...]] = []
        for seg in track.segments(gap):
            at, ids, boxes = track_samples(seg, times)
            faces = grey_crops(frames, ids, crop_squares(boxes))
            start = int(round(at[0] * ASD_RATE))
            parts.append((at, boxes, np.asarray(scorer(faces, wave[start:]), dtype=np.float32),
                          lip_motion(faces), voice_envelope(wave[start:], len(at))))
        at, boxes, logodds, motion, envelope = (np.concatenate(p) for p in zip(*parts))
        out.append(TrackSpeech(track.id, at, boxes, logodds, motion, envelope, sync_weight))
    return out


def speaking_in_window(speech: Sequence[TrackSpeech], start: float, end: float) -> dict[int, float]:
    """Track id -> speaking probability in [start, end) seconds (TrackSpeech.window), for the tracks on screen."""
    probs = {s.track: s.window(start, end) for s in speech}
    return {k: v for k, v in probs.items() if v is not None}


def follow_speaker(speech: TrackSpeech, speech_size: tuple[int, int], times: np.ndarray, dets: Sequence,
                   size: tuple[int, int], iou_min: float = 0.3, max_dt: float = 0.2) -> list[int | None]:
    """The speaker's detection in each of a clip's sampled frames (build-shards' frames: `times` seconds,
    detections `dets` in frames of `size` (w, h) pixels): the one that overlaps most (IoU >= iou_min) the
    speaking track's box at its sample nearest in time (within max_dt seconds; the track's boxes are in frames
    of `speech_size`). None where the speaker is not on screen: that frame shows someone else, or nobody."""
    out: list[int | None] = [None] * len(times)
    if not len(speech.times):
        return out
    track_boxes = speech.boxes / np.array([*speech_size, *speech_size], dtype=np.float64)
    for t, (at, frame) in enumerate(zip(times, dets)):
        k = int(np.argmin(np.abs(speech.times - at)))
        if abs(float(speech.times[k]) - float(at)) > max_dt or not len(frame.boxes):
            continue
        boxes = np.asarray(frame.boxes, dtype=np.float64) / np.array([*size, *size], dtype=np.float64)
        iou = iou_matrix(boxes, track_boxes[k][None])[:, 0]
        if iou.max() >= iou_min:
            out[t] = int(iou.argmax())
    return out


def identity_embeddings(frames: np.ndarray, dets: Sequence, embed: Callable[[np.ndarray], np.ndarray], face_cfg,
                        every: int = 5) -> list[np.ndarray | None]:
    """(n_t, D) identity embeddings of the aligned faces of every `every`-th frame (None for the others), for
    follow_faces: `embed` maps (n, S, S, 3) uint8 crops to (n, D)."""
    from avemo.pipeline.faces import crop_faces, crop_transform
    rows = [(t, d) for t in range(0, len(dets), every) for d in range(len(dets[t].boxes))]
    out: list[np.ndarray | None] = [None] * len(dets)
    if not rows:
        return out
    mats = [crop_transform(dets[t].boxes[d], dets[t].landmarks[d], face_cfg) for t, d in rows]
    emb = np.asarray(embed(crop_faces(frames, mats, [t for t, _ in rows], face_cfg.crop_size)))
    for t in {t for t, _ in rows}:
        out[t] = emb[[i for i, (s, _) in enumerate(rows) if s == t]]
    return out


def one_person(frames: np.ndarray, dets: Sequence, embed: Callable[[np.ndarray], np.ndarray] | None, face_cfg,
               same_sim: float = TrackConfig.link_sim) -> bool:
    """Do a clip's sampled frames (T, H, W, 3) with their detections show one person only? At most one face
    per frame, one track by box overlap, and at every shot change (pipeline.tracks.shot_changes) the last face
    before it and the first after it one identity (cosine >= same_sim, the tracks' re-linking threshold: a cut
    to someone else at the same place is two people). No face at all: True (nobody to choose). Without `embed`
    a cut to someone else cannot be told: False. Identities are computed only at shot changes (~10 ms a face)."""
    if any(len(d.boxes) > 1 for d in dets):
        return False
    seen = [t for t, d in enumerate(dets) if len(d.boxes)]
    if not seen:
        return True
    if embed is None:
        return False
    pairs = {(max((s for s in seen if s < c), default=-1), min((s for s in seen if s >= c), default=-1))
             for c in shot_changes(frames)}
    pairs = {p for p in pairs if min(p) >= 0}
    need = sorted({t for p in pairs for t in p})
    embs: list[np.ndarray | None] = [None] * len(dets)
    if need:
        for t, e in zip(need, identity_embeddings(frames[need], [dets[t] for t in need], embed, face_cfg, every=1)):
            embs[t] = e
        unit = {t: e[0] / max(float(np.linalg.norm(e[0])), 1e-12) for t in need
                if (e := embs[t]) is not None and len(e)}
        if any(a not in unit or b not in unit or float(unit[a] @ unit[b]) < same_sim for a, b in pairs):
            return False
    return len(follow_faces(dets, embs)) == 1
