"""build-shards face.speaker=asd: the face strip follows the face that speaks (Light-ASD on every face track
with the clip's audio), and the manifest records speaker_box / speaker_conf. Real talking faces composed side
by side in the test's temporary folder (CREMA-D's licence: never committed): the same frames with the voice
of the face on the left, then of the face on the right, must flip the strip."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import command, session_scheduler
from test_predict_speakers import LISTENER, SPEAKER, WIDTH, compose

HALF = WIDTH / (2 * WIDTH)          # the composed frame's middle, as a fraction of its width


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, media):
    """(left speaks, right speaks, muted, no audio stream) clips and a list of them."""
    folder = tmp_path_factory.mktemp("speaker_scenes")
    clips = {"left": compose(media, folder / "left.mp4", SPEAKER, LISTENER),
             "right": compose(media, folder / "right.mp4", LISTENER, SPEAKER),
             "muted": compose(media, folder / "muted.mp4", SPEAKER, LISTENER, "muted"),
             "silent": compose(media, folder / "silent.mp4", SPEAKER, LISTENER, "none")}
    clips["cut"] = cut_to_the_listener(media, folder / "cut.mp4")
    clips["alone"] = alone(media, folder / "alone.mp4")
    listing = folder / "list.csv"
    listing.write_text("path,label,split,key\n" + "".join(f"{p},anger,train,{k}\n" for k, p in clips.items()))
    return listing


CUT_S = 1.2


def cut_to_the_listener(media, out) -> str:
    """The speaker alone for CUT_S seconds, then a cut to the listener alone at the same place (a reverse
    shot) while the speaker's voice goes on: 2.4 s at 25 fps."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media / SPEAKER),
                    "-i", str(media / LISTENER), "-filter_complex",
                    f"[0:v]scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1,trim=0:{CUT_S},setpts=PTS-STARTPTS[a];"
                    f"[1:v]scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1,trim=0:{CUT_S},setpts=PTS-STARTPTS[b];"
                    "[a][b]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "0:a", "-t", str(2 * CUT_S),
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)],
                   check=True)
    return str(out)


def alone(media, out) -> str:
    """The speaker alone with her own voice, 2.4 s at 25 fps: one person, nobody to choose between."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media / SPEAKER), "-vf",
                    f"scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1", "-t", str(2 * CUT_S),
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)],
                   check=True)
    return str(out)


def build(listing, out, *extra: str) -> dict[str, dict]:
    code = command("build-shards")(["--list", str(listing), "--out", str(out), f"scheduler={session_scheduler()}",
                                    "decode.max_frames=6", *extra])
    assert code == 0
    return {r["key"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def strip_boxes(out, key: str) -> np.ndarray:
    """The face boxes stored in the shard for the clip `key`: (frames with a face, 4) frame fractions."""
    for tar_path in sorted(out.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            if f"{key}.json" not in members:
                continue
            boxes = np.load(io.BytesIO(tar.extractfile(members[f"{key}.boxes.npy"]).read()))
            mask = np.load(io.BytesIO(tar.extractfile(members[f"{key}.facemask.npy"]).read()))
            return boxes[mask > 0, :4]
    raise AssertionError(f"no sample {key}")


def strip_times(out, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame times in seconds, 1 where the strip has a face) of the clip `key`'s sampled frames."""
    for tar_path in sorted(out.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            if f"{key}.json" in names:
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                mask = np.load(io.BytesIO(tar.extractfile(f"{key}.facemask.npy").read()))
                return np.array(meta["frame_times"]), mask > 0
    raise AssertionError(f"no sample {key}")


def centre(box) -> float:
    return (box[0] + box[2]) / 2


def test_the_strip_follows_the_voice_and_the_manifest_says_whose_face(scenes, tmp_path):
    out = tmp_path / "asd"
    rows = build(scenes, out, "face.speaker=asd")
    assert all(r["status"] == "ok" for r in rows.values()), rows
    for key, side in (("left", -1), ("right", 1)):
        row = rows[key]
        assert row["speaker_conf"] > 0.5 and np.sign(centre(row["speaker_box"]) - HALF) == side, row
        boxes = strip_boxes(out, key)
        assert len(boxes) >= 5 and all(np.sign(centre(b) - HALF) == side for b in boxes), boxes   # every frame
    # nobody speaks (muted lips) or no audio at all: the usual choice stands, and says how sure ASD was
    assert rows["muted"]["speaker_conf"] < 0.3 and rows["muted"]["n_faces"] >= 5
    assert rows["silent"]["speaker_conf"] is None and rows["silent"]["n_faces"] >= 5
    assert json.loads((out / "build_config.json").read_text())["face"]["speaker"] == "asd"
    # a cut to the listener while the speaker talks on: the strip keeps the speaker's frames and shows nobody
    # after the cut (the listener's face there is not the speaker's)
    times, mask = strip_times(out, "cut")
    assert rows["cut"]["speaker_conf"] > 0.5 and mask[times < CUT_S - 0.1].all() and not mask[times > CUT_S + 0.1].any()
    # one person on screen: her face is the strip whoever speaks, Light-ASD is left out (face.asd_one_face=skip)
    assert rows["alone"]["speaker_conf"] is None and rows["alone"]["n_faces"] >= 5
    single = tmp_path / "alone.csv"
    single.write_text("path,label,split,key\n" + "".join(
        line for line in scenes.read_text().splitlines(keepends=True) if line.endswith(",alone\n")))
    scored = build(single, tmp_path / "asd_one_face", "face.speaker=asd", "face.asd_one_face=score")
    assert list(scored) == ["alone"] and scored["alone"]["speaker_conf"] > 0.5
    assert scored["alone"]["speaker_box"] == pytest.approx(rows["alone"]["speaker_box"])   # the same face either way


def test_without_asd_the_strip_is_the_most_prominent_face_on_both_clips(scenes, tmp_path):
    rows = build(scenes, tmp_path / "score")
    # the listener's face is the larger one: the default strip shows it whoever speaks (the label noise ASD removes)
    for key, listener_side in (("left", 1), ("right", -1)):
        assert np.sign(centre(rows[key]["speaker_box"]) - HALF) == listener_side, rows[key]
    assert all(r["speaker_conf"] is None for r in rows.values()), rows


@pytest.mark.unit
def test_default_builds_keep_their_fingerprints_and_asd_builds_get_their_own():
    from avemo.pipeline.config import BuildConfig, FaceConfig
    from avemo.pipeline.shard_task import fingerprint
    rows = [{"key": "a", "source": "a.mp4", "kind": "video"}]
    base = fingerprint(rows, BuildConfig())
    unused = FaceConfig(speaking_min=0.9, asd_max_s=5.0, asd_detect_every=1, asd_one_face="score", asd_sync_weight=0)
    assert fingerprint(rows, BuildConfig(face=unused)) == base  # unused keys
    asd = fingerprint(rows, BuildConfig(face=FaceConfig(speaker="asd")))
    assert asd != base and fingerprint(rows, BuildConfig(face=FaceConfig(speaker="asd", speaking_min=0.9))) != asd
    assert len({asd, fingerprint(rows, BuildConfig(face=FaceConfig(speaker="asd", asd_detect_every=1))),
                fingerprint(rows, BuildConfig(face=FaceConfig(speaker="asd", asd_one_face="score"))),
                fingerprint(rows, BuildConfig(face=FaceConfig(speaker="asd", asd_sync_weight=0)))}) == 4
    # face.speaker_names: its keys count only when it is on (pipeline/names.py)
    assert fingerprint(rows, BuildConfig(face=FaceConfig(names_min_lift=0.5, names_max_clips=3))) == base
    names = fingerprint(rows, BuildConfig(face=FaceConfig(speaker_names=True)))
    assert names not in (base, asd)
    assert fingerprint(rows, BuildConfig(face=FaceConfig(speaker_names=True, names_min_lift=0.5))) != names
