"""The shard sample format: what the pipeline writes and the ONLY way training reads it back.

One sample = one clip = these tar members (webdataset groups them by the key before the first dot):

    {key}.json          UTF-8 JSON record: labels, speaker, text, timings, source, versions, sizes
    {key}.mel.npy       float16 (n_mels, F) log-mel; absent when the clip has no audio stream
    {key}.pitch.npy     float16 (2, F) log2(F0 / 200 Hz) and periodicity per mel frame (audio.pitch=true
                        builds; pipeline.audio.pitch_track); only beside a mel
    {key}.facemask.npy  uint8 (T,) 1 where sampled frame t has the speaker's face
    {key}.boxes.npy     float32 (T, 5) x1, y1, x2, y2 in [0, 1] of the frame, detector score; 0 when no face
    {key}.faces.jpg     JPEG strip (S, S * n_faces, 3) of the aligned crops of the frames with a face,
                        left to right in time; absent when no frame has a face

Nothing is ever unpickled: .npy is read with allow_pickle=False and dtype/shape checks, JSON is data,
JPEG goes through PIL. Any other member name or extension is refused.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from avemo.core.errors import DataError
from avemo.shards.labels import EMOTIONS, LABEL_MAP_VERSION

FORMAT_VERSION = 1
FACE_SIZE = 112

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
# extension -> (dtype, ndim) for arrays; None for non-array members
MEMBERS: dict[str, tuple[str, int] | None] = {
    "json": None,
    "faces.jpg": None,
    "mel.npy": ("float16", 2),
    "pitch.npy": ("float16", 2),
    "facemask.npy": ("uint8", 1),
    "boxes.npy": ("float32", 2),
}
MAX_MEMBER_BYTES = 64 << 20
# largest bytes a member of each kind may declare (a 30 s clip's mel is ~0.2 MB, its strip of 64 crops ~1 MB)
MEMBER_LIMITS = {"json": 1 << 20, "facemask.npy": 1 << 20, "boxes.npy": 4 << 20, "pitch.npy": 4 << 20}
MEL_BINS = (8, 256)          # the bin counts pipeline's AudioConfig.n_mels allows


def member_limit(name: str) -> int:
    """The most bytes the tar member `name` ({key}.{ext}) may declare: checked before it is read."""
    ext = name.rsplit("/", 1)[-1].partition(".")[2].lower()
    return MEMBER_LIMITS.get(ext, MAX_MEMBER_BYTES)


class UnsafeSampleError(DataError):
    """A shard member that is not part of the known format (name, extension, dtype or shape)."""


@dataclass
class Sample:
    key: str
    meta: dict[str, Any]
    mel: np.ndarray | None        # (n_mels, F) float16
    facemask: np.ndarray          # (T,) uint8
    boxes: np.ndarray             # (T, 5) float32
    faces: np.ndarray | None      # (n_faces, S, S, 3) uint8
    pitch: np.ndarray | None = None   # (2, F) float16: log2(F0 / 200 Hz), periodicity; F as the mel's


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, meta: dict, facemask: np.ndarray, boxes: np.ndarray,
                  faces: np.ndarray | None, mel: np.ndarray | None, jpeg_quality: int = 90,
                  pitch: np.ndarray | None = None) -> dict:
    """Return the webdataset dict (all values bytes) for one clip."""
    if not KEY_RE.match(key):
        raise UnsafeSampleError(f"invalid sample key {key!r}")
    facemask = np.asarray(facemask, dtype=np.uint8)
    n_faces = int(facemask.sum())
    record = dict(meta, key=key, format_version=FORMAT_VERSION, label_map_version=LABEL_MAP_VERSION,
                  n_frames=int(facemask.shape[0]), n_faces=n_faces, has_audio=mel is not None)
    out = {
        "__key__": key,
        "json": json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        "facemask.npy": _npy_bytes(facemask),
        "boxes.npy": _npy_bytes(np.asarray(boxes, dtype=np.float32).reshape(-1, 5)),
    }
    if mel is not None:
        out["mel.npy"] = _npy_bytes(np.asarray(mel, dtype=np.float16))
        if pitch is not None:
            out["pitch.npy"] = _npy_bytes(np.asarray(pitch, dtype=np.float16))
    if n_faces:
        if faces is None or faces.shape[0] != n_faces:
            raise ValueError(f"{key}: {n_faces} face frames in the mask but "
                             f"{0 if faces is None else faces.shape[0]} crops")
        strip = np.concatenate(list(faces), axis=1)  # (S, S * n_faces, 3)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="JPEG", quality=jpeg_quality)
        out["faces.jpg"] = buf.getvalue()
    return out


def _load_npy(data: bytes, name: str, key: str) -> np.ndarray:
    dtype, ndim = MEMBERS[name]  # type: ignore[misc]
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:   # pickled, truncated; an empty member raises EOFError
        raise UnsafeSampleError(f"{key}: member .{name} is not a plain numpy array: {exc}") from None
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise UnsafeSampleError(f"{key}: member .{name} has dtype {array.dtype} / ndim {array.ndim}, "
                                f"expected {dtype} / {ndim}")
    return array


def split_strip(strip: np.ndarray, n_faces: int) -> np.ndarray:
    """(S, S * n, 3) -> (n, S, S, 3)."""
    size = strip.shape[0]
    if strip.ndim != 3 or strip.shape[1] != size * n_faces or strip.shape[2] != 3:
        raise UnsafeSampleError(f"face strip has shape {strip.shape}, expected ({size}, {size * n_faces}, 3)")
    return strip.reshape(size, n_faces, size, 3).transpose(1, 0, 2, 3)


def check_values(key: str, meta: dict, mel: np.ndarray | None, facemask: np.ndarray, boxes: np.ndarray,
                 n_mels: int | None = None, pitch: np.ndarray | None = None) -> None:
    """Values and shapes against the contract (a checksum-valid shard can still hold label 99, a NaN mel or a
    mel of another bin count: each would crash or silently poison training). n_mels: the reader's model's."""
    label = meta.get("label")
    if type(label) is not int or not 0 <= label < len(EMOTIONS):
        raise UnsafeSampleError(f"{key}: label {repr(label)[:20]} is not an emotion id in [0, {len(EMOTIONS)})")
    if not np.isin(facemask, (0, 1)).all():
        raise UnsafeSampleError(f"{key}: .facemask.npy holds values other than 0 and 1")
    if not np.isfinite(boxes).all():
        raise UnsafeSampleError(f"{key}: .boxes.npy holds non-finite values")
    if mel is None:
        if pitch is not None:
            raise UnsafeSampleError(f"{key}: a .pitch.npy without a .mel.npy")
        return
    if pitch is not None and (pitch.shape != (2, mel.shape[1]) or not np.isfinite(pitch).all()):
        raise UnsafeSampleError(f"{key}: .pitch.npy has shape {pitch.shape} or non-finite values; expected "
                                f"(2, {mel.shape[1]}) finite, one column per mel frame")
    bins = meta.get("n_mels", mel.shape[0])
    if not MEL_BINS[0] <= mel.shape[0] <= MEL_BINS[1] or mel.shape[0] != bins:
        raise UnsafeSampleError(f"{key}: mel has {mel.shape[0]} bins; its record says {str(bins)[:20]}, "
                                f"and {MEL_BINS[0]}-{MEL_BINS[1]} are allowed")
    if n_mels is not None and mel.shape[0] != n_mels:
        raise UnsafeSampleError(f"{key}: mel has {mel.shape[0]} bins, the model takes {n_mels}")
    if not np.isfinite(mel).all():
        raise UnsafeSampleError(f"{key}: mel holds non-finite values (NaN or inf)")


def decode_sample(raw: dict, decode_faces: bool = True, n_mels: int | None = None) -> Sample:
    """Turn one webdataset sample dict (bytes values) into a Sample, refusing anything unknown or out of the
    contract's ranges (check_values). n_mels: the bin count the reader's model takes (None: any allowed)."""
    key = raw.get("__key__")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise UnsafeSampleError(f"invalid sample key {key!r} in {raw.get('__url__', '?')}")
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        if name not in MEMBERS:
            raise UnsafeSampleError(f"{key}: unknown member extension .{name}")
        if not isinstance(value, (bytes, bytearray)) or len(value) > MAX_MEMBER_BYTES:
            raise UnsafeSampleError(f"{key}: member .{name} is not bytes or is too large")
    for required in ("json", "facemask.npy", "boxes.npy"):
        if required not in raw:
            raise UnsafeSampleError(f"{key}: missing member .{required}")
    try:
        meta = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeSampleError(f"{key}: bad JSON record: {exc}") from None
    if not isinstance(meta, dict):
        raise UnsafeSampleError(f"{key}: JSON record is not an object")
    if meta.get("label_map_version") != LABEL_MAP_VERSION:
        raise UnsafeSampleError(f"{key}: label map {meta.get('label_map_version')!r} does not match "
                                f"this code's {LABEL_MAP_VERSION!r}; rebuild the shards")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UnsafeSampleError(f"{key}: shard format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    facemask = _load_npy(raw["facemask.npy"], "facemask.npy", key)
    boxes = _load_npy(raw["boxes.npy"], "boxes.npy", key)
    if boxes.shape != (facemask.shape[0], 5):
        raise UnsafeSampleError(f"{key}: boxes shape {boxes.shape} does not match {facemask.shape[0]} frames")
    mel = _load_npy(raw["mel.npy"], "mel.npy", key) if "mel.npy" in raw else None
    pitch = _load_npy(raw["pitch.npy"], "pitch.npy", key) if "pitch.npy" in raw else None
    check_values(key, meta, mel, facemask, boxes, n_mels, pitch)
    n_faces = int(facemask.astype(bool).sum())
    faces = None
    if n_faces and "faces.jpg" not in raw:
        raise UnsafeSampleError(f"{key}: {n_faces} face frames but no .faces.jpg")
    if decode_faces and n_faces:
        try:
            with Image.open(io.BytesIO(raw["faces.jpg"])) as img:
                if img.format != "JPEG":
                    raise UnsafeSampleError(f"{key}: .faces.jpg is {img.format}, not JPEG")
                strip = np.array(img.convert("RGB"))  # a writable copy
        except (OSError, Image.DecompressionBombError) as exc:
            raise UnsafeSampleError(f"{key}: unreadable .faces.jpg: {exc}") from None
        if strip.shape[0] != FACE_SIZE:
            raise UnsafeSampleError(f"{key}: face strip is {strip.shape[0]} pixels high, expected {FACE_SIZE}")
        faces = split_strip(strip, n_faces)
    return Sample(key=key, meta=meta, mel=mel, facemask=facemask, boxes=boxes, faces=faces, pitch=pitch)
