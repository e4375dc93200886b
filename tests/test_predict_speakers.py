"""`avemo predict --speakers` on real talking faces composed side by side: a CREMA-D actor with his own voice
(../shared/media/crema-d) next to single_face.mp4 (a man moving his lips, no audible voice of his own). The
composed clips live in the test's temporary folder only (CREMA-D's licence: never committed)."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import command

predict_main = command("predict")
SPEAKER = "crema-d/1001_DFA_ANG_XX.flv"
LISTENER = "single_face.mp4"
WIDTH = 480                                   # each face's half of the composed frame, in input pixels


def compose(media, out, left: str, right: str, audio: str = "speaker") -> str:
    """left | right at 480x360 each, 25 fps, 2.4 s; audio: 'speaker' (the CREMA-D clip's own voice), 'muted'
    (digital silence), 'none' (no audio stream)."""
    voice = 0 if left == SPEAKER else 1
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media / left), "-i", str(media / right),
           "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-filter_complex",
           f"[0:v]scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1[a];"
           f"[1:v]scale=-2:360,crop={WIDTH}:360,fps=25,setsar=1[b];[a][b]hstack[v]", "-map", "[v]"]
    cmd += {"speaker": ["-map", f"{voice}:a"], "muted": ["-map", "2:a"], "none": []}[audio]
    cmd += ["-t", "2.4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True)
    return str(out)


def predict(path: str, checkpoint, capsys, *extra: str) -> list[dict]:
    code = predict_main([path, "--checkpoint", str(checkpoint), "--speakers", "--window", "1", "--hop", "0.5", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def side(box: list[float]) -> str:
    return "left" if (box[0] + box[2]) / 2 < WIDTH else "right"


@pytest.mark.parametrize("speaker_side", ["left", "right"])
def test_the_voice_picks_its_own_face_and_ids_persist(media, tiny_checkpoint, tmp_path, capsys, speaker_side):
    left, right = (SPEAKER, LISTENER) if speaker_side == "left" else (LISTENER, SPEAKER)
    plot = tmp_path / "who.png"
    lines = predict(compose(media, tmp_path / "scene.mp4", left, right), tiny_checkpoint, capsys, "--plot", str(plot))
    assert len(lines) >= 3
    ids_by_side: dict[str, set[int]] = {"left": set(), "right": set()}
    for line in lines:
        assert len(line["faces"]) == 2, line["faces"]
        assert {side(f["box"]) for f in line["faces"]} == {"left", "right"}
        for f in line["faces"]:
            ids_by_side[side(f["box"])].add(f["track"])
            assert 0 <= f["speaking"] <= 1 and f["label"] in f["probs"] and abs(sum(f["probs"].values()) - 1) < 1e-3
            assert 0 <= f["box"][0] < f["box"][2] <= 2 * WIDTH and 0 <= f["box"][1] < f["box"][3] <= 360
        by_id = {f["track"]: f for f in line["faces"]}
        talker = max(line["faces"], key=lambda f: f["speaking"])
        assert side(talker["box"]) == speaker_side, line["faces"]           # the voice's own face, every window
        if line["speaker"] is not None:                                      # the line reads the speaker
            assert side(by_id[line["speaker"]]["box"]) == speaker_side
            assert line["label"] == by_id[line["speaker"]]["label"] and line["probs"] == by_id[line["speaker"]]["probs"]
    assert any(line["speaker"] is not None for line in lines)
    # one person, one id, from the first window to the last
    assert len(ids_by_side["left"]) == len(ids_by_side["right"]) == 1 and ids_by_side["left"] != ids_by_side["right"]
    from PIL import Image
    with Image.open(plot) as image:          # two panels (emotion, who speaks): taller than the one-panel plot
        assert image.height > 500


def test_muted_talking_faces_get_no_speaker_and_the_usual_label(media, tiny_checkpoint, tmp_path, capsys):
    lines = predict(compose(media, tmp_path / "muted.mp4", SPEAKER, LISTENER, "muted"), tiny_checkpoint, capsys)
    assert lines and all(line["speaker"] is None and line["label"] is not None for line in lines)
    assert all(f["speaking"] < 0.3 for line in lines for f in line["faces"]), [line["faces"] for line in lines]


def test_without_audio_nobody_is_marked_and_nothing_breaks(media, tiny_checkpoint, tmp_path, capsys):
    lines = predict(compose(media, tmp_path / "silent.mp4", SPEAKER, LISTENER, "none"), tiny_checkpoint, capsys)
    assert lines and all(line["speaker"] is None and line["modalities"] == ["face"] for line in lines)
    assert all(len(line["faces"]) == 2 and all(f["speaking"] is None for f in line["faces"]) for line in lines)


def test_no_face_gives_an_empty_list(media, tiny_checkpoint, capsys):
    lines = predict(str(media / "no_face.mp4"), tiny_checkpoint, capsys)
    assert lines and all(line["faces"] == [] and line["speaker"] is None for line in lines)


def test_per_clip_names_the_speaker_of_the_whole_clip(media, tiny_checkpoint, tmp_path, capsys):
    scene = compose(media, tmp_path / "scene.mp4", LISTENER, SPEAKER)
    [line] = predict(scene, tiny_checkpoint, capsys, "--per-clip")
    assert len(line["faces"]) == 2 and side(max(line["faces"], key=lambda f: f["speaking"])["box"]) == "right"
    speaker = next(f for f in line["faces"] if f["track"] == line["speaker"])
    assert side(speaker["box"]) == "right" and line["probs"] == speaker["probs"]


def frame_rgb(path, index: int, size: tuple[int, int]):
    """Frame `index` of a 25 fps video as an (h, w, 3) uint8 array."""
    import numpy as np
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{index})",
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(size[1], size[0], 3).astype(int)


def test_overlay_draws_each_person_and_marks_the_speaker(media, tiny_checkpoint, tmp_path, capsys):
    import numpy as np
    scene = compose(media, tmp_path / "scene.mp4", SPEAKER, LISTENER)
    out = tmp_path / "drawn.mp4"
    lines = predict(scene, tiny_checkpoint, capsys, "--overlay", str(out))
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                     capture_output=True, check=True).stdout)["streams"]
    video = next(s for s in info if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (2 * WIDTH, 360) and int(video["nb_frames"]) == 60   # 2.4 s x 25
    assert any(s["codec_type"] == "audio" for s in info)                                # the input's voice kept
    line = next(ln for ln in lines if ln["speaker"] is not None)
    index = round((line["start"] + line["end"]) / 2 * 25)          # a frame that shows this window's answer
    drawn, plain = frame_rgb(out, index, (2 * WIDTH, 360)), frame_rgb(scene, index, (2 * WIDTH, 360))
    for face in line["faces"]:
        x0, y0, x1, y1 = (round(v) for v in face["box"])
        edge = np.median(drawn[y0 + 20:y1 - 20, x0 + 1], axis=0)                         # the box's left side
        if face["track"] == line["speaker"]:
            assert edge[1] > 170 and edge[0] < 90 and edge[2] < 90, edge              # green: the speaker
        else:
            assert edge.min() > 190, edge                                               # white: the others
        centre = (slice((y0 + y1) // 2 - 5, (y0 + y1) // 2 + 5), slice((x0 + x1) // 2 - 5, (x0 + x1) // 2 + 5))
        assert abs(drawn[centre] - plain[centre]).mean() < 12       # the face itself is not painted over


@pytest.mark.parametrize("inputs, out, message", [
    (["{media}"], "o.mp4", "one input video file"),
    (["{media}/single_face.mp4"], "o.gif", "must end in .mp4"),
])
def test_overlay_refuses_what_it_cannot_draw_in_one_line(media, tiny_checkpoint, tmp_path, capsys, inputs, out,
                                                        message):
    argv = [i.format(media=media) for i in inputs] + ["--checkpoint", str(tiny_checkpoint),
                                                      "--overlay", str(tmp_path / out)]
    if message.startswith("one"):                      # an argument error: argparse's exit 2
        with pytest.raises(SystemExit) as exc:
            predict_main(argv)
        assert exc.value.code == 2
    else:
        assert predict_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not (tmp_path / out).exists(), err
