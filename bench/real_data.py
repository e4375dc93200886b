"""Real emotion data for the benchmarks, made from ../shared/data only (RAVDESS speech, FER2013 PublicTest faces).

`prepare(shared, out)` writes three shard sets under OUT/shards/ (nothing from the licensed sources goes
into git: OUT is a git-ignored folder such as bench/out/real):

- `ravdess`: RAVDESS speech without calm, actors 01-18 train, 19-21 dev; audio samples (no faces).
- `fer`:     FER2013 faces: train = the whole Training set (fer2013/train, 28,709 faces), dev = half B of
             PublicTest (fer2013/validation cut into two seeded halves per class; half A is not used);
             image samples (one frame, no audio).
- `paired`:  an audio-visual set in MELD's layout under OUT/paired/: each RAVDESS utterance (no calm) as a
             short mp4 of one FER face of the same class (train from the Training set, dev from half B)
             with the utterance's audio; OUT/paired/pairs.csv says which face and which voice each clip holds.

Every step is resumable: clips that exist are kept (written to a temporary, then renamed), and build-shards
skips finished shards, so a second prepare() on a finished OUT only checks. `quick=True` makes a small set
(CI) through the same code.
"""
from __future__ import annotations

import csv
import io
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO  # noqa: E402  (also puts the repo on sys.path and the shared weights in the env)

from avemo.core.atomic import TEMP_RE, atomic_write_bytes  # noqa: E402
from avemo.demo.synth import SENTIMENT_OF  # noqa: E402  (joy/surprise positive, neutral, the rest negative)
from avemo.pipeline.labels import REQUIRED_COLUMNS  # noqa: E402
from avemo.pipeline.layout import CSV_NAMES, VIDEO_DIRS  # noqa: E402
from avemo.pipeline.lists import RAVDESS_RE, MediaList, image_folders, ravdess  # noqa: E402

DEFAULT_OUT = OUT / "real"
SETS = ("ravdess", "fer", "paired")
SPLITS = ("train", "dev")
DEV_ACTORS = (19, 20, 21)              # ../shared/data/ravdess/labels.csv: 01-18 train, 19-21 dev
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
# quick (CI): actors 01, 02 (train) and 19 (dev), 2 utterances per class per actor; 3 faces per class per half
QUICK_ACTORS = (1, 2, 19)
QUICK_VOICES_PER_CLASS = 2
QUICK_FACES_PER_CLASS = 3
# the clip: a FER face (48x48 grey) scaled to FACE_PX, centred on a mid-grey WIDTH x HEIGHT frame, as
# face.pad_small_images does for the images (160 on 320: bench/results/face_padding.md)
FACE_PX, WIDTH, HEIGHT, FPS, GREY = 160, 320, 240, 5, "0x808080"
SAMPLE_RATE = 16000
CLIP_WORKERS = 2
BUILD_OVERRIDES = ("dask.workers=2",)  # this machine's 2 cores; later overrides win
PAIR_COLUMNS = ("split", "video", "dialogue_id", "utterance_id", "emotion", "speaker", "statement",
                "duration_s", "ravdess", "fer")

Log = Callable[[str], None]


# ---------------------------------------------------------------- the two sources

def ravdess_list(shared: Path, quick: bool = False, seed: int = 0) -> MediaList:
    """RAVDESS without calm; quick: actors 01, 02, 19 and a seeded 2 utterances per class per actor."""
    voices = ravdess(shared / "data" / "ravdess", calm="drop", dev_actors=DEV_ACTORS)
    if quick:
        voices.rows = _sample(voices.rows, lambda r: (int(r["speaker"]), r["label"]), QUICK_VOICES_PER_CLASS,
                              seed, keep=lambda group: group[0] in QUICK_ACTORS)
    return voices


def fer_halves(shared: Path, seed: int = 0, per_class: int = 0) -> MediaList:
    """FER2013 PublicTest in two disjoint seeded halves per class: split train = half A, dev = half B.
    per_class > 0 keeps a seeded sample of that many faces per class in each half."""
    faces = image_folders(shared / "data" / "fer2013" / "validation", dev_fraction=0.5, seed=seed)
    if per_class:
        faces.rows = _sample(faces.rows, lambda r: (r["split"], r["label"]), per_class, seed)
    return faces


def fer_faces(shared: Path, seed: int = 0, per_class: int = 0) -> MediaList:
    """train = the FER2013 Training set (fer2013/train), dev = PublicTest half B (fer_halves: the dev faces
    of every earlier measurement). per_class > 0 keeps a seeded sample of that many faces per class and split."""
    fer = shared / "data" / "fer2013"
    train = image_folders(fer / "train", dev_fraction=0.0, seed=seed)
    faces = MediaList(rows=[r for r in train.rows if r["split"] == "train"] +
                      [r for r in fer_halves(shared, seed).rows if r["split"] == "dev"],
                      skipped=train.skipped)
    if per_class:
        faces.rows = _sample(faces.rows, lambda r: (r["split"], r["label"]), per_class, seed)
    return faces


def _sample(rows: list[dict], group_of, n: int, seed: int, keep=lambda group: True) -> list[dict]:
    """A seeded sample of n rows per group (in the rows' order), of the groups `keep` accepts."""
    groups: dict = {}
    for row in rows:
        if keep(group_of(row)):
            groups.setdefault(group_of(row), []).append(row)
    chosen = {id(r) for g, members in sorted(groups.items(), key=lambda kv: str(kv[0]))
              for r in random.Random(f"{seed}/{g}").sample(members, min(n, len(members)))}
    return [r for r in rows if id(r) in chosen]


def durations(shared: Path) -> dict[str, float]:
    """RAVDESS file name -> seconds, from labels.csv."""
    with open(shared / "data" / "ravdess" / "labels.csv", newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: float(r["duration_s"]) for r in csv.DictReader(fh)}


# ---------------------------------------------------------------- pairs

def pair(voices: MediaList, faces: MediaList, shared: Path, seed: int = 0) -> list[dict]:
    """One face of the same class per utterance, from the faces' train or dev split. Per split and class
    the faces are drawn without replacement from a seeded shuffle, reshuffled when used up (disgust has
    fewer faces than utterances). Dialogue_ID = actor, Utterance_ID = the utterance's index for that actor."""
    seconds = durations(shared)
    pool: dict[tuple[str, str], list[str]] = {}
    for row in faces.rows:
        pool.setdefault((row["split"], row["label"]), []).append(row["path"])
    decks: dict[tuple[str, str], tuple[random.Random, list[str]]] = {}
    next_utt: Counter = Counter()
    pairs = []
    for row in sorted(voices.rows, key=lambda r: r["path"]):
        split, label = row["split"], row["label"]
        if split not in SPLITS:
            continue
        if not pool.get((split, label)):
            raise ValueError(f"no FER face of class {label} in the {split} split")
        rng, deck = decks.setdefault((split, label), (random.Random(f"{seed}/{split}/{label}"), []))
        if not deck:
            deck.extend(sorted(pool[(split, label)]))
            rng.shuffle(deck)
        path = Path(row["path"])
        fields = RAVDESS_RE.match(path.stem).groups()   # MM VV EE II SS RR AA
        actor = int(fields[6])
        utt = next_utt[actor]
        next_utt[actor] += 1
        pairs.append({"split": split, "video": f"{VIDEO_DIRS[split][0]}/dia{actor}_utt{utt}.mp4",
                      "dialogue_id": actor, "utterance_id": utt, "emotion": label, "speaker": f"Actor_{actor:02d}",
                      "statement": fields[4], "duration_s": seconds[path.name], "ravdess": str(path),
                      "fer": deck.pop()})
    return pairs


def read_pairs(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(r, dialogue_id=int(r["dialogue_id"]), utterance_id=int(r["utterance_id"]),
                     duration_s=float(r["duration_s"])) for r in csv.DictReader(fh)]


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _clock(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_meld_csvs(pairs: list[dict], root: Path) -> None:
    """train_sent_emo.csv and dev_sent_emo.csv with MELD's columns (StartTime 0, EndTime the duration)."""
    columns = ("Sr No.", *REQUIRED_COLUMNS)
    for split in SPLITS:
        rows = [{"Sr No.": i + 1, "Utterance": STATEMENTS[p["statement"]], "Speaker": p["speaker"],
                 "Emotion": p["emotion"], "Sentiment": SENTIMENT_OF[p["emotion"]], "Dialogue_ID": p["dialogue_id"],
                 "Utterance_ID": p["utterance_id"], "StartTime": _clock(0), "EndTime": _clock(p["duration_s"])}
                for i, p in enumerate(p for p in pairs if p["split"] == split)]
        atomic_write_bytes(root / CSV_NAMES[split], _csv_bytes(columns, [[r[c] for c in columns] for r in rows]))


def forget_changed(pairs: list[dict], root: Path, shards: Path, log: Log) -> None:
    """A rerun with other pairs (seed, quick): delete the clips whose face or voice changed and the shards
    (their fingerprints see the clip's path and labels, not the pixels), before the new pairs.csv is written."""
    old_file = root / "pairs.csv"
    if not old_file.is_file():
        return
    old = {p["video"]: (p["ravdess"], p["fer"]) for p in read_pairs(old_file)}
    new = {p["video"]: (p["ravdess"], p["fer"]) for p in pairs}
    if old == new:
        return
    stale = [v for v in old if new.get(v) != old[v]]
    for video in stale:
        (root / video).unlink(missing_ok=True)
    if (shards / ".avemo-build").is_file():
        shutil.rmtree(shards)
    log(f"paired: pairs changed since the last run: {len(stale)} clip(s) and the paired shards removed")


# ---------------------------------------------------------------- clips

def clip_command(face: str, voice: str, duration_s: float, out: Path) -> list[str]:
    """The face looped at FPS, scaled and centred on grey, H.264 yuv420p; the voice as AAC 16 kHz mono;
    as long as the voice (-t; -shortest stops the looped image should the two differ)."""
    video = (f"[0:v]scale={FACE_PX}:{FACE_PX}:flags=bicubic,format=yuv420p,"
             f"pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2:color={GREY},setsar=1[v]")
    return ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-filter_threads", "1",
            "-loop", "1", "-framerate", str(FPS), "-i", f"file:{face}", "-i", f"file:{voice}",
            "-filter_complex", video, "-map", "[v]", "-map", "1:a:0",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "stillimage", "-crf", "20", "-r", str(FPS),
            "-pix_fmt", "yuv420p", "-threads", "1",
            "-c:a", "aac", "-b:a", "48k", "-ar", str(SAMPLE_RATE), "-ac", "1",
            "-t", f"{duration_s:.3f}", "-shortest", "-movflags", "+faststart", "-f", "mp4", str(out)]


def make_clip(p: dict, root: Path) -> bool:
    """Write one pair's clip atomically; False when it exists already."""
    target = root / p["video"]
    if target.is_file():
        return False
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        proc = subprocess.run(clip_command(p["fer"], p["ravdess"], p["duration_s"], tmp),
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"ffmpeg failed on {p['video']} ({p['ravdess']} + {p['fer']}): {last}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _clean_dead_temporaries(folder: Path) -> None:
    """Temporaries of killed runs (their writer's pid is gone); a live run's are left alone."""
    for tmp in folder.glob(".*.tmp-*"):
        if TEMP_RE.match(tmp.name) and not _alive(int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_clips(pairs: list[dict], root: Path, log: Log, workers: int = CLIP_WORKERS) -> int:
    """-> clips made (the rest existed). One ffmpeg per clip, `workers` at a time."""
    for split in SPLITS:
        (root / VIDEO_DIRS[split][0]).mkdir(parents=True, exist_ok=True)
        _clean_dead_temporaries(root / VIDEO_DIRS[split][0])
    todo = [p for p in pairs if not (root / p["video"]).is_file()]
    if not todo:
        return 0
    t0, step = time.perf_counter(), max(100, len(todo) // 5)
    with ThreadPoolExecutor(workers) as pool:
        for i, _ in enumerate(pool.map(lambda p: make_clip(p, root), todo), 1):
            if i % step == 0 or i == len(todo):
                elapsed = time.perf_counter() - t0
                log(f"paired: {i}/{len(todo)} clips in {elapsed:.0f} s ({i / elapsed:.1f}/s)")
    return len(todo)


# ---------------------------------------------------------------- shards

def build(out: Path, log: Log, overrides: Sequence[str] = (), **source: str):
    """build-shards (train, dev) into `out` from source root=... or media_list=...; resumable."""
    from avemo.core.config import load_config
    from avemo.pipeline.build import run_build
    from avemo.pipeline.config import BuildConfig
    cfg = load_config(BuildConfig, "build", None, [*BUILD_OVERRIDES, *overrides],
                      {**source, "out": str(out), "splits": list(SPLITS)})
    summary = run_build(cfg, log=log)
    if summary.shards_failed:
        raise RuntimeError(f"build-shards into {out}: {summary.failure_advice()}")
    log(f"{out.name}: " + "; ".join(summary.lines()[:2]))
    return summary


def counts(shards: Path) -> dict[str, dict]:
    """{split: {"ok": n, "with_face": n, "rejected": {reason: n}}} from a shard set's manifest."""
    import pyarrow.parquet as pq
    table = pq.read_table(shards / "manifest.parquet", columns=["split", "status", "reason", "n_faces"])
    out: dict[str, dict] = {}
    for row in table.to_pylist():
        split = out.setdefault(row["split"], {"ok": 0, "with_face": 0, "rejected": {}})
        if row["status"] == "ok":
            split["ok"] += 1
            split["with_face"] += bool(row["n_faces"])
        else:
            split["rejected"][row["reason"]] = split["rejected"].get(row["reason"], 0) + 1
    return out


# ---------------------------------------------------------------- all three

def _untimed(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def prepare(shared: Path, out: Path, quick: bool = False, seed: int = 0, log: Log = print,
            overrides: Sequence[str] = (), timed=_untimed) -> dict[str, Path]:
    """-> {"ravdess": shards dir, "fer": shards dir, "paired": shards dir} under OUT/shards/.
    overrides: build-shards key=value settings for all three builds (e.g. decode.fps=2).
    timed(name, fn, *args, **kwargs): runs each step (bench/real_emotion.py's Stages.run records its time)."""
    shared, out = Path(shared), Path(out)
    (out / "lists").mkdir(parents=True, exist_ok=True)
    shards = {name: out / "shards" / name for name in SETS}
    t0 = time.perf_counter()

    voices = ravdess_list(shared, quick, seed)
    faces = fer_faces(shared, seed, QUICK_FACES_PER_CLASS if quick else 0)
    log(f"ravdess: {voices.summary()}")
    log(f"fer: {faces.summary()} (train = the Training set, dev = PublicTest half B, seed {seed})")
    for name, media in (("ravdess", voices), ("fer", faces)):
        atomic_write_bytes(out / "lists" / f"{name}.csv", media.csv_text().encode("utf-8"))

    root = out / "paired"
    root.mkdir(parents=True, exist_ok=True)
    pairs = pair(voices, faces, shared, seed)
    forget_changed(pairs, root, shards["paired"], log)
    atomic_write_bytes(root / "pairs.csv", _csv_bytes(PAIR_COLUMNS, [[p[c] for c in PAIR_COLUMNS] for p in pairs]))
    write_meld_csvs(pairs, root)
    made = timed("paired clips (ffmpeg)", make_clips, pairs, root, log)
    log(f"paired: {len(pairs)} clips ({made} made, {len(pairs) - made} kept) in {root}")

    timed("build ravdess", build, shards["ravdess"], log, overrides, media_list=str(out / "lists" / "ravdess.csv"))
    timed("build fer", build, shards["fer"], log, overrides, media_list=str(out / "lists" / "fer.csv"))
    timed("build paired", build, shards["paired"], log, overrides, root=str(root))
    log(f"real data ready in {time.perf_counter() - t0:.0f} s: " + ", ".join(str(p) for p in shards.values()))
    return shards


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("AVEMO_SHARED", str(REPO.parent / "shared")),
                        help="the read-only shared folder (default $AVEMO_SHARED or ../shared)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="a git-ignored folder (default bench/out/real)")
    parser.add_argument("--quick", action="store_true", help="the small CI set")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unknown argument {bad[0]!r} (build overrides are key=value)")
    from avemo.core.errors import AvemoError
    try:
        shards = prepare(Path(args.shared), Path(args.out), args.quick, args.seed, overrides=overrides)
    except (AvemoError, OSError, subprocess.CalledProcessError) as exc:
        print(f"real_data: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    for name, path in shards.items():
        print(name, counts(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
