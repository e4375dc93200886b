"""Media lists (pipeline/media_list.py's input) for the usual emotion corpora, from their file names or folders.

- RAVDESS: `MM-VV-EE-II-SS-RR-AA.ext` (modality, vocal channel, emotion, intensity, statement, repetition,
  actor); speaker = actor; split by actor (default: 19-21 dev, as ../shared/data/ravdess/labels.csv).
- CREMA-D: `1001_DFA_ANG_XX.wav` (speaker, sentence, emotion, level); split by speaker (explicit or seeded).
- class-per-folder image sets: ROOT/[split/]CLASS/*.png (FER2013, CK+, AffectNet names); split by the split
  folders, else seeded per class.
Every file that is not listed is counted with the reason (`skipped`), never dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from avemo.pipeline.probe import safe_resolve
from avemo.core.errors import ConfigError, DataError
from avemo.pipeline.media_list import AUDIO_EXTS, CLASS_NAMES, IMAGE_EXTS, VIDEO_EXTS, derive_key

COLUMNS = ("path", "label", "split", "key", "speaker")
RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "joy", "04": "sadness", "05": "anger", "06": "fear",
                    "07": "disgust", "08": "surprise"}
RAVDESS_DEV_ACTORS = (19, 20, 21)   # ../shared/data/ravdess/labels.csv: actors 01-18 train, 19-21 dev
CREMA_RE = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
CREMA_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"}
# numbered class folders: whose numbering (FER2013's CSV column; AffectNet's expression codes)
NUMBERINGS = {
    "fer2013": ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"),
    "affectnet": ("neutral", "joy", "sadness", "surprise", "fear", "disgust", "anger", None),
}
SPLIT_FOLDERS = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
                 "validation": "dev", "publictest": "dev", "test": "test", "testing": "test", "privatetest": "test"}


class ListError(DataError):
    pass


@dataclass
class MediaList:
    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)   # reason -> files not listed

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in self.rows)
        return buf.getvalue()

    def summary(self) -> str:
        splits = Counter(r["split"] for r in self.rows)
        text = f"{len(self.rows)} rows (" + ", ".join(f"{s} {splits[s]}" for s in ("train", "dev", "test")
                                                      if splits[s]) + ")"
        if self.skipped:
            text += "; not listed: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


def unique_keys(rows: list[dict]) -> list[dict]:
    """Two files with one stem (a.wav beside a.flac) would share a key: the later gets a hash of its path."""
    seen: set[str] = set()
    for row in rows:
        if row["key"] in seen:
            row["key"] = derive_key(row["key"][:100] + "-" + hashlib.sha1(row["path"].encode()).hexdigest()[:8])
        seen.add(row["key"])
    return rows


def _media(root: Path, exts: set[str], skipped: Counter) -> list[Path]:
    """The media files under root; a link to a file out of ROOT (ROOT/happy/x.png -> /etc/shadow) is counted in
    `skipped`, never listed (its target would be read and stored in the shards)."""
    if not root.is_dir():
        raise ListError(f"no folder {root}")
    inside = safe_resolve(root)
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts):
        if safe_resolve(path).is_relative_to(inside):
            found.append(path)
        else:
            skipped["a link to a file out of ROOT"] += 1
    return found


def _row(root: Path, path: Path, label: str, split: str, speaker: str = "") -> dict:
    relative = path.relative_to(root).as_posix()
    return {"path": str(safe_resolve(path)), "label": label, "split": split, "key": derive_key(relative),
            "speaker": speaker}


def parse_ids(text: str | None, what: str) -> tuple[int, ...] | None:
    """'19,20,21' or '19-21' -> (19, 20, 21); '' -> (); None -> None (the default applies)."""
    if text is None:
        return None
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ConfigError(f"{what} must be numbers or ranges like 19,20,21 or 19-21; got {text!r}")
        ids += range(int(lo), int(hi or lo) + 1)
    return tuple(ids)


def ravdess(root: Path, calm: str = "drop", dev_actors=None, test_actors=()) -> MediaList:
    """calm (no MELD class): `drop` it or call it `neutral`."""
    if calm not in ("drop", "neutral"):
        raise ConfigError(f"calm must be drop or neutral; got {calm!r}")
    dev = set(RAVDESS_DEV_ACTORS if dev_actors is None else dev_actors)
    test = set(test_actors or ())
    out = MediaList()
    for path in _media(root, AUDIO_EXTS | VIDEO_EXTS, out.skipped):
        m = RAVDESS_RE.match(path.stem)
        if not m or m.group(3) not in RAVDESS_EMOTIONS:
            out.skipped["name not RAVDESS's MM-VV-EE-II-SS-RR-AA"] += 1
            continue
        label, actor = RAVDESS_EMOTIONS[m.group(3)], int(m.group(7))
        if label == "calm" and calm == "drop":
            out.skipped["calm (calm=drop)"] += 1
            continue
        split = "test" if actor in test else "dev" if actor in dev else "train"
        out.rows.append(_row(root, path, "neutral" if label == "calm" else label, split, f"{actor:02d}"))
    unique_keys(out.rows)
    return out


def _seeded_groups(names, dev_fraction: float, test_fraction: float, seed: int) -> dict:
    """name -> split: a seeded shuffle of the sorted names, cut into test, dev and train parts."""
    check_fractions(dev_fraction, test_fraction)
    names = sorted(set(names))
    random.Random(seed).shuffle(names)
    n_test, n_dev = round(len(names) * test_fraction), round(len(names) * dev_fraction)
    return {n: "test" if i < n_test else "dev" if i < n_test + n_dev else "train" for i, n in enumerate(names)}


def check_fractions(dev_fraction: float, test_fraction: float) -> None:
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ConfigError(f"dev and test fractions must be in [0, 1) with a sum below 1; got "
                          f"{dev_fraction} and {test_fraction}")


def crema_d(root: Path, dev_speakers=None, test_speakers=(), dev_fraction: float = 0.15,
            test_fraction: float = 0.0, seed: int = 0) -> MediaList:
    """Split by speaker: the given dev/test speakers, else a seeded draw of dev_fraction/test_fraction of them."""
    out, found = MediaList(), []
    for path in _media(root, AUDIO_EXTS | VIDEO_EXTS, out.skipped):
        m = CREMA_RE.match(path.stem)
        if not m:
            out.skipped["name not CREMA-D's SPEAKER_SENTENCE_EMOTION_LEVEL"] += 1
        elif m.group(3) not in CREMA_EMOTIONS:
            out.skipped[f"emotion {m.group(3)} not in CREMA-D's six"] += 1
        else:
            found.append((path, CREMA_EMOTIONS[m.group(3)], m.group(1)))
    if dev_speakers is None:
        split_of = _seeded_groups((s for _, _, s in found), dev_fraction, test_fraction, seed)
    else:
        dev, test = {int(s) for s in dev_speakers}, {int(s) for s in test_speakers or ()}
        split_of = {s: "test" if int(s) in test else "dev" if int(s) in dev else "train" for _, _, s in found}
    out.rows = unique_keys([_row(root, path, label, split_of[speaker], speaker) for path, label, speaker in found])
    return out


def class_of(folder: str, numbering: str = "") -> str | None | bool:
    """A class folder's MELD class; None: a known class MELD lacks (contempt); False: not a known name."""
    name = folder.strip().lower()
    if name.isdigit() and numbering:
        classes = NUMBERINGS[numbering]
        return classes[int(name)] if int(name) < len(classes) else False
    return CLASS_NAMES.get(name, False)


def image_folders(root: Path, numbering: str = "", ignore_split_folders: bool = False,
                  dev_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0) -> MediaList:
    """ROOT/CLASS/* or ROOT/SPLIT/CLASS/* (split folders: train, val/validation/dev, test, ...). Without split
    folders (or ignoring them) each class is split at random, seeded: dev_fraction, test_fraction, the rest train."""
    if numbering and numbering not in NUMBERINGS:
        raise ConfigError(f"numbering must be one of {', '.join(NUMBERINGS)}; got {numbering!r}")
    out = MediaList()
    tops = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    by_split = bool(tops) and all(p.name.lower() in SPLIT_FOLDERS for p in tops)
    found = []   # (path, label, split or "")
    for path in _media(root, IMAGE_EXTS, out.skipped):
        parts = path.relative_to(root).parts
        depth = 3 if by_split else 2
        if len(parts) != depth:
            out.skipped[f"not at ROOT/{'SPLIT/' if by_split else ''}CLASS/FILE"] += 1
            continue
        label = class_of(parts[-2], numbering)
        if label is False:
            out.skipped[f"class folder {parts[-2]!r} not known"] += 1
        elif label is None:
            out.skipped[f"class {parts[-2]!r} (no MELD class)"] += 1
        else:
            found.append((path, str(label), SPLIT_FOLDERS[parts[0].lower()] if by_split else ""))
    if not by_split or ignore_split_folders:
        check_fractions(dev_fraction, test_fraction)
        for label in sorted({lab for _, lab, _ in found}):   # per class: every class in every split
            split_of = _seeded_groups((str(p) for p, lab, _ in found if lab == label), dev_fraction,
                                      test_fraction, seed)
            found = [(p, lab, split_of[str(p)] if lab == label else s) for p, lab, s in found]
    out.rows = unique_keys([_row(root, path, label, split) for path, label, split in found])
    return out
