"""model.pitch: the voice branch reads each mel frame's F0 and periodicity (shards built with audio.pitch=true):
the loader crops and stretches the track with its mel, the model's audio input carries it after the mel bins
through training, export and predict, and shards without it are refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import build_config, command
from avemo.model.config import PITCH_ROWS
from avemo.model.inputs import collate, to_tensors
from avemo.model.net import AudioEncoder, AVEmotionNet, ModelConfig
from avemo.shards.format import UnsafeSampleError, encode_sample
from avemo.train.augment import augment_audio
from avemo.train.config import AugmentConfig


def _audio_batch(seed: int = 0, width: int = 128):
    """Two clips with audio (120 and 75 frames) padded to `width`: 64 mel rows, then log2 F0 and periodicity."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(2, 64 + PITCH_ROWS, width, generator=g) * 3 - 5
    mel[:, 64] = torch.rand(2, width, generator=g) - 0.5                     # log2(F0 / 200 Hz)
    mel[:, 65] = torch.rand(2, width, generator=g)                           # periodicity
    mask = torch.zeros(2, width, dtype=torch.bool)
    mask[0, :120], mask[1, :75] = True, True
    return mel, mask


@pytest.mark.unit
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_the_pitch_track_moves_the_voice_embedding_and_padding_does_not(path):
    torch.manual_seed(0)
    enc = AudioEncoder(ModelConfig(pitch=True, mel_norm="utterance")).eval()
    run = (lambda *a: enc(*a)) if path == "sparse" else (lambda *a: enc.encode(*a))
    mel, mask = _audio_batch()
    with torch.no_grad():
        base = run(mel, mask)
        wider = torch.zeros(3, mel.shape[1], 256)                 # more padding, junk in it, a clip without audio
        wider[:2, :, :128] = mel
        wider[0, :, 120:] = 40.0
        wide_mask = torch.zeros(3, 256, dtype=torch.bool)
        wide_mask[:2, :128] = mask
        torch.testing.assert_close(run(wider, wide_mask)[:2], base, atol=1e-5, rtol=1e-4)
        higher = mel.clone()
        higher[:, 64] += 1.0                                      # the same voice an octave up
        moved = (run(higher, mask) - base).abs().amax(1)
    assert (moved > 1e-3).all()


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_eager_traced_and_onnx_agree_with_pitch():
    import onnxruntime as ort
    from avemo.inference.export import ExportNet, OUTPUTS, to_onnx_bytes
    torch.manual_seed(0)
    net = AVEmotionNet(ModelConfig(pitch=True, face_trainable="none", mel_norm="utterance")).eval()
    mel, mel_mask = _audio_batch(1, 192)
    faces = torch.randint(0, 255, (2, 3, 3, 112, 112), dtype=torch.uint8)
    face_mask = torch.tensor([[True, False, True], [False] * 3])
    inputs = (faces, face_mask, mel, mel_mask)
    with torch.no_grad():
        eager = net(*inputs)
        traced = torch.jit.trace(ExportNet(net), inputs, check_trace=False)(*inputs)[0]
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-4)
    session = ort.InferenceSession(to_onnx_bytes(net, {"labels": []}), providers=["CPUExecutionProvider"])
    logits, _ = session.run(OUTPUTS, dict(zip(["faces", "face_mask", "mel", "mel_mask"], (t.numpy() for t in inputs))))
    np.testing.assert_allclose(logits, eager.numpy(), atol=1e-4, rtol=1e-4)


def _raw(frames: int = 500, pitch: bool = True) -> dict:
    """A sample whose every mel row and F0 row hold the frame's index: alignment is visible after any crop."""
    ramp = np.arange(frames, dtype=np.float16)
    mel = np.tile(ramp / 100, (64, 1)).astype(np.float16)
    track = np.stack([ramp / 100, np.full(frames, 0.9)]).astype(np.float16) if pitch else None
    return encode_sample("dia1_utt0", {"label": 3, "n_mels": 64}, np.zeros(2, np.uint8), np.zeros((2, 5)),
                         None, mel, pitch=track)


@pytest.mark.unit
def test_the_track_is_cropped_and_stretched_with_its_mel_and_batched_after_the_bins():
    torch.manual_seed(0)
    s = to_tensors(_raw(), max_frames=2, max_mel=300, random_crop=True, n_mels=64, pitch=True)
    assert s["mel"].shape == (64, 300) and s["pitch"].shape == (2, 300)
    torch.testing.assert_close(s["pitch"][0], s["mel"][0])                     # the same frames
    assert float(s["mel"][0, 0]) > 0                                           # a crop away from the start
    aug = AugmentConfig(speed=0.2, gain_db=6.0, noise_p=0.0, freq_masks=0, time_masks=0)
    torch.manual_seed(3)
    mel, pitch = augment_audio(s["mel"], s["pitch"], aug)
    assert pitch.shape == s["pitch"].shape and not torch.equal(pitch[0], s["pitch"][0])   # stretched
    # the stretch moved both alike; the gain moved the mel only (its rows stay equal to each other)
    offset = mel[0] - pitch[0]
    torch.testing.assert_close(offset, torch.full_like(offset, float(offset[0])), atol=2e-2, rtol=0)
    assert torch.allclose(pitch[1], torch.tensor(0.9, dtype=pitch.dtype), atol=1e-3)   # periodicity untouched
    batch = collate([s, dict(s, mel=s["mel"][:, :100], pitch=s["pitch"][:, :100])])
    assert batch["mel"].shape == (2, 64 + PITCH_ROWS, 320)
    torch.testing.assert_close(batch["mel"][1, 64, :100], s["pitch"][0, :100])
    with pytest.raises(UnsafeSampleError, match="rebuild the shards with audio.pitch=true"):
        to_tensors(_raw(pitch=False), max_frames=2, max_mel=300, random_crop=False, n_mels=64, pitch=True)
    plain = to_tensors(_raw(pitch=False), max_frames=2, max_mel=300, random_crop=False, n_mels=64)
    assert "pitch" not in plain and plain["mel"].shape == (64, 300)


@pytest.fixture(scope="module")
def pitch_shards(tmp_path_factory, mini_meld):
    from avemo.pipeline.build import run_build
    out = tmp_path_factory.mktemp("pitch_shards")
    assert run_build(build_config(mini_meld, out, "audio.pitch=true")).shards_failed == 0
    return out


def test_train_evaluate_export_and_predict_with_pitch(pitch_shards, built_shards, tmp_path, media, capsys):
    from tiny_model import TINY_TRAIN
    run = tmp_path / "run"
    overrides = [*TINY_TRAIN, "model.pitch=true"]
    assert command("train")(["--shards", str(built_shards), "--run", str(tmp_path / "no"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "rebuild it with audio.pitch=true" in err[-1] and "Traceback" not in "\n".join(err)
    assert command("train")(["--shards", str(pitch_shards), "--run", str(run), *overrides]) == 0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["model"]["pitch"] is True and "audio.prosody.0.weight" in ckpt["model"]
    assert command("evaluate")(["--checkpoint", str(run / "last.pt"), "--shards", str(pitch_shards),
                                "--split", "dev", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    capsys.readouterr()
    assert command("evaluate")(["--checkpoint", str(run / "last.pt"), "--shards", str(built_shards),   # no track
                                "--split", "dev", "--out", str(tmp_path / "eval_plain")]) == 2
    assert "rebuild it with audio.pitch=true" in capsys.readouterr().err.strip().splitlines()[-1]
    assert metrics["n"] > 0 and "audio_only" in metrics["ablation"], metrics
    assert command("export")(["--checkpoint", str(run / "last.pt"), "--format", "onnx",
                              "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    lines = {}
    for model in (run / "last.pt", tmp_path / "m.onnx"):
        out = tmp_path / f"{model.suffix}.jsonl"
        assert command("predict")([str(media / "single_face.mp4"), "--checkpoint", str(model), "--out", str(out)]) == 0
        lines[model.suffix] = [json.loads(line) for line in out.read_text().splitlines()]
    torch_lines, onnx_lines = lines[".pt"], lines[".onnx"]
    assert torch_lines and all("audio" in r["modalities"] for r in torch_lines)
    for a, b in zip(torch_lines, onnx_lines):                 # the same pitch rows reach both runtimes
        assert a["label"] == b["label"]
        assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) < 1e-3
