"""build-shards --list: any videos, audio files and images as input (pipeline/media_list.py + the same build)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from avemo.pipeline.media_list import derive_key, read_media_list
from avemo.shards.format import KEY_RE
from tests.conftest import command, session_scheduler

HEADER = "path,label,split,key,speaker,start,end"


def write_list(folder: Path, lines: list[str], name: str = "list.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


@pytest.mark.unit
def test_bad_rows_get_a_reason_and_keys_are_safe_and_unique(tmp_path):
    (tmp_path / "a").mkdir()
    path = write_list(tmp_path, [
        "a/x y.wav,joy,train,,s1,,",            # derived key: safe characters
        "a/x y.flac,Anger,train,,,,",           # same stem, other file: a distinct key
        "a/x y.wav,joy,train,,,,",              # the same file again
        "b.wav,happy,train,,,,",                # not a MELD class
        "c.wav,joy,validation,,,,",             # bad split
        "d.wav,joy,dev,bad.key,,,",             # explicit key with a dot
        "e.wav,joy,dev,k1,,,",
        "f.wav,joy,dev,k1,,,",                  # explicit duplicate
        "g.wav,joy,test,,,2.0,1.0",             # end before start
        "h.wav,joy,test,,,x,",                  # not a number
        'i.wav,"joy,train',                     # malformed line
        ",joy,test,,,,",                        # no path
    ])
    rows, invalid = read_media_list(path, ["train", "dev", "test"])
    got = [(r["key"], r["status"], r["reason"]) for s in ("train", "dev", "test") for r in rows[s]]
    assert got[0] == ("a_x_y", "ok", "")
    assert got[1][0].startswith("a_x_y-") and got[1][1] == "ok" and rows["train"][1]["label"] == 0
    assert [g[2] for g in got[2:]] == ["duplicate_key", "unknown_label", "bad_key", "", "duplicate_key",
                                       "bad_time", "bad_time", "missing_file"]
    assert [(r["reason"], r["split"]) for r in invalid] == [("bad_split", "validation"), ("bad_row", "invalid")]
    assert rows["train"][0]["speaker"] == "s1" and rows["train"][0]["kind"] == "audio"
    assert rows["train"][0]["source"] == str((tmp_path / "a" / "x y.wav").resolve())


@pytest.mark.unit
def test_derived_keys_follow_the_shard_key_rules():
    for path in ("Actor_01/03-01-05-01-02-01-12.flac", "/abs/.hidden/ü ber.png", "x" * 300 + ".jpg", "...wav"):
        key = derive_key(path)
        assert KEY_RE.match(key), (path, key)
    assert derive_key("Actor_01/03-01-05-01-02-01-12.flac") == "Actor_01_03-01-05-01-02-01-12"


@pytest.mark.unit
def test_only_the_chosen_splits_and_limit(tmp_path):
    path = write_list(tmp_path, [f"{i}.wav,joy,{s},,,," for i, s in enumerate(["train", "dev", "train", "train"])])
    rows, invalid = read_media_list(path, ["train"], limit=2)
    assert list(rows) == ["train"] and len(rows["train"]) == 2 and not invalid


@pytest.mark.unit
def test_a_list_without_its_columns_is_one_line(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("file,emotion\nx.wav,joy\n")
    code = command("build-shards")(["--list", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing column 'path'" in err[0]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media_list(tmp_path_factory, shared, media) -> Path:
    """Generated audio and images, two real videos and a real FER face (absolute paths: nothing copied)."""
    folder = tmp_path_factory.mktemp("list")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:duration=1.2", "-ar", "16000", str(folder / "tone.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=330:duration=0.8", "-ar", "16000", str(folder / "tone.flac"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64", "-frames:v", "1", str(folder / "pattern.png"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64", "-frames:v", "1", str(folder / "pattern.jpg"))
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    fer = next((shared / "data" / "fer2013" / "validation" / "happy").glob("*.jpg"))
    return write_list(folder, [
        f"{media / 'single_face.mp4'},joy,train,,,,",
        f"{media / 'fer_test.mp4'},surprise,train,silent,,,",   # a video without audio
        "tone.wav,sadness,train,,spk1,,",
        "tone.flac,anger,dev,,spk2,,",
        "pattern.png,neutral,dev,,,,",
        f"{fer},joy,dev,fer_face,,,",
        "pattern.jpg,fear,dev,,,,",
        "tone.wav,grumpy,train,,,,",           # unknown label
        "gone.wav,joy,train,,,,",              # missing file
        "broken.wav,joy,train,,,,",            # unreadable
        "tone.wav,joy,holdout,,,,",            # bad split
        "pattern.png,joy,dev,silent,,,",       # duplicate key
        "tone.wav,fear,test,tone_part,,0.2,0.7",   # half a second of it
        f"{media / 'single_face.mp4'},joy,test,video_part,,1.0,2.0",
        "tone.wav,fear,test,tone_late,,5,",    # starts after its end
    ])


@pytest.fixture(scope="module")
def list_shards(tmp_path_factory, media_list) -> Path:
    out = tmp_path_factory.mktemp("list_shards")
    code = command("build-shards")(["--list", str(media_list), "--out", str(out), f"scheduler={session_scheduler()}",
                                    "shards.max_clips=4"])
    assert code == 0
    return out


def test_list_builds_every_kind_with_reasons(list_shards, media):
    rows = pq.read_table(list_shards / "manifest.parquet").to_pylist()
    ok = {r["key"]: (r["kind"], r["n_frames"], r["n_faces"] > 0, r["has_audio"]) for r in rows if r["status"] == "ok"}
    video = ok[derive_key(str(media / "single_face.mp4"))]   # an absolute path: its key names its folders
    assert video[0] == "video" and video[2] and video[3]
    assert ok["silent"][0] == "video" and ok["silent"][2] and not ok["silent"][3]
    audio = sorted(k for k, v in ok.items() if v[0] == "audio")
    assert audio[0] == "tone" and audio[1].startswith("tone-") and audio[2:] == ["tone_part"]   # .wav, .flac
    assert all(ok[k][1:] == (0, False, True) for k in audio), "audio: no frames, no faces, a log-mel"
    images = {k: v for k, v in ok.items() if v[0] == "image"}
    assert images == {"fer_face": ("image", 1, True, False)}, "the FER face is found (small images are padded first)"
    parts = {r["key"]: r for r in rows if r["key"] in ("tone_part", "video_part")}
    assert abs(parts["tone_part"]["duration_s"] - 0.5) < 1e-3 and abs(parts["video_part"]["duration_s"] - 1.0) < 1e-3
    assert parts["video_part"]["n_frames"] == 4 and parts["video_part"]["n_faces"] == 4   # 1 s at decode.fps=4
    reasons = sorted((r["reason"], r["kind"]) for r in rows if r["status"] != "ok")
    assert reasons == [("bad_split", "audio"), ("bad_time", "audio"), ("duplicate_key", "image"), ("missing_file", "audio"),
                       ("no_face", "image"), ("no_face", "image"),   # the test patterns: an image without a face
                       ("unknown_label", "audio"), ("unreadable_container", "audio")]


def test_list_shards_read_back_safely_and_train(list_shards):
    from avemo.shards.format import decode_sample
    from avemo.train.config import AugmentConfig, DataConfig
    from avemo.train.data import split_shards, train_loader
    for tar in sorted(list_shards.glob("*.tar")):
        for raw in wds.WebDataset(str(tar), shardshuffle=False):
            sample = decode_sample(raw)
            kind = sample.meta["kind"]
            assert (sample.mel is None) == (kind == "image" or sample.key == "silent")
            assert (sample.facemask.shape[0] == 0) == (kind == "audio")
            if sample.key == "tone_part":   # 0.5 s at hop 160 / 16 kHz: 51 log-mel frames
                assert sample.mel.shape == (64, 51)
    for split in ("train", "dev", "test"):
        shards = split_shards(list_shards, split)
        loader, steps = train_loader(shards, DataConfig(batch_size=2, workers=0, pin_memory=False),
                                     AugmentConfig(), epoch=0, seed=0)
        batch = next(iter(loader))
        assert batch["faces"].shape[1:] == (16, 3, 112, 112) and batch["mel"].shape[1] == 64
        assert np.isin(batch["label"].numpy(), range(7)).all()


@pytest.mark.unit
def test_small_images_are_scaled_up_and_centred_on_a_grey_canvas():
    from avemo.pipeline.config import FaceConfig
    from avemo.pipeline.faces import PAD_GREY, pad_small_frames
    frames = np.full((1, 48, 24, 3), 200, dtype=np.uint8)
    padded = pad_small_frames(frames, FaceConfig())
    assert padded.shape == (1, 320, 320, 3)
    assert (padded[0, 80:240, 120:200] == 200).all() and padded[0, 80:240, 119].tolist() == [[PAD_GREY] * 3] * 160
    assert padded[0, 79, 160].tolist() == [PAD_GREY] * 3
    assert pad_small_frames(frames, FaceConfig(pad_small_images=False)) is frames
    big = np.zeros((1, 200, 100, 3), dtype=np.uint8)
    assert pad_small_frames(big, FaceConfig()) is big
