"""avemo make-list: media lists from RAVDESS / CREMA-D file names and class-per-folder image sets."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import pytest

from avemo.pipeline import lists
from avemo.pipeline.media_list import read_media_list
from tests.conftest import command, session_scheduler


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = command("make-list")(list(argv))
    out, err = capsys.readouterr()
    return code, list(csv.DictReader(io.StringIO(out))), err


@pytest.mark.unit
def test_ravdess_names_labels_speakers_and_splits(tmp_path, capsys):
    # emotion 02 calm, 03 happy, 05 angry, 08 surprised; actors 01 and 20 (dev by default)
    touch(tmp_path, "Actor_01/03-01-02-01-01-01-01.wav", "Actor_01/03-01-03-02-01-01-01.wav",
          "Actor_20/03-01-05-01-02-02-20.flac", "Actor_20/03-01-08-02-01-01-20.flac",
          "Actor_20/readme.wav", "Actor_01/03-01-09-01-01-01-01.wav")   # not RAVDESS names
    code, rows, err = run(capsys, "ravdess", str(tmp_path))
    assert code == 0
    assert [(r["label"], r["split"], r["speaker"]) for r in rows] == [
        ("joy", "train", "01"), ("anger", "dev", "20"), ("surprise", "dev", "20")]
    assert rows[0]["key"] == "Actor_01_03-01-03-02-01-01-01" and Path(rows[0]["path"]).is_absolute()
    assert "1 calm (calm=drop)" in err and "2 name not RAVDESS" in err
    code, rows, _ = run(capsys, "ravdess", str(tmp_path), "--calm", "neutral", "--dev-actors", "", "--test-actors", "20")
    assert [(r["label"], r["split"]) for r in rows] == [("neutral", "train"), ("joy", "train"),
                                                         ("anger", "test"), ("surprise", "test")]
    # the list is a valid build-shards input: every row ok before its file is read
    out = tmp_path / "l.csv"
    assert command("make-list")(["ravdess", str(tmp_path), "--out", str(out)]) == 0
    by_split, invalid = read_media_list(out, ["train", "dev", "test"])
    assert not invalid and all(r["status"] == "ok" for rs in by_split.values() for r in rs)
    assert sum(len(rs) for rs in by_split.values()) == 3


@pytest.mark.unit
def test_crema_d_speaker_split_seeded_and_explicit(tmp_path, capsys):
    speakers = range(1001, 1021)
    touch(tmp_path, *(f"{s}_{sent}_{emo}_XX.wav" for s in speakers for sent in ("DFA", "IEO")
                      for emo in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")), "1001_DFA_XYZ_XX.wav", "notes.wav")
    code, rows, err = run(capsys, "crema-d", str(tmp_path), "--dev-fraction", "0.2", "--seed", "3")
    assert code == 0 and len(rows) == 20 * 12
    assert Counter(r["label"] for r in rows) == {e: 40 for e in ("anger", "disgust", "fear", "joy", "neutral", "sadness")}
    split_of = {}
    for r in rows:   # a speaker is in one split only
        assert split_of.setdefault(r["speaker"], r["split"]) == r["split"]
    assert Counter(split_of.values()) == {"train": 16, "dev": 4}
    assert "emotion XYZ" in err and "name not CREMA-D" in err
    _, again, _ = run(capsys, "crema-d", str(tmp_path), "--dev-fraction", "0.2", "--seed", "3")
    assert again == rows   # seeded: the same split every time
    _, rows, _ = run(capsys, "crema-d", str(tmp_path), "--dev-speakers", "1001-1003", "--test-speakers", "1020")
    assert {r["speaker"] for r in rows if r["split"] == "dev"} == {"1001", "1002", "1003"}
    assert {r["speaker"] for r in rows if r["split"] == "test"} == {"1020"}


@pytest.mark.unit
def test_image_folders_with_and_without_split_folders(tmp_path, capsys):
    with_splits = tmp_path / "a"
    touch(with_splits, "train/angry/1.png", "train/happy/2.jpg", "train/contempt/3.png", "val/sad/4.png",
          "test/Surprise/5.png", "test/weird/6.png", "train/stray.png")
    code, rows, err = run(capsys, "image-folders", str(with_splits))
    assert code == 0
    assert sorted((r["label"], r["split"]) for r in rows) == [
        ("anger", "train"), ("joy", "train"), ("sadness", "dev"), ("surprise", "test")]
    assert "class 'contempt' (no MELD class)" in err and "class folder 'weird' not known" in err
    flat = tmp_path / "b"
    touch(flat, *(f"{c}/{i}.png" for c in ("fear", "neutral") for i in range(10)))
    _, rows, _ = run(capsys, "image-folders", str(flat), "--dev-fraction", "0.3", "--seed", "1")
    assert Counter((r["label"], r["split"]) for r in rows) == {("fear", "train"): 7, ("fear", "dev"): 3,
                                                              ("neutral", "train"): 7, ("neutral", "dev"): 3}
    numbered = tmp_path / "c"
    touch(numbered, "0/a.png", "1/b.png", "6/c.png", "7/d.png")
    _, rows, _ = run(capsys, "image-folders", str(numbered), "--numbering", "affectnet", "--dev-fraction", "0")
    assert sorted(r["label"] for r in rows) == ["anger", "joy", "neutral"]   # 7 is contempt


@pytest.mark.unit
def test_make_list_errors_are_one_line(tmp_path, capsys):
    assert command("make-list")(["ravdess", str(tmp_path / "none")]) == 2
    assert command("make-list")(["crema-d", str(tmp_path), "--dev-fraction", "1.5"]) == 2
    touch(tmp_path, "x.wav")
    assert command("make-list")(["ravdess", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("avemo make-list: error: ") for line in err)


def test_shared_ravdess_list_matches_its_labels_csv(shared):
    root = shared / "data" / "ravdess"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"no RAVDESS at {root}")
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        expected = {str((root / r["path"]).resolve()): (r["label7"], r["split"], r["speaker"])
                    for r in csv.DictReader(fh) if r["label7"]}
    got = {r["path"]: (r["label"], r["split"], r["speaker"]) for r in lists.ravdess(root).rows}
    assert got == expected and len(got) == 1092


def test_shared_crema_d_videos_are_listed(shared):
    """CREMA-D ships its video as FLV (VideoFlash/): make-list takes them like its WAVs (it missed them before)."""
    root = shared / "media" / "crema-d"
    if not sorted(root.glob("*.flv")):
        pytest.skip(f"no CREMA-D clips at {root}")
    result = lists.crema_d(root, dev_speakers=["1001"])
    assert sorted((Path(r["path"]).name, r["label"], r["split"]) for r in result.rows) == [
        (f"1001_DFA_{code}_XX.flv", label, "dev") for code, label in sorted(lists.CREMA_EMOTIONS.items())]
    assert not result.skipped


def test_shared_fer2013_list_matches_its_labels_csv(shared):
    root = shared / "data" / "fer2013"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"no FER2013 at {root}")
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        labelled = list(csv.DictReader(fh))
    # the split folders decide: train/ (fer_usage Training) -> train, validation/ (PublicTest) -> dev
    usage = {"Training": "train", "PublicTest": "dev"}
    expected = {str((root / r["path"]).resolve()): (r["label7"], usage[r["fer_usage"]]) for r in labelled}
    result = lists.image_folders(root)
    assert {r["path"]: (r["label"], r["split"]) for r in result.rows} == expected and not result.skipped
    assert Counter(r["split"] for r in result.rows) == Counter(usage[r["fer_usage"]] for r in labelled)
    pooled = lists.image_folders(root / "validation", dev_fraction=0.5, seed=0)
    assert Counter(r["split"] for r in pooled.rows) == {"train": 1793, "dev": 1796}


def test_shared_corpora_lists_build_shards(shared, tmp_path, capsys):
    """make-list on the real RAVDESS and FER2013 folders -> one list -> build-shards: voices as audio samples,
    faces as image samples with the face found."""
    import pyarrow.parquet as pq
    ravdess, fer = shared / "data" / "ravdess", shared / "data" / "fer2013" / "validation"
    if not ravdess.is_dir() or not fer.is_dir():
        pytest.skip(f"no RAVDESS or FER2013 under {shared / 'data'}")
    voices = lists.ravdess(ravdess).rows
    faces = lists.image_folders(fer, dev_fraction=0.5).rows
    picked = [r for r in voices if r["split"] == "dev"][:3] + [r for r in faces if r["split"] == "dev"][::600][:3]
    path = tmp_path / "both.csv"
    path.write_text(lists.MediaList(rows=picked).csv_text(), encoding="utf-8")
    out = tmp_path / "out"
    assert command("build-shards")(["--list", str(path), "--out", str(out), "--splits", "dev",
                                    f"scheduler={session_scheduler()}"]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [(r["kind"], r["status"]) for r in rows] == [("audio", "ok")] * 3 + [("image", "ok")] * 3
    assert all(r["has_audio"] and r["n_frames"] == 0 for r in rows[:3])
    assert sum(r["n_faces"] for r in rows[3:]) >= 2, "FER faces are found (padded before detection)"
