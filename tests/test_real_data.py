"""bench/real_data.py: RAVDESS, FER2013 and paired audio-visual shard sets from ../shared/data (quick set)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avemo.pipeline.lists import RAVDESS_EMOTIONS, RAVDESS_RE, class_of
from tests.conftest import REPO, SHARED, session_scheduler

DATA = SHARED / "data"
pytestmark = pytest.mark.skipif(not ((DATA / "ravdess").is_dir() and (DATA / "fer2013").is_dir()),
                                reason=f"needs the real RAVDESS and FER2013 files at {DATA} (set AVEMO_SHARED)")
SEED = 3


def _recipe() -> list[str]:
    """The recipe's build settings (configs/real.yaml, as bench/real_emotion.py passes them: FER images whole,
    no detector), on the session's Dask cluster (conftest); the quick benchmark then reuses these shards."""
    sys.path.insert(0, str(REPO / "bench"))
    from real_emotion import build_overrides
    return [*build_overrides("real"), f"scheduler={session_scheduler()}"]


@pytest.fixture(scope="module")
def real_data():
    sys.path.insert(0, str(REPO / "bench"))
    import real_data
    return real_data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, real_data):
    out = tmp_path_factory.mktemp("real")
    lines: list[str] = []
    shards = real_data.prepare(SHARED, out, quick=True, seed=SEED, log=lines.append, overrides=_recipe())
    return out, shards, lines


def manifest(shards: Path) -> list[dict]:
    return pq.read_table(shards / "manifest.parquet").to_pylist()


def pairs(out: Path) -> list[dict]:
    with open(out / "paired" / "pairs.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def ffprobe(path: Path) -> dict:
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_three_sets_have_ok_samples_in_train_and_dev(prepared):
    _, shards, _ = prepared
    assert set(shards) == {"ravdess", "fer", "paired"}
    for name, path in shards.items():
        rows = manifest(path)
        for split in ("train", "dev"):
            ok = [r for r in rows if r["split"] == split and r["status"] == "ok"]
            assert ok, f"{name} has no ok {split} sample"
            assert all((path / r["shard"]).is_file() for r in ok)
        assert not [r for r in rows if r["status"] != "ok"], f"{name}: rejected rows"


def test_ravdess_is_audio_only_and_fer_image_only(prepared):
    _, shards, _ = prepared
    voices = manifest(shards["ravdess"])
    assert {r["kind"] for r in voices} == {"audio"}
    assert all(r["n_faces"] == 0 and r["n_frames"] == 0 and r["has_audio"] for r in voices)
    faces = manifest(shards["fer"])
    assert {r["kind"] for r in faces} == {"image"}
    assert all(not r["has_audio"] and r["n_frames"] == 1 for r in faces)
    assert all(r["n_faces"] == 1 for r in faces)   # image_mode whole: each (non-blank) image is the face


def test_paired_clips_are_h264_5fps_with_the_voice_as_aac_16k_mono(prepared):
    out, shards, _ = prepared
    rows = pairs(out)
    assert len(rows) == len(manifest(shards["paired"])) > 0
    for p in rows:
        info = ffprobe(out / "paired" / p["video"])
        video = [s for s in info["streams"] if s["codec_type"] == "video"]
        audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert len(video) == len(audio) == 1, p["video"]
        v, a = video[0], audio[0]
        assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"], v["avg_frame_rate"]) == \
            ("h264", 320, 240, "yuv420p", "5/1"), p["video"]
        assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "16000", 1), p["video"]
        source = float(ffprobe(Path(p["ravdess"]))["format"]["duration"])
        assert abs(float(a["duration"]) - source) < 0.07, p["video"]                 # one AAC frame
        assert abs(float(info["format"]["duration"]) - source) < 0.25, p["video"]   # one video frame


def test_paired_manifest_has_faces_and_voices(prepared):
    _, shards, _ = prepared
    rows = manifest(shards["paired"])
    assert {r["kind"] for r in rows} == {"video"} and all(r["has_audio"] for r in rows)
    assert sum(r["n_faces"] > 0 for r in rows) >= 0.8 * len(rows)


def test_fer_train_is_the_training_set_dev_is_publictest_half_b_and_pairs_keep_to_their_split(prepared, real_data):
    out, _, _ = prepared
    with open(out / "lists" / "fer.csv", newline="", encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    split = {s: {r["path"] for r in listed if r["split"] == s} for s in ("train", "dev")}
    assert split["train"] and split["dev"] and not split["train"] & split["dev"]
    full = real_data.fer_faces(SHARED, SEED)
    full_split = {s: {r["path"] for r in full.rows if r["split"] == s} for s in ("train", "dev")}
    assert len(full_split["train"]) == 28709 and all("/fer2013/train/" in p for p in full_split["train"])
    halves = real_data.fer_halves(SHARED, SEED)
    half = {s: {r["path"] for r in halves.rows if r["split"] == s} for s in ("train", "dev")}
    assert not half["train"] & half["dev"] and len(half["train"]) + len(half["dev"]) == 3589
    assert full_split["dev"] == half["dev"]           # the dev faces of every earlier measurement
    assert split["train"] <= full_split["train"] and split["dev"] <= full_split["dev"]   # quick = a sample of each
    for p in pairs(out):
        assert p["fer"] in split[p["split"]], p


def test_every_pair_has_one_class_and_no_calm(prepared):
    out, shards, _ = prepared
    rows = pairs(out)
    for p in rows:
        voice = RAVDESS_EMOTIONS[RAVDESS_RE.match(Path(p["ravdess"]).stem).group(3)]
        face = class_of(Path(p["fer"]).parent.name)
        assert voice == face == p["emotion"] != "calm", p
        actor = int(Path(p["ravdess"]).stem[-2:])
        assert p["split"] == ("dev" if actor in (19, 20, 21) else "train"), p
    by_video = {(r["split"], r["dialogue_id"], r["utterance_id"]): r for r in manifest(shards["paired"])}
    for p in rows:
        row = by_video[(p["split"], int(p["dialogue_id"]), int(p["utterance_id"]))]
        assert row["emotion"] == p["emotion"]
    assert all(r["emotion"] != "calm" for r in manifest(shards["ravdess"]))
    assert {p["split"] for p in rows} == {"train", "dev"}


def test_prepare_again_only_checks(prepared, real_data):
    out, shards, _ = prepared
    tars = {p: p.stat().st_mtime_ns for s in shards.values() for p in s.glob("*.tar")}
    clips = {p: p.stat().st_mtime_ns for p in (out / "paired").rglob("*.mp4")}
    lines: list[str] = []
    assert real_data.prepare(SHARED, out, quick=True, seed=SEED, log=lines.append, overrides=_recipe()) == shards
    assert any("(0 made," in line for line in lines), lines
    assert not any("dask:" in line for line in lines), "a finished set started a cluster"
    assert {p: p.stat().st_mtime_ns for s in shards.values() for p in s.glob("*.tar")} == tars
    assert {p: p.stat().st_mtime_ns for p in (out / "paired").rglob("*.mp4")} == clips


def test_real_emotion_benchmark_runs_end_to_end_in_quick_mode(prepared, tmp_path):
    """bench/real_emotion.py --quick (the CI-sized path of the real-data benchmark): lists, shards (reused),
    training on the three sets, evaluation on held-out speakers and faces, results written."""
    out, shards, _ = prepared
    tars = {p: p.stat().st_mtime_ns for s in shards.values() for p in s.glob("*.tar")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "real_emotion.py"), "--quick", "--data", str(out),
                           "--seed", str(SEED), "--out", str(tmp_path / "bench"), "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for s in shards.values() for p in s.glob("*.tar")} == tars   # same settings
    record = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = record["results"]
    assert list(rows) == ["paired dev, both", "paired dev, face-only", "paired dev, audio-only",
                          "FER half B, faces alone", "RAVDESS actors 19-21, voices alone"]
    dev = {name: sum(r["split"] == "dev" and r["status"] == "ok" for r in manifest(path)) for name, path in shards.items()}
    assert rows["paired dev, both"]["n"] == dev["paired"] and rows["FER half B, faces alone"]["n"] == dev["fer"]
    assert rows["RAVDESS actors 19-21, voices alone"]["n"] == dev["ravdess"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["weighted_f1"] <= 1.0 for r in rows.values())
    assert record["epochs"] == 2 and 1 <= record["best_epoch"] <= 2 and record["parameters"] < 5_000_000
    assert set(record["stages"]) >= {"train", "evaluate paired dev (3 modes)"}
    # `avemo train` ran in its own process: its RSS is the largest one's, the run's log names its malloc
    train = record["stages"]["train"]
    assert train["children_pss_gb"] > 0.2 and train["tree_pss_gb"] > train["children_pss_gb"]
    assert record["malloc"] in ("glibc", "jemalloc")
    assert [row["epoch"] for row in train["per_epoch"] if row["epoch"] != "end"] == [1, 2]
    assert (tmp_path / "bench" / "run" / "best.pt").is_file()
    config = (tmp_path / "bench" / "run" / "config.yaml").read_text()
    assert "face_trainable: last" in config and str(shards["fer"]) in config      # the recipe, on all three sets
    report = (tmp_path / "results" / "real_emotion_quick.md").read_text()
    assert "| paired dev, audio-only |" in report and "Quick mode" in report
