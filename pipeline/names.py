"""Who is who across a dialogue: MELD's `Speaker` names linked to the faces that recur in their utterances.

A MELD utterance's label belongs to its speaker, but a clip often shows the listener (reverse shots,
two-shots). Across a dialogue the same few people come back: the faces of all its clips are grouped into
identities (MobileFaceNet embeddings, cosine similarity), and each speaker name is linked to the identity
that is on screen more in that name's own utterances than in the others' (the lift: the identity's mean share
of frames in the name's clips minus in the other names' clips). Names and identities are linked one to one,
strongest lift first, and only above `min_lift`; a clip whose speaker has a linked identity shows that face
in the frames where it is detected, and the other choice (face.speaker) stands elsewhere.

Pure logic on arrays: the shard writer (pipeline.shard_task) gathers a dialogue's clips, embeds their faces
and applies the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def cluster_identities(embeddings: np.ndarray, min_sim: float) -> np.ndarray:
    """(n, D) face embeddings -> (n,) identity ids 0.., in order of first appearance: each face joins the
    identity whose mean embedding is most similar (cosine >= min_sim), else starts a new one."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    ids = np.full(len(x), -1, dtype=np.int64)
    sums: list[np.ndarray] = []
    for i, e in enumerate(x):
        if sums:
            means = np.stack(sums)
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
            sim = means @ e
            best = int(np.argmax(sim))
            if sim[best] >= min_sim:
                ids[i] = best
                sums[best] = sums[best] + e
                continue
        ids[i] = len(sums)
        sums.append(e.copy())
    return ids


@dataclass
class NameLink:
    identity: int
    lift: float       # mean share of frames showing it in the name's clips minus in the other names' clips


def link_names(presence: Sequence[dict[int, float]], names: Sequence[str], min_lift: float) -> dict[str, NameLink]:
    """Per clip: {identity: share of its frames that show it} and its speaker name -> name -> its identity.
    One to one, strongest lift first; a name without a link above min_lift is left out."""
    identities = sorted({i for p in presence for i in p})
    if not identities or not len(names):
        return {}
    share = np.array([[p.get(i, 0.0) for i in identities] for p in presence])      # (clips, identities)
    labels = np.asarray(list(names), dtype=object)
    pairs = []
    for name in sorted(set(names)):
        own = labels == name
        inside = share[own].mean(0)
        outside = share[~own].mean(0) if (~own).any() else np.zeros(len(identities))
        pairs += [(float(inside[k] - outside[k]), name, identities[k]) for k in range(len(identities))]
    links: dict[str, NameLink] = {}
    taken: set[int] = set()
    for lift, name, ident in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if lift < min_lift:
            break
        if name not in links and ident not in taken:
            links[name] = NameLink(ident, round(lift, 4))
            taken.add(ident)
    return links


def named_choices(embeddings: Sequence[Sequence[np.ndarray]], names: Sequence[str], min_sim: float,
                  min_lift: float, scores: Sequence[Sequence[np.ndarray]] | None = None
                  ) -> list[tuple[list[int | None] | None, float | None]]:
    """A dialogue's clips -> per clip (per frame the detection index of its speaker's face or None, the link's
    lift), or (None, None) where its name is not linked or that face is never on screen (the other choice
    stands). embeddings[c][t]: (n_t, D) embeddings of every detection in clip c's frame t; scores[c][t]: (n_t,)
    detector scores, the tie-break when one identity is detected twice in a frame."""
    sizes = [len(f) for clip in embeddings for f in clip]
    rows = [np.asarray(f, dtype=np.float64) for clip in embeddings for f in clip if len(f)]
    if not rows:
        return [(None, None)] * len(embeddings)
    frame_ids = iter(np.split(cluster_identities(np.concatenate(rows), min_sim), np.cumsum(sizes)[:-1]))
    per_frame = [[next(frame_ids) for _ in clip] for clip in embeddings]     # identity of each detection
    presence = [{i: sum(i in f.tolist() for f in frames) / len(frames) for i in set(np.concatenate(frames).tolist())}
                if frames else {} for frames in per_frame]
    links = link_names(presence, names, min_lift)
    out: list[tuple[list[int | None] | None, float | None]] = []
    for c, (frames, name) in enumerate(zip(per_frame, names)):
        link = links.get(name)
        if link is None:
            out.append((None, None))
            continue
        choice: list[int | None] = []
        for t, f in enumerate(frames):
            hits = np.flatnonzero(f == link.identity)
            if not len(hits):
                choice.append(None)
            elif scores is not None and len(hits) > 1:
                choice.append(int(hits[np.argmax(np.asarray(scores[c][t])[hits])]))
            else:
                choice.append(int(hits[0]))
        out.append((choice, link.lift) if any(x is not None for x in choice) else (None, None))
    return out
