"""The shard sample format: round trip, and refusal of anything outside it."""
from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import webdataset as wds

from avemo.shards.format import UnsafeSampleError, decode_sample, encode_sample
from avemo.shards.labels import LABEL_MAP_VERSION


pytestmark = pytest.mark.unit   # the shard contract alone: no media, no weights

def _sample(n_frames=4, faces_at=(0, 2), mel=True):
    mask = np.zeros(n_frames, np.uint8)
    mask[list(faces_at)] = 1
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 112)
    crops = np.stack([np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], np.full((112, 112), 40.0 * i)), -1)
                      for i in range(len(faces_at))]).astype(np.uint8) if faces_at else None  # smooth, distinct
    boxes = np.zeros((n_frames, 5), np.float32)
    boxes[list(faces_at)] = [0.1, 0.2, 0.5, 0.7, 0.99]
    m = rng.normal(size=(64, 50)).astype(np.float16) if mel else None
    return encode_sample("dia3_utt1", {"label": 3, "emotion": "joy"}, mask, boxes, crops, m), crops, m


def test_round_trip():
    raw, crops, mel = _sample()
    s = decode_sample(raw)
    assert s.key == "dia3_utt1" and s.meta["label"] == 3 and s.meta["label_map_version"] == LABEL_MAP_VERSION
    assert s.meta["n_faces"] == 2 and s.meta["has_audio"] is True
    assert s.faces.shape == (2, 112, 112, 3)
    assert np.abs(s.faces.astype(int) - crops.astype(int)).mean() < 3  # JPEG: lossy but close, order kept
    np.testing.assert_array_equal(s.mel, mel)
    np.testing.assert_array_equal(s.facemask, [1, 0, 1, 0])


def test_pitch_round_trip_one_column_per_mel_frame():
    raw, _, mel = _sample()
    assert "pitch.npy" not in raw and decode_sample(raw).pitch is None      # builds without audio.pitch
    pitch = np.random.default_rng(1).normal(size=(2, mel.shape[1])).astype(np.float16)
    s = decode_sample(_with(raw, pitch_npy=pitch))
    np.testing.assert_array_equal(s.pitch, pitch)
    silent, _, _ = _sample(mel=False)
    with pytest.raises(UnsafeSampleError, match="without a .mel.npy"):
        decode_sample(_with(silent, pitch_npy=pitch))


def test_no_face_no_audio():
    raw, _, _ = _sample(faces_at=(), mel=False)
    assert "faces.jpg" not in raw and "mel.npy" not in raw
    s = decode_sample(raw)
    assert s.faces is None and s.mel is None and s.meta["has_audio"] is False


def test_unknown_extension_is_refused():
    raw, _, _ = _sample()
    raw["pyd"] = pickle.dumps({"x": 1})
    with pytest.raises(UnsafeSampleError, match="unknown member"):
        decode_sample(raw)


def test_pickled_npy_is_refused():
    raw, _, _ = _sample()
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    raw["boxes.npy"] = buf.getvalue()
    with pytest.raises(UnsafeSampleError, match="not a plain numpy array"):
        decode_sample(raw)


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", "", ".hidden"])
def test_bad_keys_are_refused(key):
    raw, _, _ = _sample()
    raw["__key__"] = key
    with pytest.raises(UnsafeSampleError, match="invalid sample key"):
        decode_sample(raw)


def test_other_label_map_is_refused():
    raw, _, _ = _sample()
    raw["json"] = raw["json"].replace(LABEL_MAP_VERSION.encode(), b"someone-elses-map")
    with pytest.raises(UnsafeSampleError, match="label map"):
        decode_sample(raw)


def test_empty_npy_member_in_a_real_tar_is_refused(tmp_path):
    """A zero-byte .boxes.npy in a shard (np.load raises EOFError on it) is an UnsafeSampleError too."""
    raw, _, _ = _sample()
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in raw.items():
            if not name.startswith("__"):
                data = b"" if name == "boxes.npy" else data
                info = tarfile.TarInfo(f"{raw['__key__']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (sample,) = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert sample["boxes.npy"] == b"" and sample["facemask.npy"] == raw["facemask.npy"]
    with pytest.raises(UnsafeSampleError, match="boxes.npy is not a plain numpy array"):
        decode_sample(sample)


def _with(raw: dict, **members) -> dict:
    """raw with some members replaced: arrays are saved as .npy, dicts as the JSON record."""
    import json
    out = dict(raw)
    for name, value in members.items():
        name = name.replace("_", ".")
        if isinstance(value, dict):
            out[name] = json.dumps({**json.loads(raw["json"]), **value}).encode()
        else:
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            out[name] = buf.getvalue()
    return out


@pytest.mark.parametrize("members, message", [
    ({"json": {"label": 99}}, "label 99 is not an emotion id"),
    ({"json": {"label": -1}}, "label -1 is not an emotion id"),
    ({"json": {"label": "3"}}, "is not an emotion id"),
    ({"json": {"label": True}}, "is not an emotion id"),
    ({"mel_npy": np.full((64, 9), np.nan, np.float16)}, "mel holds non-finite values"),
    ({"mel_npy": np.full((64, 9), np.inf, np.float16)}, "mel holds non-finite values"),
    ({"mel_npy": np.zeros((80, 9), np.float16)}, "mel has 80 bins; its record says 64"),
    ({"mel_npy": np.zeros((1, 9), np.float16), "json": {"n_mels": 1}}, "mel has 1 bins"),
    ({"pitch_npy": np.zeros((2, 49), np.float16)}, "pitch.npy has shape"),          # one column short
    ({"pitch_npy": np.zeros((3, 50), np.float16)}, "pitch.npy has shape"),
    ({"pitch_npy": np.full((2, 50), np.nan, np.float16)}, "non-finite"),
    ({"pitch_npy": np.zeros((2, 50), np.float32)}, "dtype float32"),
    ({"facemask_npy": np.array([1, 0, 7, 0], np.uint8)}, "values other than 0 and 1"),
    ({"boxes_npy": np.full((4, 5), np.nan, np.float32)}, "boxes.npy holds non-finite values"),
])
def test_values_outside_the_contract_are_refused(members, message):
    raw, _, _ = _sample()
    raw = _with(raw, **{"json": {"n_mels": 64}}) if "json" not in members else raw
    with pytest.raises(UnsafeSampleError, match=message):
        decode_sample(_with(raw, **members))


def test_mel_of_another_bin_count_than_the_model_is_refused():
    raw, _, _ = _sample()
    assert decode_sample(raw, n_mels=64).mel.shape[0] == 64
    with pytest.raises(UnsafeSampleError, match="the model takes 80"):
        decode_sample(raw, n_mels=80)


def test_face_strip_of_another_size_is_refused():
    from PIL import Image
    raw, _, _ = _sample()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(UnsafeSampleError, match="50 pixels high, expected 112"):
        decode_sample({**raw, "faces.jpg": buf.getvalue()})
