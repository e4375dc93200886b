"""Images and audio files read in-process (decode.in_process: Pillow, soundfile) give the samples the
ffprobe/ffmpeg path gives; face.image_mode=whole crops an already-cropped face without the detector; images
without a face get a reason. Real bytes throughout: generated pictures and sounds, real FER2013 faces."""
from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

from avemo.core.config import load_config
from avemo.pipeline.build import plan_shards
from avemo.pipeline.config import AudioConfig, BuildConfig, DecodeConfig, ProbeConfig
from avemo.pipeline.decode import DecodeError, plan_decode
from avemo.pipeline.media_list import read_media_list
from avemo.pipeline.readers import decode_file, probe_file
from avemo.pipeline.shard_task import build_shard, fingerprint, probe_shard
from avemo.shards.format import decode_sample
from avemo.shards.manifest import make_table


def probe(path: Path, in_process: bool):
    return probe_file(path, ProbeConfig(), AudioConfig(), any_kind=True, in_process=in_process)


def decode(path: Path, in_process: bool, start: float = 0.0, window: float = 0.0, **decode_cfg):
    result = probe(path, in_process)
    assert result.ok, result
    return result, decode_file(str(path), result.reader, plan_decode(result, DecodeConfig(**decode_cfg), start, window), 60)


def photo() -> np.ndarray:
    """A real face photograph (matplotlib's sample grace_hopper.jpg, 512x600 RGB)."""
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    face = photo()
    pics = {
        "photo.jpg": Image.fromarray(face),                                        # larger than frame_size? no: 512x600
        "big.jpg": Image.fromarray(face).resize((1200, 1400)),                     # scaled to 640 px by the plan
        "odd.png": Image.fromarray(face[::13, ::11]),                              # 47x47 -> 48x48 (even)
        "grey.jpg": Image.fromarray(face[100:400, 100:400]).convert("L").resize((48, 48)),
        "rgba.png": Image.fromarray(np.dstack([face[:200, :300], np.full((200, 300), 255, np.uint8)])),
        "palette.png": Image.fromarray(face[:128, :96]).convert("P"),
    }
    for name, im in pics.items():
        im.save(folder / name, quality=92) if name.endswith(".jpg") else im.save(folder / name)
    return {name: folder / name for name in pics}


@pytest.mark.parametrize("name", ["photo.jpg", "big.jpg", "odd.png", "grey.jpg", "rgba.png", "palette.png"])
def test_in_process_image_gives_ffmpegs_frame(pictures, name):
    fast, ours = decode(pictures[name], in_process=True)
    slow, ffmpeg = decode(pictures[name], in_process=False)
    assert (fast.reader, slow.reader) == ("pillow", "ffmpeg")
    assert (fast.kind, fast.width, fast.height) == (slow.kind, slow.width, slow.height) == ("image", *Image.open(pictures[name]).size)
    assert ours.frames.shape == ffmpeg.frames.shape and ours.frames.dtype == np.uint8 and ours.audio is None
    diff = np.abs(ours.frames.astype(int) - ffmpeg.frames.astype(int))
    # JPEG chroma upsampling and the scalers differ a little; the picture is the same
    assert diff.mean() < 2.5 and np.percentile(diff, 99) <= 16, (diff.mean(), np.percentile(diff, 99))


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90 clockwise) reaches the detector upright
    (ffmpeg 5.1 ignores the tag)."""
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255                                   # left half white, as stored
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    result, decoded = decode(tmp_path / "turned.jpg", in_process=True)
    assert (result.width, result.height) == (40, 80) and decoded.frames.shape == (1, 80, 40, 3)
    frame = decoded.frames[0].astype(int)
    assert frame[:35].mean() > 240 and frame[45:].mean() < 15, "white on top once turned upright"


def test_bad_images_get_reasons_never_a_crash(tmp_path, pictures):
    data = pictures["photo.jpg"].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "empty.jpg").write_bytes(b"")
    result = probe(tmp_path / "truncated.jpg", in_process=True)
    assert result.ok and result.reader == "pillow"          # the header is fine ...
    with pytest.raises(DecodeError, match="truncated"):     # ... the pixels are not: decode_error, with why
        decode_file(str(tmp_path / "truncated.jpg"), result.reader, plan_decode(result, DecodeConfig()), 60)
    assert probe(tmp_path / "garbage.png", in_process=True).reason == "unreadable_container"   # ffprobe's verdict
    assert probe(tmp_path / "empty.jpg", in_process=True).reason == "empty_file"
    Image.new("1", (8_000, 6_000)).save(tmp_path / "bomb.png")     # 48 MP in 10 kB: refused from its header
    bomb, by_ffprobe = probe(tmp_path / "bomb.png", in_process=True), probe(tmp_path / "bomb.png", in_process=False)
    assert (bomb.ok, bomb.reason, bomb.reader) == (False, "too_large", "pillow") and "probe.max_pixels" in bomb.detail
    assert (by_ffprobe.reason, by_ffprobe.detail) == (bomb.reason, bomb.detail), "the same verdict as ffprobe's"
    deep = tmp_path / "deep.png"                              # 16 bits per channel: ffmpeg reads it
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
    assert probe(deep, in_process=True).reader == "ffmpeg" and probe(deep, in_process=True).ok


@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sounds")
    t16, t44 = np.arange(int(1.5 * 16000)) / 16000, np.arange(int(1.5 * 44100)) / 44100
    sf.write(folder / "mono16k.wav", 0.5 * np.sin(2 * np.pi * 220 * t16), 16000, subtype="PCM_16")
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 330 * t44), 0.3 * np.sin(2 * np.pi * 550 * t44)], 1)
    sf.write(folder / "stereo44k.wav", stereo.astype(np.float32), 44100, subtype="FLOAT")
    sf.write(folder / "voice48k.flac", 0.6 * np.sin(2 * np.pi * 180 * np.arange(72000) / 48000), 48000)
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize("name,start,window", [("mono16k.wav", 0, 0), ("mono16k.wav", 0.25, 0.5),
                                               ("stereo44k.wav", 0, 0), ("voice48k.flac", 0.5, 0)])
def test_in_process_audio_gives_ffmpegs_samples(sounds, name, start, window):
    from avemo.pipeline.audio import log_mel
    fast, ours = decode(sounds[name], True, start, window)
    slow, ffmpeg = decode(sounds[name], False, start, window)
    assert (fast.reader, slow.reader, fast.kind, slow.kind) == ("soundfile", "ffmpeg", "audio", "audio")
    assert math.isclose(fast.duration_s, slow.duration_s, abs_tol=0.03)
    assert ours.frames.shape == ffmpeg.frames.shape == (0, 0, 0, 3) and ours.audio.dtype == np.float32
    assert abs(len(ours.audio) - len(ffmpeg.audio)) <= 2, (len(ours.audio), len(ffmpeg.audio))
    n = min(len(ours.audio), len(ffmpeg.audio))
    a, b = ours.audio[:n], ffmpeg.audio[:n]
    if name == "mono16k.wav":   # nothing to mix or resample: the same samples
        np.testing.assert_array_equal(a, b)
    else:                       # another resampler: the same signal, level and timing
        assert np.sqrt(np.mean((a - b)[200:-200] ** 2)) < 0.01 * np.sqrt(np.mean(b ** 2)) + 1e-3
    mel_a, mel_b = log_mel(ours.audio, 16000, AudioConfig()), log_mel(ffmpeg.audio, 16000, AudioConfig())
    assert mel_a.shape == mel_b.shape and mel_a.dtype == np.float16
    loud = mel_b > np.log(1e-3)  # bins with energy (the silent ones are log of ~0 and noisy)
    assert np.abs(mel_a.astype(np.float32) - mel_b)[loud].mean() < 0.1


def test_max_audio_s_bounds_what_is_read(sounds):
    _, decoded = decode(sounds["voice48k.flac"], True, max_audio_s=0.5)
    assert len(decoded.audio) == 8000


def write_list(folder: Path, rows: list[tuple[Path, str]]) -> Path:
    path = folder / "list.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "key"])
        writer.writerows([str(p), label, "train", p.stem] for p, label in rows)
    return path


def build_one(list_path: Path, out: Path, *overrides: str) -> tuple[dict, dict]:
    """Probe and build ONE shard in this process (the functions a Dask worker runs): manifest rows and
    samples by key."""
    cfg = load_config(BuildConfig, "build", None, ["face.device=cpu", *overrides],
                      {"media_list": str(list_path), "out": str(out), "splits": ["train"]})
    rows, _ = read_media_list(cfg.media_list, cfg.splits)
    (spec,) = plan_shards(rows["train"], "train", cfg)
    out.mkdir()
    manifest = {r["key"]: r for r in make_table(build_shard(spec, probe_shard(spec))).to_pylist()}
    tar = out / spec.tar_name
    samples = {} if not tar.exists() else {
        s["__key__"]: decode_sample(s) for s in wds.WebDataset(str(tar), shardshuffle=False)}
    return manifest, samples


def fer_faces(shared: Path, n: int) -> list[Path]:
    root = shared / "data" / "fer2013" / "validation"
    if not root.is_dir():
        pytest.skip(f"no FER2013 faces at {root}")
    return sorted(root.glob("*/*.jpg"))[:: 450][:n]


def test_in_process_build_gives_the_ffmpeg_builds_samples(tmp_path, shared, pictures, sounds):
    """The whole shard both ways: the same rows, keys, members, shapes and meta; faces and mels within
    tolerance."""
    faces = fer_faces(shared, 3)
    list_path = write_list(tmp_path, [(p, "joy") for p in faces] + [(pictures["photo.jpg"], "neutral"),
                                      (sounds["stereo44k.wav"], "anger"), (sounds["voice48k.flac"], "fear")])
    fast_rows, fast = build_one(list_path, tmp_path / "fast")
    slow_rows, slow = build_one(list_path, tmp_path / "slow", "decode.in_process=false")
    drop = ("shard_sha256", "sample_bytes", "duration_s", "speaker_box")      # the box: within tolerance below
    assert {k: {c: v for c, v in r.items() if c not in drop} for k, r in fast_rows.items()} == \
           {k: {c: v for c, v in r.items() if c not in drop} for k, r in slow_rows.items()}
    for key, row in fast_rows.items():
        assert (row["speaker_box"] is None) == (slow_rows[key]["speaker_box"] is None), key
        if row["speaker_box"] is not None:
            assert np.allclose(row["speaker_box"], slow_rows[key]["speaker_box"], atol=0.02), key
    assert all(r["status"] == "ok" for r in fast_rows.values()) and fast.keys() == slow.keys()
    for key, a in fast.items():
        b = slow[key]
        assert {k: v for k, v in a.meta.items() if k != "duration_s"} == \
               {k: v for k, v in b.meta.items() if k != "duration_s"}
        assert np.array_equal(a.facemask, b.facemask) and a.boxes.shape == b.boxes.shape
        assert np.allclose(a.boxes, b.boxes, atol=0.02)
        assert (a.mel is None) == (b.mel is None) and (a.faces is None) == (b.faces is None)
        if a.faces is not None:
            assert a.faces.shape == b.faces.shape and np.abs(a.faces.astype(int) - b.faces).mean() < 6
        if a.mel is not None:
            assert a.mel.shape == b.mel.shape


def test_whole_image_mode_crops_without_the_detector_and_rejects_what_is_no_face(tmp_path, shared):
    faces = fer_faces(shared, 4)
    blank, tiny, noise = tmp_path / "blank.png", tmp_path / "tiny.png", tmp_path / "noise.png"
    Image.new("L", (48, 48), 90).save(blank)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tiny)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(noise)
    list_path = write_list(tmp_path, [(p, "sadness") for p in faces] + [(blank, "joy"), (tiny, "joy"), (noise, "joy")])
    whole_rows, whole = build_one(list_path, tmp_path / "whole", "face.image_mode=whole")
    detect_rows, detect = build_one(list_path, tmp_path / "detect")

    assert {k: (r["status"], r["reason"], r["face_mode"]) for k, r in whole_rows.items() if not k.startswith("Public")} \
        == {"blank": ("rejected", "no_face", ""), "tiny": ("rejected", "no_face", ""), "noise": ("ok", "", "whole")}
    assert "blank" in whole_rows["blank"]["detail"] and "min_face_px" in whole_rows["tiny"]["detail"]
    assert {(r["status"], r["reason"]) for k, r in detect_rows.items() if not k.startswith("Public")} \
        == {("rejected", "no_face")}, "the detector finds no face in a blank, tiny or noise image"
    def coarse(crop: np.ndarray) -> np.ndarray:   # 14x14 means: the framing, not the pixels
        return np.asarray(Image.fromarray(crop).resize((14, 14), Image.Resampling.BOX), dtype=float)

    framing = []   # (whole-image crop vs the detector's aligned crop, the image merely resized vs that crop)
    for path in faces:
        a = whole[path.stem]
        assert whole_rows[path.stem]["face_mode"] == "whole" and a.meta["face_mode"] == "whole"
        assert a.meta["detector"] == "none" and a.facemask.tolist() == [1] and a.faces.shape == (1, 112, 112, 3)
        np.testing.assert_allclose(a.boxes[0], [0.30, 0.255, 0.70, 0.75, 1.0], atol=1e-3)  # on the 320 canvas
        if path.stem in detect:
            b = detect[path.stem]
            assert detect_rows[path.stem]["face_mode"] == "detect" and b.meta["face_mode"] == "detect"
            resized = np.asarray(Image.open(path).convert("RGB").resize((112, 112)))
            framing.append([np.abs(coarse(a.faces[0]) - coarse(b.faces[0])).mean(),
                            np.abs(coarse(resized) - coarse(b.faces[0])).mean()])
    assert len(framing) >= 3
    whole_vs_detect, resized_vs_detect = np.mean(framing, axis=0)
    assert whole_vs_detect < resized_vs_detect, "framed like the detector's aligned crops (as predict crops)"


@pytest.mark.unit
def test_list_only_settings_leave_melds_fingerprints_alone():
    meld = [{"key": "dia1_utt1", "source": "/x/dia1_utt1.mp4"}]
    listed = [{"key": "a", "source": "/x/a.jpg", "kind": "image"}]
    for override in ("face.image_mode=whole", "decode.in_process=false"):
        other = load_config(BuildConfig, "build", None, [override], {})
        assert fingerprint(meld, BuildConfig()) == fingerprint(meld, other)
        assert fingerprint(listed, BuildConfig()) != fingerprint(listed, other)


def test_what_pillow_and_soundfile_do_not_read_like_ffmpeg_goes_to_ffmpeg(tmp_path, media, pictures):
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=0.6",
                    str(tmp_path / "tone.mp3")], check=True)
    Image.open(pictures["palette.png"]).save(tmp_path / "still.gif")
    for path, kind in ((tmp_path / "tone.mp3", "audio"), (tmp_path / "still.gif", "video"),
                       (media / "single_face.mp4", "video")):
        fast, slow = probe(path, in_process=True), probe(path, in_process=False)
        # ffprobe's verdict either way (a one-frame GIF is a zero_duration video to it, as before)
        assert fast.reader == "ffmpeg" and fast == slow and fast.kind == kind, (path, fast)
