"""`avemo predict --speakers`: every face of a window followed as a track, the one speaking found by sight and
sound, and an emotion per person.

Per window (frames decoded at >= 15 fps, 25 by default: Light-ASD reads lip motion):
  the detections the emotion path already made (cached per frame) -> identity embeddings of every 5th frame's
  faces (pretrained MobileFaceNet, cached per frame) -> tracks (pipeline.tracks) -> person ids that persist
  from window to window (boxes overlapping on the frames two windows share, else the identity embedding) ->
  each track's speaking probability (pipeline.speaker + model.asd: Light-ASD with the window's audio, moved by
  how closely the lips move with the voice) -> the
  emotion model on each person's face crops (up to the model's frame count, spread over the track).

The window's voice belongs to the person speaking: the speaker's emotion reads face + voice, every other
person's the face alone. Without audio nobody gets a speaking mark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avemo.inference.speaker import SpeakerConfig, SpeakerFinder
from avemo.model.inputs import frame_indices
from avemo.pipeline.faces import FrameDets, crop_faces, crop_transform
from avemo.pipeline.speaker import score_tracks
from avemo.pipeline.tracks import Track, follow_faces, iou_matrix


@dataclass
class Person:
    id: int                     # the same person keeps this id from window to window
    track: Track                # positions are indices into the window's frames
    speaking: float | None      # speaking probability in the window (TrackSpeech.window); None: no audio to tell
    box: np.ndarray             # (4,) median xyxy box, pixels of the decoded frame


class PeopleTracker:
    """One input's windows -> the people in each; keeps what later windows reuse (embeddings, ids)."""

    def __init__(self, cfg: SpeakerConfig, detector=None, link_iou: float = 0.5):
        self.finder = SpeakerFinder(cfg, detector=detector)
        self.cfg, self.link_iou = cfg, link_iou
        self.embs: dict[int, np.ndarray] = {}                 # frame id -> (faces, 128) identity embeddings
        self.last: dict[int, list[tuple[int, np.ndarray]]] = {}   # frame id -> [(person id, box)], last window
        self.gallery: dict[int, np.ndarray] = {}              # person id -> unit identity embedding
        self.next_id = 0

    def _embeddings(self, ids: np.ndarray, frames: np.ndarray, dets: list[FrameDets]) -> list[np.ndarray | None]:
        every = self.cfg.embed_every
        out: list[np.ndarray | None] = [None] * len(ids)
        todo = [t for t, fid in enumerate(ids) if fid % every == 0 and int(fid) not in self.embs]
        if todo:
            fresh = self.finder.embed(frames[todo], [dets[t] for t in todo], every=1)
            for t, e in zip(todo, fresh):
                self.embs[int(ids[t])] = e if e is not None else np.zeros((0, 128), dtype=np.float32)
        for t, fid in enumerate(ids):
            if fid % every == 0:
                out[t] = self.embs[int(fid)]
        first = int(ids[0]) if len(ids) else 0
        self.embs = {f: e for f, e in self.embs.items() if f >= first}
        return out

    def _identity(self, track: Track, embs: list[np.ndarray | None]) -> np.ndarray | None:
        rows = [embs[f][d] for f, d in zip(track.frames, track.dets) if embs[f] is not None and len(embs[f]) > d]
        if not rows:
            return None
        mean = np.mean(rows, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)

    def _ids(self, ids: np.ndarray, tracks: list[Track], embs: list[np.ndarray | None]) -> list[int]:
        """A person id per track: the last window's person whose boxes overlap it on the frames both windows
        hold (most frames with IoU >= link_iou), else the gallery's most similar identity, else a new id."""
        votes: dict[tuple[int, int], int] = {}
        for k, track in enumerate(tracks):
            for f, box in zip(track.frames, track.boxes):
                for pid, old in self.last.get(int(ids[f]), []):
                    if iou_matrix(box[None], old[None])[0, 0] >= self.link_iou:
                        votes[(k, pid)] = votes.get((k, pid), 0) + 1
        out: dict[int, int] = {}                      # track index -> person id
        for (k, pid), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            if k not in out and pid not in out.values():
                out[k] = pid
        identities = [self._identity(t, embs) for t in tracks]
        for k in range(len(tracks)):
            ident = identities[k]
            if k not in out and ident is not None:
                sims = {pid: float(g @ ident) for pid, g in self.gallery.items() if pid not in out.values()}
                best = max(sims.items(), key=lambda kv: kv[1], default=None)
                if best is not None and best[1] >= self.cfg.track.link_sim:
                    out[k] = best[0]
            if k not in out:                           # two faces of one window are two people: a new id
                out[k] = self.next_id
                self.next_id += 1
            if ident is not None:
                self.gallery[out[k]] = ident
        self.last = {}
        for k, track in enumerate(tracks):
            for f, box in zip(track.frames, track.boxes):
                self.last.setdefault(int(ids[f]), []).append((out[k], box))
        return [out[k] for k in range(len(tracks))]

    def __call__(self, ids: np.ndarray, frames: np.ndarray, dets: list[FrameDets], times: np.ndarray,
                 audio: np.ndarray | None, sample_rate: int) -> list[Person]:
        """The window's frames (ids absolute, times in seconds from the window's start, audio from it too)."""
        if not len(ids):
            return []
        embs = self._embeddings(ids, frames, dets)
        tracks = follow_faces(dets, embs, self.cfg.track)
        pids = self._ids(ids, tracks, embs)
        speech = {s.track: s for s in score_tracks(frames, times, tracks, audio, self.finder.scorer, sample_rate,
                                                   sync_weight=self.cfg.sync_weight)}
        return [Person(pid, track, speech[track.id].prob if track.id in speech else None,
                       np.median(track.boxes, axis=0))
                for pid, track in zip(pids, tracks)]


def person_crops(frames: np.ndarray, dets: list[FrameDets], track: Track, max_frames: int,
                 face_cfg) -> tuple[np.ndarray, np.ndarray]:
    """Up to max_frames of the track's detections, spread over it as the model's frames are spread over a
    clip -> (their indices into the track (k,), aligned crops (k, S, S, 3)), cropped as build-shards crops faces."""
    sel = frame_indices(len(track.frames), max_frames)
    pos = track.frames[sel]
    mats = [crop_transform(dets[f].boxes[d], dets[f].landmarks[d], face_cfg) for f, d in zip(pos, track.dets[sel])]
    return sel, crop_faces(frames, mats, [int(f) for f in pos], face_cfg.crop_size)
