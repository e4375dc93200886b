"""Face tracks from detections (pipeline/tracks.py): synthetic boxes and embeddings, pure logic."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from avemo.pipeline.tracks import TrackConfig, at_frames, every_nth, follow_faces, iou_matrix, shot_changes

pytestmark = pytest.mark.unit
SIDE = 60.0


@dataclass
class Dets:
    boxes: np.ndarray
    scores: np.ndarray


def box(x: float, y: float = 100.0) -> list[float]:
    return [x, y, x + SIDE, y + SIDE]


def frames(*per_frame: list[list[float]]) -> list[Dets]:
    return [Dets(np.array(b, dtype=np.float32).reshape(-1, 4), np.full(len(b), 0.99, np.float32)) for b in per_frame]


def identities(dim: int = 128, n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, dim))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def noisy(e: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face embedding of identity e, as a CNN gives it frame to frame (cosine ~0.8 to its identity)."""
    x = e + 0.05 * rng.standard_normal(e.shape)
    return x / np.linalg.norm(x)


def test_two_faces_crossing_keep_their_ids():
    """A walks right, B walks left; where they overlap only the front face (A) is detected."""
    per_frame = []
    for t in range(31):
        xa, xb = 10.0 * t, 300.0 - 10.0 * t
        per_frame.append([box(xa)] if abs(xa - xb) < 40 else [box(xa), box(xb)])
    tracks = follow_faces(frames(*per_frame))
    assert len(tracks) == 2
    a, b = tracks                                      # ids by first appearance, then left to right
    assert np.all(np.diff(a.boxes[:, 0]) > 0) and np.all(np.diff(b.boxes[:, 0]) < 0)
    assert len(a.frames) == 31 and len(b.frames) == 31 - sum(len(f) == 1 for f in per_frame)
    assert a.id == 0 and b.id == 1


def test_a_short_gap_is_bridged_by_overlap_a_long_one_by_identity():
    static = [[box(100)]] * 10
    short = follow_faces(frames(*static, *[[]] * 5, *static))
    assert [len(t.frames) for t in short] == [20]

    long_gap = frames(*static, *[[]] * 20, *[[box(300)]] * 10)       # back elsewhere after 20 frames
    assert len(follow_faces(long_gap)) == 2                          # no identity: two tracks
    rng = np.random.default_rng(1)
    ident = identities()
    embs = [np.stack([noisy(ident[0], rng) for _ in f.boxes]) if len(f.boxes) else None for f in long_gap]
    (track,) = follow_faces(long_gap, embs)
    assert len(track.frames) == 20 and track.frames[0] == 0 and track.frames[-1] == 39


def test_a_cut_to_another_face_at_the_same_place_is_not_the_same_person():
    """Shot 1: A on the left. Shot 2: B on the left (where A was), A on the right."""
    shot1 = [[box(50)]] * 10
    shot2 = [[box(50), box(400)]] * 10
    dets = frames(*shot1, *shot2)
    rng = np.random.default_rng(2)
    a, b, _ = identities()
    embs = [np.stack([noisy(a, rng)]) for _ in range(10)] + \
           [np.stack([noisy(b, rng), noisy(a, rng)]) for _ in range(10)]
    tracks = follow_faces(dets, embs)
    assert len(tracks) == 2
    person_a, person_b = tracks
    assert list(person_a.frames) == list(range(20))
    assert np.all(person_a.boxes[:10, 0] == 50) and np.all(person_a.boxes[10:, 0] == 400)
    assert list(person_b.frames) == list(range(10, 20)) and np.all(person_b.boxes[:, 0] == 50)
    # without identities the overlap alone follows the place, not the person: why embeddings are used
    blind = follow_faces(dets)
    assert list(blind[0].frames) == list(range(20)) and np.all(blind[0].boxes[:, 0] == 50)


def test_some_frames_without_embeddings_and_frames_without_faces():
    rng = np.random.default_rng(3)
    a, b, _ = identities()
    dets = frames(*[[box(50), box(300)]] * 6, *[[]] * 15, *[[box(300), box(50)]] * 6)
    embs: list = []
    for t, f in enumerate(dets):
        if not len(f.boxes) or t % 2:
            embs.append(None)                                    # only every other frame was embedded
        elif t < 6:
            embs.append(np.stack([noisy(a, rng), noisy(b, rng)]))
        else:
            embs.append(np.stack([noisy(a, rng), noisy(b, rng)]))  # after the gap: A on the right now
    tracks = follow_faces(dets, embs)
    assert len(tracks) == 2
    assert list(tracks[0].boxes[:, 0]) == [50] * 6 + [300] * 6   # A, left then right
    assert list(tracks[1].boxes[:, 0]) == [300] * 6 + [50] * 6
    assert follow_faces([]) == [] and follow_faces(frames([], [])) == []


def test_many_faces_and_track_fields():
    dets = frames(*[[box(x) for x in range(0, 700, 70)]] * 5)     # ten faces side by side, still
    tracks = follow_faces(dets, cfg=TrackConfig(min_detections=3))
    assert [t.id for t in tracks] == list(range(10))
    assert [float(t.boxes[0, 0]) for t in tracks] == list(map(float, range(0, 700, 70)))
    t = tracks[3]
    assert t.frames.dtype == np.int64 and t.boxes.shape == (5, 4) and t.scores.shape == (5,)
    assert list(t.dets) == [3] * 5 and t.span == (0, 4)
    short = follow_faces(frames([box(0)], [], [], []), cfg=TrackConfig(min_detections=2))
    assert short == []


def test_boxes_between_detections_are_interpolated():
    (track,) = follow_faces(frames([box(0)], [], [box(20)]))
    assert track.boxes_at(np.array([0, 1, 2, 5]))[:, 0].tolist() == [0, 10, 20, 20]


def test_tracks_followed_on_every_nth_frame_give_the_full_rate_boxes():
    """face.speaker=asd detects every 5th of the 25 fps frames: two faces moving at constant speed, followed on
    those frames only, come back in the clip's own frame indices with every frame's box (linear between)."""
    n = 23
    idx = every_nth(n, 5)
    assert idx.tolist() == [0, 5, 10, 15, 20, 22] and every_nth(21, 5).tolist() == [0, 5, 10, 15, 20]
    assert every_nth(1, 5).tolist() == [0] and every_nth(0, 5).tolist() == [] and every_nth(4, 1).tolist() == [0, 1, 2, 3]
    full = [[box(4.0 * t), box(400.0 - 3.0 * t)] for t in range(n)]
    tracks = at_frames(follow_faces(frames(*[full[i] for i in idx])), idx)
    assert len(tracks) == 2 and all(t.frames.tolist() == idx.tolist() and t.span == (0, n - 1) for t in tracks)
    every = np.arange(n)
    assert np.allclose(tracks[0].boxes_at(every)[:, 0], 4.0 * every) and np.allclose(
        tracks[1].boxes_at(every)[:, 0], 400.0 - 3.0 * every)
    assert tracks[0].dets.tolist() == [0] * len(idx)                 # detection rows of the detected frames


def test_shot_changes_are_the_frames_after_a_cut():
    rng = np.random.default_rng(0)
    shot_a = rng.integers(0, 256, (1, 72, 128, 3)).astype(np.int16)
    shot_b = rng.integers(0, 256, (1, 72, 128, 3)).astype(np.int16)
    jitter = lambda shot, n: np.clip(shot + rng.integers(-6, 7, (n, 72, 128, 3)), 0, 255)  # noqa: E731
    frames = np.concatenate([jitter(shot_a, 3), jitter(shot_b, 2), jitter(shot_a, 2)]).astype(np.uint8)
    assert shot_changes(frames) == [3, 5]
    assert shot_changes(frames[:3]) == [] and shot_changes(frames[:1]) == []
    assert shot_changes(frames, threshold=1.0) == []


def test_iou_matrix_and_config_checks():
    a = np.array([box(0), box(30)])
    iou = iou_matrix(a, a)
    assert np.allclose(np.diag(iou), 1) and np.isclose(iou[0, 1], 30 * 60 / (2 * 3600 - 30 * 60))
    with pytest.raises(Exception, match="iou"):
        TrackConfig(iou=0)
    with pytest.raises(ValueError, match="embedding"):
        follow_faces(frames([box(0)]), [None, None])


def test_shots_alternating_between_two_people_give_two_tracks():
    """Shot/reverse shot: A, B, A, B, A, each shot 8 frames at a new place; faces never overlap across cuts."""
    rng = np.random.default_rng(4)
    ident = identities()
    per_frame, embs, who = [], [], []
    for shot in range(5):
        person, x = shot % 2, 40.0 + 130.0 * shot
        for _ in range(8):
            per_frame.append([box(x)])
            embs.append(np.stack([noisy(ident[person], rng)]))
            who.append(person)
    tracks = follow_faces(frames(*per_frame), embs)
    assert len(tracks) == 2
    assert [list(t.frames) for t in tracks] == [[f for f, p in enumerate(who) if p == 0],
                                                [f for f, p in enumerate(who) if p == 1]]
