"""The manifest: one parquet row per input CSV row, the contract between build-shards and its readers.

`status` is `ok` (the clip is in `shard`; `kind` says whether it came from a video, an audio file or an image) or `rejected` (`reason` is a code from REASONS, `detail` says
why in one line). `shard_sha256` lets readers verify a shard once before streaming it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc   # `pa.compute` is only an attribute once something imported it
import pyarrow.parquet as pq

from avemo.core import storage
from avemo.core.errors import DataError
from avemo.core.atomic import sha256_file

MANIFEST_NAME = "manifest.parquet"
BUILD_CONFIG_NAME = "build_config.json"   # the decode/face/audio settings the shards were made with

# reason code -> what it means (README and docs/reliability.md list these)
REASONS: dict[str, str] = {
    "bad_row": "the CSV line does not split into the header's columns (stray quote or comma) or cannot be parsed",
    "unknown_label": "Emotion or Sentiment is not in the label map (a media list: label is not a MELD class)",
    "bad_id": "Dialogue_ID or Utterance_ID is not a non-negative integer of at most 9 digits",
    "duplicate_key": "another row has the same (split, Dialogue_ID, Utterance_ID) (a media list: the same key)",
    "bad_time": "StartTime/EndTime cannot be parsed (a media list: start/end are not seconds with start < end, "
                "or start is past the end of the file)",
    "bad_split": "a media list's split is not train, dev or test",
    "bad_key": "a media list's key is not 1-128 of A-Z a-z 0-9 _ - starting with a letter or digit",
    "missing_file": "no media file for this row",
    "not_a_file": "the path is a folder, a FIFO, a device or a symlink loop, not a regular file (never opened)",
    "unsupported_container": "ffprobe's format is not an allowed media container (a playlist or manifest such "
                             "as HLS, DASH, concat or SDP would read other files or URLs)",
    "non_finite_audio": "the decoded audio or its log-mel holds NaN or inf values",
    "empty_file": "the media file has 0 bytes",
    "unreadable_container": "ffprobe cannot read the container",
    "no_video_stream": "the file has no video stream (a media list's file: neither video nor audio)",
    "no_audio_stream": "the file has no audio stream (policy audio.missing=reject)",
    "zero_duration": "the file's duration is 0 or unknown",
    "too_short": "shorter than probe.min_duration_s (a media list's start-end part: than it or 1 ms)",
    "too_long": "longer than probe.max_duration_s",
    "too_large": "a picture or video frame of more than probe.max_pixels pixels (refused before it is decoded)",
    "decode_error": "ffmpeg failed to decode the sampled frames or the audio",
    "no_face": "no face in any sampled frame (policy face.missing=reject); an image: no face found (always "
               "rejected: it has no audio), or with face.image_mode=whole a blank or too small image",
    "processing_error": "an unexpected error while processing this clip (message in detail)",
    "task_failed": "the shard task failed after its retries",
}

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("split", pa.string()),
    ("kind", pa.string()),           # video, audio (no video stream: no faces) or image (one frame, no audio)
    ("dialogue_id", pa.int64()),
    ("utterance_id", pa.int64()),
    ("label", pa.int8()),            # emotion id in shards.labels.EMOTIONS, -1 when unknown
    ("emotion", pa.string()),
    ("sentiment", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("shard", pa.string()),
    ("source", pa.string()),
    ("csv_line", pa.int64()),
    ("duration_s", pa.float32()),
    ("n_frames", pa.int32()),
    ("n_faces", pa.int32()),
    ("face_mode", pa.string()),      # how its faces were found: detect (RetinaFace) or whole (face.image_mode=whole); "" none
    ("has_audio", pa.bool_()),
    ("speaker_box", pa.list_(pa.float32(), 4)),   # the face strip's median box [x0, y0, x1, y1], frame fractions
    ("speaker_conf", pa.float32()),  # face.speaker=asd: the speaking probability of the clip's speaker (Light-ASD + lip sync)
    ("sample_bytes", pa.int64()),
    ("shard_sha256", pa.string()),
])

DEFAULTS = {"kind": "video", "dialogue_id": None, "utterance_id": None, "label": -1, "emotion": "", "sentiment": "",
            "reason": "", "detail": "", "shard": "", "source": "", "csv_line": None, "duration_s": None,
            "n_frames": 0, "n_faces": 0, "face_mode": "", "has_audio": False, "sample_bytes": 0, "shard_sha256": ""}


def make_table(rows: Iterable[dict]) -> pa.Table:
    rows = [{name: row.get(name, DEFAULTS.get(name)) for name in SCHEMA.names} for row in rows]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_table(path: str | Path, table: pa.Table, options: dict | None = None) -> None:
    """Atomically, to a local path or a URL (storage.write_bytes)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue(), options)


def read_table(path: str | Path, options: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    if not storage.is_url(path):
        return pq.read_table(storage.local(path), columns=columns)
    return pq.read_table(io.BytesIO(storage.read_bytes(path, options)), columns=columns)


def read_manifest(shard_dir: str | Path, options: dict | None = None) -> pa.Table:
    path = storage.join(shard_dir, MANIFEST_NAME)
    if not storage.exists(path, options):
        raise DataError(f"no {MANIFEST_NAME} in {shard_dir}: run `avemo build-shards` first")
    return read_table(path, options)


def read_build_config(shard_dir: str | Path, options: dict | None = None) -> dict:
    """The build settings saved beside the shards ({} for shards from before they were saved)."""
    path = storage.join(shard_dir, BUILD_CONFIG_NAME)
    return json.loads(storage.read_bytes(path, options).decode("utf-8")) if storage.exists(path, options) else {}


class CorruptShardError(DataError):
    def __init__(self, message: str = ""):
        # raised in a DataLoader worker, torch re-raises it as CorruptShardError("Caught ... Original
        # Traceback ...\n...CorruptShardError: <message>"): keep the one line that says what is wrong
        last = message.rstrip().rsplit("\n", 1)[-1]
        marker = f"{type(self).__name__}: "
        super().__init__(last.split(marker, 1)[1] if message.startswith("Caught ") and marker in last else message)


def plain_shard_name(name: object) -> bool:
    """A manifest's `shard` must name a file IN the shards folder: no folder part, no `..`, not absolute."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def shards_for_split(table: pa.Table, split: str) -> dict[str, str]:
    """{shard file name: sha256} of the ok rows of one split, in name order. A row whose shard escapes the
    shards folder (a path, `..`) is refused before anything is read."""
    rows = table.filter(pc.and_(pc.equal(table["split"], split), pc.equal(table["status"], "ok")))
    pairs = set(zip(rows["shard"].to_pylist(), rows["shard_sha256"].to_pylist()))
    bad = sorted(str(name) for name, _ in pairs if not plain_shard_name(name))
    if bad:
        raise CorruptShardError(f"the manifest names shard {bad[0][:100]!r}, outside the shards folder "
                                f"({len(bad)} such); refusing to read it")
    return dict(sorted(pairs))




def verify_shards(shard_dir: str | Path, expected: dict[str, str], policy: Literal["stop", "skip"] = "stop",
                  log=print, hint: str = "") -> list[str]:
    """Hash each shard once; return the good shard names. A bad one stops (the error ends with `hint`: the
    calling command's own setting) or is skipped (and named)."""
    good = []
    for name, sha in expected.items():
        path = Path(shard_dir) / name
        problem = None
        if not path.is_file():
            problem = "is missing"
        elif sha256_file(path) != sha:
            problem = "does not match its checksum in the manifest (corrupt or modified)"
        if problem is None:
            good.append(name)
            continue
        message = f"shard {path} {problem}"
        if policy == "stop":
            raise CorruptShardError(f"{message} ({hint})" if hint else message)
        log(f"warning: {message}; skipping it")
    return good
