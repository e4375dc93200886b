"""build-shards face.speaker_names (MELD layout): each dialogue's Speaker names are linked to the faces that
recur in their own utterances (pipeline/names.py), and a clip's strip shows its speaker's face even in a
two-shot where the listener is the more prominent face. Real faces (a CREMA-D actor and single_face.mp4's
man) composed in the test's temporary folder; never committed."""
from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from avemo.pipeline.names import cluster_identities, link_names, named_choices
from conftest import command, session_scheduler
from test_build_speaker import strip_boxes
from test_predict_speakers import LISTENER, SPEAKER, WIDTH, compose

HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,"
          "EndTime")


@pytest.mark.unit
def test_identities_cluster_by_cosine_similarity():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    faces = np.stack([a + 0.2 * rng.normal(size=64) for _ in range(3)] + [b + 0.2 * rng.normal(size=64)] * 2 + [a])
    assert cluster_identities(faces, 0.5).tolist() == [0, 0, 0, 1, 1, 0]
    assert cluster_identities(faces, 1.01).tolist() == list(range(6))          # nothing is similar enough


@pytest.mark.unit
def test_names_link_one_to_one_by_lift_and_only_above_the_minimum():
    # identity 0 is on screen in all of Ann's clips and half of Bob's; 1 in all of Bob's, half of Ann's
    presence = [{0: 1.0, 1: 1.0}, {1: 1.0}, {0: 1.0}, {0: 1.0, 1: 1.0}]
    names = ["Ann", "Bob", "Ann", "Bob"]
    links = link_names(presence, names, 0.2)
    assert {k: (v.identity, v.lift) for k, v in links.items()} == {"Ann": (0, 0.5), "Bob": (1, 0.5)}
    assert link_names(presence, names, 0.6) == {}                               # too weak to decide
    # an extra always-present face (a third person in every shot) links to no one
    both = [{**p, 2: 1.0} for p in presence]
    assert {v.identity for v in link_names(both, names, 0.2).values()} == {0, 1}


@pytest.mark.unit
def test_named_choices_pick_the_speakers_detection_per_frame():
    rng = np.random.default_rng(1)
    ann, bob = rng.normal(size=32), rng.normal(size=32)

    def f(*who):
        return np.stack([w + 0.1 * rng.normal(size=32) for w in who]) if who else np.zeros((0, 32))

    clips = [[f(bob, ann), f(bob, ann)], [f(bob), f()], [f(ann), f(ann)], [f(ann, bob), f(bob)]]
    out = named_choices(clips, ["Ann", "Bob", "Ann", "Bob"], 0.5, 0.2)
    assert [c for c, _ in out] == [[1, 1], [0, None], [0, 0], [1, 0]]
    # Ann: in all her frames, a quarter of Bob's (lift 0.75); Bob: 3/4 of his frames, half of Ann's (0.25)
    assert [lift for _, lift in out] == pytest.approx([0.75, 0.25, 0.75, 0.25])
    assert named_choices([[f()], [f()]], ["Ann", "Bob"], 0.5, 0.2) == [(None, None), (None, None)]


def closeup(media, out, name: str) -> str:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media / name), "-vf",
                    f"scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1", "-t", "2.4", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)], check=True)
    return str(out)


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory, media):
    """MELD layout, one dialogue: Ann (the CREMA-D actor) in a two-shot beside the larger man, Bob (the man)
    alone, Ann alone, Bob in a two-shot beside her."""
    root = tmp_path_factory.mktemp("names_meld")
    videos = root / "train_splits"
    videos.mkdir()
    compose(media, videos / "dia0_utt0.mp4", LISTENER, SPEAKER)     # the man left, Ann right (her voice)
    closeup(media, videos / "dia0_utt1.mp4", LISTENER)
    closeup(media, videos / "dia0_utt2.mp4", SPEAKER)
    compose(media, videos / "dia0_utt3.mp4", SPEAKER, LISTENER)     # Ann left, the man right
    rows = [(0, "Ann"), (1, "Bob"), (2, "Ann"), (3, "Bob")]
    (root / "train_sent_emo.csv").write_text(
        HEADER + "\r\n" + "".join(f'{i + 1},"Line {u}",{who},anger,negative,0,{u},1,1,"00:00:01,000","00:00:03,400"\r\n'
                                  for i, (u, who) in enumerate(rows)), encoding="utf-8")
    return root


def build(root, out, *extra: str) -> dict[str, dict]:
    code = command("build-shards")(["--root", str(root), "--out", str(out), "--splits", "train",
                                    f"scheduler={session_scheduler()}", "decode.max_frames=6", *extra])
    assert code == 0
    return {r["key"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def test_the_strip_shows_each_clips_speaker_by_name(dialogue, tmp_path):
    rows = build(dialogue, tmp_path / "names", "face.speaker_names=true")
    assert all(r["status"] == "ok" for r in rows.values())
    key = {u: next(k for k, r in rows.items() if r["utterance_id"] == u) for u in range(4)}
    # Ann's two-shot: her face (the right half), not the more prominent man on the left
    centres = (strip_boxes(tmp_path / "names", key[0])[:, [0, 2]].mean(1))
    assert len(centres) and (centres > 0.5).all(), centres
    # Bob's two-shot: the man, now on the right
    centres = (strip_boxes(tmp_path / "names", key[3])[:, [0, 2]].mean(1))
    assert len(centres) and (centres > 0.5).all(), centres
    assert rows[key[0]]["speaker_conf"] == pytest.approx(0.5) and rows[key[3]]["speaker_conf"] == pytest.approx(0.5)
    # without the names the most prominent face (the man) stands in Ann's two-shot
    plain = build(dialogue, tmp_path / "plain")
    centres = strip_boxes(tmp_path / "plain", key[0])[:, [0, 2]].mean(1)
    assert (centres < 0.5).all() and plain[key[0]]["speaker_conf"] is None
