"""build-shards face.speaker=asd: the face strip follows the face that speaks (Light-ASD on every face track
with the clip's audio), and the manifest records speaker_box / speaker_conf. Real talking faces composed side
by side in the test's temporary folder (CREMA-D's licence: never committed): the same frames with the voice
of the face on the left, then of the face on the right, must flip the strip."""
from __future__ import annotations

import io
import json
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
    listing = folder / "list.csv"
    listing.write_text("path,label,split,key\n" + "".join(f"{p},anger,train,{k}\n" for k, p in clips.items()))
    return listing


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


def test_without_asd_the_strip_is_the_most_prominent_face_on_both_clips(scenes, tmp_path):
    rows = build(scenes, tmp_path / "score")
    # the listener's face is the larger one: the default strip shows it whoever speaks (the label noise ASD removes)
    for key, listener_side in (("left", 1), ("right", -1)):
        assert np.sign(centre(rows[key]["speaker_box"]) - HALF) == listener_side, rows[key]
    assert all(r["speaker_conf"] is None for r in rows.values()), rows
