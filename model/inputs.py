"""The model's input contract, shared by training, evaluation and inference: which frames of a clip the
model sees, how its log-mel is cropped, how a shard sample becomes tensors, and how samples are padded into
a batch. Shapes: faces (B, T, 3, 112, 112) uint8, face_mask (B, T) bool, mel (B, n_mels, F) float32,
mel_mask (B, F) bool, F a multiple of MEL_PAD_MULTIPLE.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from avemo.model.config import PITCH_ROWS
from avemo.shards.format import FACE_SIZE, UnsafeSampleError, decode_sample

MEL_PAD_MULTIPLE = 64  # pad mel length to a multiple of this: few distinct shapes for torch.compile


def frame_indices(t: int, max_frames: int) -> np.ndarray:
    """Which of t frames the model sees: all of them, or max_frames spread evenly over the clip."""
    return np.arange(t) if t <= max_frames else np.linspace(0, t - 1, max_frames).round().astype(int)


def crop_mel(mel: torch.Tensor, max_mel: int, random_crop: bool = False) -> torch.Tensor:
    """(n_mels, F) -> at most max_mel frames: from the start (evaluation, predict) or at random (training)."""
    if mel.shape[1] <= max_mel:
        return mel
    start = int(torch.randint(0, mel.shape[1] - max_mel + 1, ())) if random_crop else 0
    return mel[:, start: start + max_mel]


def to_tensors(raw: dict, max_frames: int, max_mel: int, random_crop: bool, n_mels: int | None = None,
               pitch: bool = False) -> dict:
    """pitch (model.pitch): the sample also gives "pitch" (2, F), cropped with its mel; a clip with audio but
    no pitch track (shards built without audio.pitch) is refused."""
    s = decode_sample(raw, n_mels=n_mels)   # n_mels: the model's; a sample with another bin count is refused
    t = s.facemask.shape[0]
    idx = frame_indices(t, max_frames)
    faces = torch.zeros((max_frames, 3, FACE_SIZE, FACE_SIZE), dtype=torch.uint8)
    mask = torch.zeros(max_frames, dtype=torch.bool)
    if s.faces is not None:
        crop_of_frame = np.cumsum(s.facemask.astype(bool)) - 1          # frame -> index in the strip
        for slot, frame in enumerate(idx):
            if s.facemask[frame]:
                faces[slot] = torch.from_numpy(s.faces[crop_of_frame[frame]]).permute(2, 0, 1)
                mask[slot] = True
    if s.mel is None:
        mel = torch.zeros((s.meta.get("n_mels", 64) + (PITCH_ROWS if pitch else 0), 0), dtype=torch.float32)
    else:
        rows = [s.mel]
        if pitch:
            if s.pitch is None:
                raise UnsafeSampleError(f"{s.key}: no pitch track (.pitch.npy) for a model with model.pitch=true: "
                                        "rebuild the shards with audio.pitch=true")
            rows.append(s.pitch)
        mel = crop_mel(torch.from_numpy(np.concatenate(rows).astype(np.float32)), max_mel, random_crop)
    out = {"key": s.key, "label": int(s.meta["label"]), "faces": faces, "face_mask": mask, "mel": mel}
    if pitch:                                                   # cropped together, kept apart for augmentation
        out["mel"], out["pitch"] = mel[:-PITCH_ROWS], mel[-PITCH_ROWS:]
    return out


def collate(samples: list[dict]) -> dict:
    """With "pitch" in the samples (model.pitch) the batch's mel holds its rows after the mel bins."""
    if "pitch" in samples[0]:
        samples = [dict(s, mel=torch.cat([s["mel"], s["pitch"]])) for s in samples]
    n_mels = samples[0]["mel"].shape[0]
    longest = max(s["mel"].shape[1] for s in samples)
    width = max(MEL_PAD_MULTIPLE, math.ceil(longest / MEL_PAD_MULTIPLE) * MEL_PAD_MULTIPLE)
    mel = torch.zeros((len(samples), n_mels, width))
    mel_mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s["mel"].shape[1]
        mel[i, :, :n] = s["mel"]
        mel_mask[i, :n] = True
    return {
        "key": [s["key"] for s in samples],
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "faces": torch.stack([s["faces"] for s in samples]),          # (B, T, 3, 112, 112) uint8
        "face_mask": torch.stack([s["face_mask"] for s in samples]),  # (B, T) bool
        "mel": mel,                                                   # (B, n_mels, F) float32
        "mel_mask": mel_mask,                                         # (B, F) bool
    }
