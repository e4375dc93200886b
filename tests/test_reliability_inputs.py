"""Bad input, end to end: a MELD tree of broken, odd and hostile files and CSV rows through the real
build (pipeline.build.run_build, Dask LocalCluster). Every CSV row ends in the manifest, ok or rejected
with its reason; nothing crashes, nothing is silently dropped, nothing in a name or a text is executed."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from badmedia import (avemo, clip, csv_row, ffmpeg, link_clip, one_frame_clip, quadrant_clip, random_bytes,
                      truncated_clip, vfr_clip, write_csv)
from conftest import build_config
from avemo.pipeline.build import run_build
from avemo.pipeline.config import BuildConfig
from avemo.pipeline.decode import decode_clip, plan_decode
from avemo.pipeline.labels import read_label_csv
from avemo.pipeline.probe import ffmpeg_source, probe_clip
from avemo.shards.format import decode_sample
from avemo.shards.manifest import REASONS

# the root folder itself has a leading dash, spaces, quotes, unicode and a shell substitution
ROOT_NAME = "-MELD copy 'q' \"dq\" é 名 $(touch pwned)"
HOSTILE_TEXT = "=cmd|' /C calc'!A0 __import__('os').system('touch pwned') {{7*7}} $(touch pwned) `id`"
SHELLY_NAMES = ["$(touch pwned).mp4", "; rm -rf x.mp4", "-i.mp4", "it's a \"clip\" ü 名 (1).mp4"]

# train rows: (dia, utt) -> (status, reason); built by _corpus
EXPECTED = {
    "dia0_utt0": ("ok", ""),                         # a normal clip
    "dia0_utt1": ("rejected", "empty_file"),         # zero bytes
    "dia0_utt2": ("rejected", "unreadable_container"),  # truncated, moov missing
    "dia0_utt3": ("rejected", "unreadable_container"),  # random bytes named .mp4
    "dia1_utt0": ("rejected", "no_video_stream"),    # audio only
    "dia1_utt1": ("ok", ""),                         # video only: kept with a silent mask (audio.missing=silent)
    "dia1_utt2": ("rejected", "too_short"),          # one frame (0.04 s)
    "dia1_utt3": ("ok", ""),                         # 0.2 s
    "dia2_utt0": ("ok", ""),                         # variable frame rate
    "dia2_utt1": ("ok", ""),                         # display matrix rotate=90
    "dia2_utt2": ("ok", ""),                         # 4000x3000
    "dia2_utt3": ("ok", ""),                         # digital silence (anullsrc)
    "dia3_utt0": ("rejected", "too_long"),           # 6 s > probe.max_duration_s=5
    "dia3_utt1": ("ok", ""),                         # file named $(touch pwned).mp4
    "dia3_utt2": ("ok", ""),                         # file named ; rm -rf x.mp4
    "dia3_utt3": ("ok", ""),                         # file named -i.mp4
    "dia4_utt0": ("ok", ""),                         # quotes, unicode, spaces, parentheses
    "dia4_utt1": ("rejected", "missing_file"),       # no video at all
    "dia4_utt2": ("rejected", "missing_file"),       # dangling symlink
    "dia4_utt3": ("rejected", "decode_error"),       # valid index, random bytes as the H.264 payload
    "dia5_utt0": ("ok", ""),                         # hostile text in the CSV: stored as text
    "line": ("rejected", "bad_id"),                  # Dialogue_ID 'x' (key line<N>)
    "dia6_utt0": ("rejected", "unknown_label"),      # Emotion 'bored'
    "dia6_utt1": ("rejected", "bad_time"),           # StartTime 'soon'
}


def _junk_payload(path, source):
    """A faststart mp4 whose index is intact but whose frames are random bytes: probes fine, cannot decode."""
    data = bytearray(source.read_bytes())
    start = data.find(b"mdat") + 20
    data[start:] = random_bytes(path, len(data) - start, seed=1).read_bytes()
    path.write_bytes(bytes(data))
    return path


def _corpus(base):
    root = base / ROOT_NAME
    media = root / "media files"
    media.mkdir(parents=True)
    train = root / "train_splits"
    files = {
        (0, 0): clip(media / "good.mp4"),
        (0, 1): media / "zero.mp4",
        (0, 2): truncated_clip(media / "truncated.mp4", clip(media / "whole.mp4")),
        (0, 3): random_bytes(media / "random.mp4"),
        (1, 0): clip(media / "audio only.mp4", video=False),
        (1, 1): clip(media / "video only.mp4", audio=None),
        (1, 2): one_frame_clip(media / "one frame.mp4"),
        (1, 3): clip(media / "short.mp4", seconds=0.2),
        (2, 0): vfr_clip(media / "vfr.mp4"),
        (2, 1): _rotated(media, 90),
        (2, 2): clip(media / "huge.mp4", seconds=0.5, size="4000x3000", rate=4),
        (2, 3): clip(media / "silent.mp4", audio="anullsrc"),
        (3, 0): clip(media / "long.mp4", seconds=6, size="64x48", rate=2),
        (4, 3): _junk_payload(media / "junk.mp4", clip(media / "fast.mp4", audio=None,
                                                        extra=("-movflags", "+faststart"))),
        (5, 0): clip(media / "hostile text.mp4"),
    }
    files[(0, 1)].write_bytes(b"")
    for (dia, utt), name in zip([(3, 1), (3, 2), (3, 3), (4, 0)], SHELLY_NAMES):
        files[(dia, utt)] = clip(media / name)
    for (dia, utt), path in files.items():
        link_clip(train, dia, utt, path)
    (train / "dia4_utt2.mp4").symlink_to(media / "deleted.mp4")
    rows = [csv_row(i, dia, utt) for i, (dia, utt) in enumerate(sorted([*files, (4, 1), (4, 2)]), 1)]
    rows[-1][1] = rows[-1][2] = HOSTILE_TEXT                           # dia5_utt0: utterance and speaker
    rows[0][1] = "It\u0092s  \u0093fine\u0094"                         # legacy cp1252-as-latin-1 punctuation
    rows += [[], csv_row(90, "x", 0), [" ", ""], csv_row(91, 6, 0, emotion="bored"),
             csv_row(92, 6, 1, start="soon"), csv_row(93, 0, 0, emotion="anger", sentiment="negative"), []]
    write_csv(root / "train_sent_emo.csv", rows)
    # dev: a legacy cp1252 file (0x92 apostrophe) with one good clip
    link_clip(root / "dev_splits_complete", 0, 0, files[(0, 0)])
    write_csv(root / "dev_sent_emo.csv", [csv_row(1, 0, 0, text="It\u2019s the dev clip")], encoding="cp1252")
    return root


def _rotated(media, degrees):
    plain = quadrant_clip(media / f"plain{degrees}.mp4")
    rotated = media / f"rotated {degrees}.mp4"
    ffmpeg("-i", "file:" + str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", "file:" + str(rotated))
    return rotated


def _data_rows(path, encoding="utf-8"):
    with open(path, encoding=encoding, newline="") as fh:
        return [r for r in list(csv.reader(fh))[1:] if any(v.strip() for v in r)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("badinput"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "x.mp4").write_bytes(b"sentinel")
    out = corpus.parent / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)                                                 # where an executed `touch` would land
        summary = run_build(build_config(corpus, out, "splits=[train,dev]", "probe.max_duration_s=5",
                                         "dask.workers=1"))
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return out, rows, summary, cwd


def test_every_row_ends_in_the_manifest_with_its_reason(corpus, built):
    out, rows, summary, _ = built
    n_input = len(_data_rows(corpus / "train_sent_emo.csv")) + len(_data_rows(corpus / "dev_sent_emo.csv", "cp1252"))
    assert len(rows) == n_input == summary.rows
    assert summary.ok + sum(summary.rejected.values()) == n_input and summary.shards_failed == 0
    train = [r for r in rows if r["split"] == "train"]
    got = {}
    for r in train:
        key = "line" if r["key"].startswith("line") else r["key"]
        got.setdefault(key, []).append((r["status"], r["reason"]))
        assert (r["status"] == "ok") == (r["reason"] == "") == (r["shard"] != "")
        if r["status"] != "ok":
            assert r["reason"] in REASONS and r["detail"].strip(), r
    assert got.pop("dia0_utt0") == [("ok", ""), ("rejected", "duplicate_key")]
    assert {k: v[0] for k, v in got.items()} == {k: v for k, v in EXPECTED.items() if k != "dia0_utt0"}
    dev = [r for r in rows if r["split"] == "dev"]
    assert [(r["key"], r["status"]) for r in dev] == [("dia0_utt0", "ok")]


def test_rejection_details_say_why(built):
    rows = {r["key"]: r for r in built[1] if r["split"] == "train" and r["status"] != "ok"}
    assert "0 bytes" in rows["dia0_utt1"]["detail"]
    assert "moov atom not found" in rows["dia0_utt2"]["detail"] and "Invalid data" in rows["dia0_utt3"]["detail"]
    assert "audio" in rows["dia1_utt0"]["detail"]
    assert "probe.min_duration_s" in rows["dia1_utt2"]["detail"]
    assert "probe.max_duration_s=5" in rows["dia3_utt0"]["detail"]
    assert "bored" in rows["dia6_utt0"]["detail"] and "soon" in rows["dia6_utt1"]["detail"]
    assert "NAL unit" in rows["dia4_utt3"]["detail"]
    assert "0x" not in rows["dia4_utt3"]["detail"]   # no per-run pointer addresses: manifests stay reproducible


def _samples(out):
    samples = {}
    for tar in sorted(out.glob("*.tar")):
        for raw in wds.WebDataset(str(tar), shardshuffle=False):
            s = decode_sample(raw)
            samples[(s.meta["split"], s.key)] = s
    return samples


def test_accepted_odd_clips_are_decoded_right(built):
    out, rows, _, _ = built
    s = {key: v for (split, key), v in _samples(out).items() if split == "train"}
    assert set(s) == {k for k, (status, _) in EXPECTED.items() if status == "ok"}
    assert s["dia1_utt1"].mel is None and s["dia1_utt1"].meta["has_audio"] is False      # video only
    assert s["dia1_utt3"].meta["n_frames"] == 1 and s["dia1_utt3"].mel.shape[1] > 0     # 0.2 s
    assert s["dia2_utt0"].meta["n_frames"] == 8                                          # vfr: max_frames
    assert s["dia2_utt1"].meta["frame_size"] == [240, 320]                              # rotated portrait
    assert s["dia2_utt2"].meta["frame_size"] == [640, 480]                              # 4000x3000, downscaled
    silent = s["dia2_utt3"].mel.astype(np.float32)
    assert silent.max() == pytest.approx(np.log(1e-6), abs=0.01)                       # only the log floor
    sources = {r["key"]: r["source"] for r in rows if r["split"] == "train"}
    for key, name in zip(["dia3_utt1", "dia3_utt2", "dia3_utt3", "dia4_utt0"], SHELLY_NAMES):
        assert sources[key].endswith("/" + name) and s[key].meta["n_frames"] == 8


def test_csv_text_is_data(built):
    samples = _samples(built[0])
    hostile = samples[("train", "dia5_utt0")].meta
    assert hostile["utterance"] == hostile["speaker"] == HOSTILE_TEXT
    assert samples[("train", "dia0_utt0")].meta["utterance"] == 'It\'s "fine"'   # U+0092/93/94, normalised
    assert samples[("dev", "dia0_utt0")].meta["utterance"] == "It's the dev clip"  # cp1252 byte 0x92


def test_nothing_in_a_name_or_text_was_executed(corpus, built):
    cwd = built[3]
    assert (cwd / "x.mp4").read_bytes() == b"sentinel"
    for folder in (cwd, corpus, corpus.parent):
        assert not list(folder.rglob("pwned")), folder


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_rotates_the_frames(tmp_path, degrees):
    """Decoded frames equal numpy's rotation of the unrotated frames by the angle ffprobe reports."""
    import subprocess
    rotated = _rotated(tmp_path, degrees)
    cfg = BuildConfig()
    frames = {}
    for name in (f"plain{degrees}.mp4", rotated.name):
        probe = probe_clip(tmp_path / name, cfg.probe, cfg.audio)
        frames[name] = decode_clip(ffmpeg_source(tmp_path / name), plan_decode(probe, cfg.decode)).frames
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(rotated)],
                                     capture_output=True, text=True, check=True).stdout)
    ccw = int(info["streams"][0]["side_data_list"][0]["rotation"])      # counter-clockwise degrees
    plain, turned = frames[f"plain{degrees}.mp4"], frames[rotated.name]
    expected = np.rot90(plain, k=ccw // 90, axes=(1, 2))
    assert turned.shape == expected.shape == (plain.shape[0], *((320, 240) if degrees % 180 else (240, 320)), 3)
    assert np.abs(turned.astype(int) - expected.astype(int)).mean() < 2.0
    if degrees % 180 == 0:
        assert np.abs(turned.astype(int) - plain.astype(int)).mean() > 20      # really turned


def test_huge_resolution_is_downscaled_inside_ffmpeg(corpus):
    cfg = BuildConfig()
    path = corpus / "media files" / "huge.mp4"
    probe = probe_clip(path, cfg.probe, cfg.audio)
    assert (probe.width, probe.height) == (4000, 3000)
    decoded = decode_clip(ffmpeg_source(path), plan_decode(probe, cfg.decode))
    assert decoded.frames.shape == (2, 480, 640, 3)           # ~1 MB in Python, not 2 x 36 MB


HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def test_a_broken_csv_header_is_one_line_exit_2(tmp_path):
    (tmp_path / "train_sent_emo.csv").write_text(HEADER.replace("Emotion,", "") + "\r\n1,hi,Ross,positive,0,0\r\n")
    result = avemo("build-shards", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--splits", "train")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"avemo build-shards: error: {tmp_path / 'train_sent_emo.csv'}: missing required column 'Emotion'"]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "empty CSV"),
    (b"\x00\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "missing required column"),
    (("Utterance;Speaker;Emotion\r\n").encode(), "missing required column"),
], ids=["empty", "binary", "semicolons"])
def test_unusable_csvs_stop_with_one_line(tmp_path, capsys, content, message):
    from avemo.cli import main
    (tmp_path / "train_sent_emo.csv").write_bytes(content)
    assert main(["build-shards", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--splits", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_stray_quote_or_delimiter_loses_no_row(tmp_path):
    """A stray quote must not swallow the rows after it, and an overlong field must not crash the reader."""
    lines = [HEADER,
             '1,"Unclosed quote,Ross,joy,positive,1,0,1,1,0:00:01.000,0:00:02.000',       # unbalanced quote
             '2,Fine,Ross,joy,positive,1,1,1,1,"0:00:01,000","0:00:02,000"',
             '3,Extra, comma,Ross,joy,positive,1,2,1,1,"0:00:01,000","0:00:02,000"',      # one field too many
             '4,"' + "x" * 200_000 + '",Ross,joy,positive,1,3,1,1,"0:00:01,000","0:00:02,000"',
             '5,Also fine,Ross,sadness,negative,1,4,1,1,"0:00:01,000","0:00:02,000"']
    path = tmp_path / "train_sent_emo.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    rows = read_label_csv(path, "train")
    assert [(r["csv_line"], r["status"]) for r in rows] == [(2, "rejected"), (3, "ok"), (4, "rejected"),
                                                           (5, "rejected"), (6, "ok")]
    assert [r["key"] for r in rows if r["status"] == "ok"] == ["dia1_utt1", "dia1_utt4"]
    assert {r["reason"] for r in rows if r["status"] != "ok"} == {"bad_row"}
    assert "12 fields" in rows[2]["detail"] and "11" in rows[2]["detail"]
    assert "field larger than field limit" in rows[3]["detail"]
    assert "bad_row" in REASONS
    assert len(io.StringIO(path.read_text()).readlines()) - 1 == len(rows)
