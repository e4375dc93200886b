"""Issue 12, build side: clips whose bytes are not what they claim. Real files (ffmpeg lavfi, a FIFO, a link
loop, HLS/DASH manifests pointing at a real face video) through the real shard task (probe_shard +
build_shard, no Dask: one shard is all these need)."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from badmedia import H264, clip, ffmpeg
from avemo.pipeline.labels import read_label_csv
from avemo.pipeline.probe import ProbeResult, probe_clip
from avemo.pipeline.shard_task import ShardSpec, build_shard, probe_shard

from conftest import build_config


def _nan_audio_clip(path: Path, tmp: Path) -> Path:
    """testsrc2 video + 32-bit float PCM audio where every 50th sample is NaN (a float codec stores them)."""
    audio = np.sin(np.arange(32000, dtype=np.float32) / 8).astype(np.float32)
    audio[::50] = np.nan
    raw = tmp / "nan.f32"
    raw.write_bytes(audio.tobytes())
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=2", "-f", "f32le", "-ar", "16000", "-ac", "1",
           "-i", "file:" + str(raw), *H264, "-c:a", "pcm_f32le", "-t", "2", "-f", "matroska", "file:" + str(path))
    return path


def _playlists(folder: Path, target: Path) -> dict[str, str]:
    return {
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n",
        "dash": ('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                 'mediaPresentationDuration="PT3S" minBufferTime="PT1S" '
                 'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period><AdaptationSet mimeType="video/mp4">'
                 f'<Representation id="1" bandwidth="100000"><BaseURL>file:{target}</BaseURL></Representation>'
                 '</AdaptationSet></Period></MPD>\n'),
    }


@pytest.fixture(scope="module")
def hostile_shard(tmp_path_factory, media):
    """One shard of hostile clips, each named like a MELD clip; -> ({key: manifest row}, shard folder)."""
    tmp = tmp_path_factory.mktemp("hostile")
    videos, out = tmp / "videos", tmp / "out"
    videos.mkdir()
    out.mkdir()
    sources = {"dia1_utt0": clip(videos / "dia1_utt0.mp4"),
               "dia2_utt0": _nan_audio_clip(videos / "dia2_utt0.mp4", tmp)}
    for i, (name, text) in enumerate(_playlists(videos, media / "single_face.mp4").items()):
        (videos / f"dia{3 + i}_utt0.mp4").write_text(text)
        sources[f"dia{3 + i}_utt0"] = videos / f"dia{3 + i}_utt0.mp4"
    (videos / "dia5_utt0.mp4").mkdir()                       # a folder named like a clip
    os.mkfifo(videos / "dia6_utt0.mp4")                      # a FIFO: opening it for reading would block
    os.symlink(videos / "dia7_utt0.mp4", videos / "loop")    # dia7 -> loop -> dia7
    os.symlink(videos / "loop", videos / "dia7_utt0.mp4")
    for n in (5, 6, 7):
        sources[f"dia{n}_utt0"] = videos / f"dia{n}_utt0.mp4"
    rows = [dict(key=k, split="train", dialogue_id=int(k[3]), utterance_id=0, label=3, emotion="joy",
                 sentiment="positive", csv_line=i + 2, source=str(p)) for i, (k, p) in enumerate(sources.items())]
    cfg = build_config(tmp, out, "dask.decode_threads=1", "face.device=cpu")
    spec = ShardSpec(name="train-000000", split="train", out_dir=str(out), rows=rows, config=asdict(cfg))
    result = build_shard(spec, probe_shard(spec))
    return {r["key"]: r for r in result}, out


def test_nan_audio_is_rejected_at_build_time(hostile_shard):
    rows, _ = hostile_shard
    assert rows["dia1_utt0"]["status"] == "ok"          # the control clip
    assert (rows["dia2_utt0"]["reason"], rows["dia2_utt0"]["status"]) == ("non_finite_audio", "rejected")
    assert "NaN or inf" in rows["dia2_utt0"]["detail"]


@pytest.mark.parametrize("key", ["dia3_utt0", "dia4_utt0"])   # HLS playlist, DASH manifest
def test_playlists_and_manifests_are_not_followed(hostile_shard, key):
    rows, out = hostile_shard
    assert (rows[key]["status"], rows[key]["reason"]) == ("rejected", "unsupported_container"), rows[key]
    shard_keys = {s["__key__"] for s in wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False)}
    assert shard_keys == {"dia1_utt0"}
    faces = pq.read_table(out / "parts" / "train-000000.parquet").to_pydict()["n_faces"]
    assert sum(faces) == 0    # testsrc2 has no face: any face in the shard came from the video they name


@pytest.mark.parametrize("key, what", [("dia5_utt0", "a folder"), ("dia6_utt0", "a FIFO"),
                                       ("dia7_utt0", "a symlink loop")])
def test_non_files_named_like_clips_get_their_own_reason(hostile_shard, key, what):
    rows, _ = hostile_shard
    assert (rows[key]["status"], rows[key]["reason"]) == ("rejected", "not_a_file")
    assert what in rows[key]["detail"]


@pytest.mark.unit
def test_probe_never_opens_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "x.mp4")
    result = probe_clip(tmp_path / "x.mp4", build_config(tmp_path, tmp_path).probe, build_config(tmp_path, tmp_path).audio)
    assert result == ProbeResult(False, "not_a_file", f"{tmp_path / 'x.mp4'} is a FIFO, not a regular file")


@pytest.mark.unit
@pytest.mark.parametrize("dia", ["1" * 20, "9" * 5000, "1234567890"])
def test_huge_dialogue_ids_are_bad_ids(tmp_path, dia):
    csv = tmp_path / "train_sent_emo.csv"
    csv.write_text("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,StartTime,EndTime\n"
                   f'1,Hi,Ross,joy,positive,{dia},0,"0:00:01,000","0:00:02,000"\n'
                   '2,Hi,Ross,joy,positive,123456789,0,"0:00:01,000","0:00:02,000"\n')
    rows = read_label_csv(csv, "train")
    assert [(r["status"], r["reason"]) for r in rows] == [("rejected", "bad_id"), ("ok", "")]
    assert len(rows[0]["detail"]) < 120


@pytest.mark.slow
def test_ctrl_c_during_a_build_is_one_line(mini_meld, tmp_path):
    """SIGINT to the whole foreground process group, as a terminal's Ctrl-C sends it, mid-build."""
    import signal
    import sys
    import time
    from badmedia import group_alive, start_group, wait_for
    log = tmp_path / "log"
    proc = start_group([sys.executable, "-m", "avemo", "build-shards", "--root", str(mini_meld), "--out",
                        str(tmp_path / "out"), "dask.workers=2", "shards.max_clips=4"], log)
    import re
    done = re.compile(rb"\| [1-9]\d*/\d+ \[")                  # the progress bar: some clips finished
    wait_for(lambda: done.search(log.read_bytes()), 300, "the first clips", proc, log)
    time.sleep(1)                                           # shard tasks running in the workers
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    deadline = time.time() + 60
    while time.time() < deadline and group_alive(proc.pid):
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert text.rstrip().splitlines()[-1].split("\r")[-1] == ("avemo build-shards: interrupted; finished shards are kept; "
                                                                  "rerun the same command to resume")
    assert not group_alive(proc.pid), "a worker outlived the interrupted build"
