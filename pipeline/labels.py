"""MELD label CSVs -> clean rows (one dict per CSV row, ok or rejected with a reason).

Handles both real encodings: the current files (UTF-8, CRLF, curly quotes) and the legacy ones inside
MELD.Raw.tar.gz (U+0092 etc. standing for cp1252 punctuation), and mojibake from a wrong decode.
"""
from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path

from avemo.core.errors import DataError
from avemo.shards.labels import EMOTIONS, emotion_id, sentiment_id

REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                    "StartTime", "EndTime")
OPTIONAL_COLUMNS = ("Season", "Episode", "Sr No.")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # not str.splitlines: legacy text holds U+0085 etc.
_TIME_RE = re.compile(r"^\s*(\d{1,2}):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*$")
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                              "\u201c": '"', "\u201d": '"', "\u201e": '"',
                              "\u2013": "-", "\u2014": "--", "\u00a0": " "})


class LabelFileError(DataError):
    """A CSV that cannot be used at all (missing column, unreadable header)."""


def _c1_to_cp1252(text: str) -> str:
    # U+0080..U+009F are C1 controls; in MELD they are cp1252 bytes decoded as latin-1 (0x92 = ’).
    def fix(ch: str) -> str:
        try:
            return bytes([ord(ch)]).decode("cp1252")
        except UnicodeDecodeError:
            return ""
    return "".join(fix(c) if 0x80 <= ord(c) <= 0x9F else c for c in text)


def _undo_mojibake(text: str) -> str:
    # "â€™" / "Â’" appear when UTF-8 (or the C1 chars) were decoded as cp1252; re-encode and decode again.
    if not any(marker in text for marker in ("â€", "Â", "Ã")):
        return text
    try:
        return text.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def normalise_text(text: str) -> str:
    text = _c1_to_cp1252(_undo_mojibake(text))
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC)
    return " ".join(text.split())


def parse_time(value: str) -> float | None:
    """'0:16:16,059' or '00:16:16,059' -> seconds."""
    m = _TIME_RE.match(value or "")
    if not m:
        return None
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def decode_csv_bytes(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _csv_lines(text: str):
    """(line number, fields or csv.Error) per physical line. MELD rows never span lines, so parsing line by
    line keeps a stray quote from swallowing the rows after it, and one bad line from stopping the file."""
    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        try:
            yield number, next(csv.reader([line]), [])
        except csv.Error as exc:
            yield number, exc


def _malformed(values: list[str] | csv.Error, n_columns: int) -> str:
    if isinstance(values, csv.Error):
        return f"unparseable CSV line: {' '.join(str(values).split())[:200]}"
    if len(values) != n_columns:
        return f"{len(values)} fields where the header has {n_columns} (a stray quote or comma?)"
    return ""


MAX_ID_DIGITS = 9   # ids fit the manifest's int64 (and int() never sees 5000 digits)


def _int_field(value: str) -> int | None:
    """A non-negative ASCII integer of at most MAX_ID_DIGITS digits, else None ('²' and other Unicode digits
    pass str.isdigit but not int())."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS else None


def read_label_csv(path: str | Path, split: str) -> list[dict]:
    """Every non-blank data row of one split's CSV, as a row dict with status ok/rejected."""
    path = Path(path)
    lines = _csv_lines(decode_csv_bytes(path.read_bytes()))
    _, first = next(lines, (1, []))
    if isinstance(first, csv.Error):
        raise LabelFileError(f"{path}: unreadable header: {first}")
    header = [h.strip().lstrip("\ufeff") for h in first]
    if not header:
        raise LabelFileError(f"{path}: empty CSV (no header)")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LabelFileError(f"{path}: missing required column '{missing[0]}'")
    col = {name: header.index(name) for name in header}
    rows, seen = [], set()
    for line, values in lines:
        if not isinstance(values, csv.Error) and all(not v.strip() for v in values):
            continue
        malformed = _malformed(values, len(header))
        values = [] if isinstance(values, csv.Error) else values
        values = values + [""] * (len(header) - len(values))
        get = lambda name: values[col[name]] if name in col else ""  # noqa: E731
        dia, utt = _int_field(get("Dialogue_ID")), _int_field(get("Utterance_ID"))
        emotion, sentiment = get("Emotion").strip().lower(), get("Sentiment").strip().lower()
        start, end = parse_time(get("StartTime")), parse_time(get("EndTime"))
        key = f"dia{dia}_utt{utt}" if dia is not None and utt is not None else \
            f"line{line}"
        row = {
            "key": key, "split": split, "dialogue_id": dia, "utterance_id": utt,
            "label": emotion_id(emotion) if emotion_id(emotion) is not None else -1,
            "emotion": emotion, "sentiment": sentiment,
            "sentiment_id": sentiment_id(sentiment),
            "speaker": normalise_text(get("Speaker")), "utterance": normalise_text(get("Utterance")),
            "season": _int_field(get("Season")), "episode": _int_field(get("Episode")),
            "start_s": start, "end_s": end, "csv_line": line, "csv_file": path.name,
            "status": "ok", "reason": "", "detail": "",
        }
        if malformed:
            row.update(key=f"line{line}", status="rejected", reason="bad_row", detail=malformed)
        elif dia is None or utt is None:
            row.update(status="rejected", reason="bad_id",
                       detail=f"Dialogue_ID={get('Dialogue_ID')[:40]!r} Utterance_ID={get('Utterance_ID')[:40]!r}")
        elif emotion_id(emotion) is None or sentiment_id(sentiment) is None:
            row.update(status="rejected", reason="unknown_label",
                       detail=f"Emotion={get('Emotion')!r} Sentiment={get('Sentiment')!r}")
        elif (split, dia, utt) in seen:
            row.update(status="rejected", reason="duplicate_key", detail=f"{key} appears again at line {line}")
        elif start is None or end is None:
            row.update(status="rejected", reason="bad_time",
                       detail=f"StartTime={get('StartTime')!r} EndTime={get('EndTime')!r}")
        if dia is not None and utt is not None and not malformed:
            seen.add((split, dia, utt))
        rows.append(row)
    return rows


def label_counts(rows: list[dict]) -> dict[str, int]:
    counts = {name: 0 for name in EMOTIONS}
    for row in rows:
        if row["status"] == "ok":
            counts[EMOTIONS[row["label"]]] += 1
    return counts
