"""A media list CSV -> label rows shaped like MELD's (pipeline/labels.py): one more source of rows for the
same build (probe, decode, faces, audio, shard tasks, resume).

Columns: `path` (absolute, or relative to the list's folder), `label` (a MELD class name), `split` (train,
dev or test); optional `key`, `speaker`, `start`, `end` (seconds within the file). A path may be a video,
an audio file or an image: ffprobe decides (shard_task.probe_shard); the file name's extension only gives
the kind reported for a row rejected before its file is read. Bad rows become rejected rows with a reason.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

from avemo.pipeline.probe import safe_resolve
from avemo.core.errors import DataError
from avemo.pipeline.labels import _malformed, decode_csv_bytes
from avemo.pipeline.layout import SPLITS
from avemo.shards.format import KEY_RE
from avemo.shards.labels import EMOTIONS, emotion_id

REQUIRED_COLUMNS = ("path", "label", "split")
OPTIONAL_COLUMNS = ("key", "speaker", "start", "end")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
# video files that make-list collects and predict takes from a folder (CREMA-D ships FLV, older corpora AVI/MPEG)
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp", ".ogv"}
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".wma", ".aiff", ".aif"}
INVALID_SPLIT = "invalid"   # the part parquet name of rows whose split is none of SPLITS
# what other corpora call MELD's classes (FER2013, CK+, AffectNet, RAF-DB folder names, plain MELD names) -> the
# MELD class; None: a class MELD lacks (make-list's image-folders reads folder names with it too)
CLASS_NAMES = {
    "angry": "anger", "anger": "anger", "disgust": "disgust", "disgusted": "disgust", "fear": "fear",
    "fearful": "fear", "scared": "fear", "happy": "joy", "happiness": "joy", "joy": "joy", "neutral": "neutral",
    "sad": "sadness", "sadness": "sadness", "surprise": "surprise", "surprised": "surprise", "contempt": None,
    "calm": None,
}
CLOSEST = {"calm": "neutral"}   # classes MELD lacks, and the MELD class nearest to them
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
MAX_KEY = 128


class MediaListError(DataError):
    """A list that cannot be used at all (missing file or column)."""


def kind_of(path: str) -> str:
    ext = Path(path).suffix.lower()
    return "image" if ext in IMAGE_EXTS else "audio" if ext in AUDIO_EXTS else "video"


def derive_key(relative: str) -> str:
    """'Actor_01/03-01-05-01-02-01-12.flac' -> 'Actor_01_03-01-05-01-02-01-12': safe characters only (the
    shard key rules: no dots, webdataset groups members by the text before the first one), at most 128."""
    stem = str(Path(relative).with_suffix("")) if Path(relative).suffix else relative
    key = _UNSAFE.sub("_", stem).lstrip("_-")
    key = key or "row"
    if len(key) > MAX_KEY:   # keep the end (the file name), make it unique with a hash of the whole
        key = key[-(MAX_KEY - 9):].lstrip("_-") or "row"
        key = f"{hashlib.sha1(relative.encode()).hexdigest()[:8]}-{key}"
    return key


def unknown_label_detail(raw: str) -> str:
    """Why a list's label is refused, and which MELD class was probably meant."""
    name = raw.strip().lower()
    meant = CLASS_NAMES.get(name, False)
    if meant:
        return f"label={raw!r} is not a MELD class: did you mean {meant}?"
    if name in CLOSEST:
        return (f"label={raw!r} is not a MELD class: {CLOSEST[name]} is the closest, but {name} has no MELD class "
                f"(relabel the row {CLOSEST[name]} or drop it)")
    if meant is None:
        return f"label={raw!r} is not a MELD class: {name} has no MELD class (drop the row)"
    return f"label={raw!r} is not a MELD class (MELD's classes: {', '.join(EMOTIONS)})"


def _seconds(text: str) -> float | None | str:
    """'' -> None; '1.5' -> 1.5; anything else -> the text (a bad value)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value >= 0 and value == value and value != float("inf") else text


def _row(line: int, name: str) -> dict:
    return {"key": f"line{line}", "split": "", "dialogue_id": None, "utterance_id": None, "label": -1,
            "emotion": "", "sentiment": "", "sentiment_id": None, "speaker": "", "utterance": "",
            "season": None, "episode": None, "start_s": None, "end_s": None, "csv_line": line,
            "csv_file": name, "status": "ok", "reason": "", "detail": "", "source": "", "kind": "video"}


def _check(row: dict, get, folder: Path, seen_keys: dict, seen_sources: dict) -> None:
    """Fill `row` from the line's fields; mark it rejected with the first problem found."""
    raw_path, raw_label, raw_split = get("path").strip(), get("label").strip(), get("split").strip()
    source = safe_resolve(folder / raw_path) if raw_path and "\0" not in raw_path else None
    row.update(split=raw_split.lower(), emotion=raw_label.lower(), speaker=" ".join(get("speaker").split()),
               source=str(source) if source else "", kind=kind_of(raw_path))
    label = emotion_id(raw_label) if raw_label else None
    row["label"] = -1 if label is None else label
    explicit = get("key").strip()
    start, end = _seconds(get("start")), _seconds(get("end"))
    if row["split"] not in SPLITS:
        return row.update(status="rejected", reason="bad_split", detail=f"split={raw_split!r} (train, dev or test)")
    if label is None:
        return row.update(status="rejected", reason="unknown_label", detail=unknown_label_detail(raw_label))
    if not raw_path:
        return row.update(status="rejected", reason="missing_file", detail="empty path")
    if explicit and not KEY_RE.match(explicit):
        return row.update(key=explicit[:MAX_KEY], status="rejected", reason="bad_key",
                          detail=f"key={explicit!r}: 1-128 of A-Z a-z 0-9 _ -, starting with a letter or digit")
    key = explicit or derive_key(raw_path)
    if not explicit and key in seen_keys and seen_sources.get(key) != str(source):
        key = f"{key[:MAX_KEY - 9]}-{hashlib.sha1(raw_path.encode()).hexdigest()[:8]}"  # a.wav beside a.flac
    row["key"] = key
    if key in seen_keys:
        return row.update(status="rejected", reason="duplicate_key",
                          detail=f"key {key} was already given at line {seen_keys[key]}")
    seen_keys[key], seen_sources[key] = row["csv_line"], str(source)
    if source is None:
        return row.update(status="rejected", reason="bad_row", detail="the path holds a NUL byte: no file has that name")
    if isinstance(start, str) or isinstance(end, str) or (start is not None and end is not None and end <= start):
        return row.update(status="rejected", reason="bad_time",
                          detail=f"start={get('start')!r} end={get('end')!r} (seconds, start < end)")
    row.update(start_s=start, end_s=end)


class _Lines:
    """A text's physical lines (each with its \\n, \\r\\n or \\r), handed to a csv.reader one at a time: `pos`
    says how many it has taken."""

    def __init__(self, text: str):
        self.lines, self.pos = io.StringIO(text, newline="").readlines(), 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _one_line(line: str) -> list[str] | csv.Error:
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:
        return exc


def _records(text: str):
    """(first line number, fields or csv.Error) per CSV record, the header first. A list is real CSV: a quoted
    field may hold a line break (make-list quotes such paths). A record over several lines whose field count is
    not the header's (a stray quote swallowing the lines after it) is read again as its first line alone, so a
    stray quote costs its own row only, as in MELD's line-by-line reading (labels._csv_lines)."""
    lines = _Lines(text)
    reader = csv.reader(lines)
    n_columns = None
    while lines.pos < len(lines.lines):
        start = lines.pos
        try:
            values: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            values = exc
        if lines.pos - start > 1 and n_columns is not None and _malformed(values, n_columns):
            lines.pos = start + 1
            values = _one_line(lines.lines[start])
        if n_columns is None:
            n_columns = len(values) if isinstance(values, list) else 0
        yield start + 1, values


def read_media_list(path: str | Path, splits, limit: int = 0) -> tuple[dict[str, list[dict]], list[dict]]:
    """({split: rows} for the chosen splits, rows whose split is none of train/dev/test). Rows of other
    valid splits are left out (as MELD's other CSVs are); `limit` keeps the first N rows of each split."""
    path = Path(path)
    if not path.is_file():
        raise MediaListError(f"no media list {path}")
    lines = _records(decode_csv_bytes(path.read_bytes()))
    _, first = next(lines, (1, []))
    header = [] if isinstance(first, Exception) else [h.strip().lstrip("\ufeff").lower() for h in first]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise MediaListError(f"{path}: missing column '{missing[0]}' (a media list has columns "
                             f"{', '.join(REQUIRED_COLUMNS)}[, {', '.join(OPTIONAL_COLUMNS)}])")
    col = {name: i for i, name in enumerate(header)}
    folder = path.resolve().parent
    by_split: dict[str, list[dict]] = {s: [] for s in splits}
    invalid: list[dict] = []
    seen_keys: dict[str, int] = {}
    seen_sources: dict[str, str] = {}
    for line, values in lines:
        if not isinstance(values, Exception) and all(not v.strip() for v in values):
            continue
        row = _row(line, path.name)
        malformed = _malformed(values, len(header))
        if malformed:
            row.update(status="rejected", reason="bad_row", detail=malformed, split=INVALID_SPLIT)
            invalid.append(row)
            continue
        _check(row, lambda name: values[col[name]] if name in col else "", folder, seen_keys, seen_sources)
        if row["split"] not in SPLITS:
            invalid.append(row)
        elif row["split"] in by_split and not (limit and len(by_split[row["split"]]) >= limit):
            by_split[row["split"]].append(row)
    return by_split, invalid
