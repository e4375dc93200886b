"""Export: ONNX and TorchScript give the checkpoint's probabilities on real shard inputs, at any batch,
frame and mel length; the inference path split at the face embeddings is exact."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from avemo.inference.export import OUTPUTS, export
from conftest import command

export_main = command("export")
from avemo.inference.runtime import OnnxRunner, TorchRunner, load_runner
from avemo.shards.labels import EMOTIONS
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.train.data import eval_loader, split_shards

ATOL = 1e-4   # float32 graph vs eager: measured ~1e-7 on these inputs


@pytest.fixture(scope="module")
def real_batch(built_shards):
    """8 real samples from the shards (generated clips and the real videos), as the trainer sees them."""
    urls = split_shards(built_shards, "train").urls
    batch = next(iter(eval_loader(urls, batch_size=8, workers=0, max_frames=8, max_mel=400)))
    assert batch["face_mask"].any() and (~batch["face_mask"]).any()      # faces present and missing
    return {k: batch[k] for k in ("faces", "face_mask", "mel", "mel_mask")}


@pytest.fixture(scope="module")
def net(tiny_checkpoint):
    return model_from_checkpoint(load_checkpoint(tiny_checkpoint))


def _probs(logits) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.asarray(logits)), -1).numpy()


def _variants(b: dict) -> list[dict]:
    """The batch as is, and a smaller batch with fewer frames and a shorter mel (dynamic axes)."""
    small = {"faces": b["faces"][:3, :5], "face_mask": b["face_mask"][:3, :5], "mel": b["mel"][:3, :, :192],
             "mel_mask": b["mel_mask"][:3, :192]}
    return [b, small]


def test_inference_path_equals_forward(net, real_batch):
    b = real_batch
    with torch.inference_mode():
        ref = net(b["faces"], b["face_mask"], b["mel"], b["mel_mask"])
        emb = net.embed_faces(b["faces"])
        emb[~b["face_mask"]] = 0                    # rows of frames without a face are never used
        split = net.forward_from_embeddings(emb, b["face_mask"], b["mel"], b["mel_mask"])
    assert torch.allclose(ref, split, atol=1e-6)


def test_onnx_parity_on_real_inputs(tiny_checkpoint, net, real_batch, tmp_path):
    path = export(tiny_checkpoint, "onnx", tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["avemo"])
    assert meta["labels"] == list(EMOTIONS) and meta["max_frames"] == 8 and meta["n_mels"] == 64
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["faces"] == ["batch", "frames", 3, 112, 112] and dims["mel"] == ["batch", 64, "mel_frames"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in _variants(real_batch):
        logits, emb = session.run(OUTPUTS, {k: v.numpy() for k, v in b.items()})
        with torch.inference_mode():
            ref = net(**b)
            ref_emb = net.embed_faces(b["faces"])
        assert logits.shape == (b["faces"].shape[0], 7) and emb.shape == (*b["faces"].shape[:2], 128)
        np.testing.assert_allclose(_probs(logits), _probs(ref), atol=ATOL)
        np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_parity_on_real_inputs(tiny_checkpoint, net, real_batch, tmp_path):
    path = export(tiny_checkpoint, "torchscript", tmp_path / "model.torchscript.pt")
    extra = {"avemo.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["avemo.json"])["labels"] == list(EMOTIONS)
    for b in _variants(real_batch):
        with torch.inference_mode():
            logits, _ = module(**b)
            ref = net(**b)
        np.testing.assert_allclose(_probs(logits), _probs(ref), atol=ATOL)


def test_onnx_runner_split_graph_matches_torch_runner(tiny_checkpoint, real_batch, tmp_path):
    """predict's onnxruntime path (graph cut at face_embeddings) == its PyTorch path."""
    path = export(tiny_checkpoint, "onnx", tmp_path / "model.onnx")
    onnx_runner, torch_runner = load_runner(path), load_runner(tiny_checkpoint)
    assert isinstance(onnx_runner, OnnxRunner) and isinstance(torch_runner, TorchRunner)
    b = real_batch
    crops = b["faces"][b["face_mask"]].permute(0, 2, 3, 1).numpy()          # (n, 112, 112, 3) real crops
    np.testing.assert_allclose(onnx_runner.embed(crops), torch_runner.embed(crops), atol=1e-4)
    emb = np.zeros((*b["face_mask"].shape, 128), dtype=np.float32)
    emb[b["face_mask"].numpy()] = torch_runner.embed(crops)
    args = (emb, b["face_mask"].numpy(), b["mel"].numpy(), b["mel_mask"].numpy())
    np.testing.assert_allclose(_probs(onnx_runner.logits(*args)), _probs(torch_runner.logits(*args)), atol=ATOL)
    with torch.inference_mode():
        ref = model_from_checkpoint(load_checkpoint(tiny_checkpoint))(**b)
    np.testing.assert_allclose(_probs(torch_runner.logits(*args)), _probs(ref), atol=1e-5)
    in_memory = load_runner(tiny_checkpoint, "onnx")                  # predict best.pt runtime=onnx
    assert isinstance(in_memory, OnnxRunner)
    np.testing.assert_allclose(_probs(in_memory.logits(*args)), _probs(ref), atol=ATOL)


def test_export_cli_and_bad_checkpoint(tiny_checkpoint, tmp_path, capsys):
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1_000_000
    assert not list(tmp_path.glob(".*tmp*"))                         # written atomically, no temporaries left
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "avemo", "export", "--checkpoint", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot read checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 definitely not protobuf \xff\xff")
    proc = subprocess.run([sys.executable, "-m", "avemo", "predict", "clip.mp4", "--checkpoint", str(junk)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a readable ONNX file" in proc.stderr and "Traceback" not in proc.stderr


def _exported(path, tmp_path):
    """`path` exported to ONNX and TorchScript -> check(batch, ref): both give eager's probabilities `ref`."""
    session = ort.InferenceSession(str(export(path, "onnx", tmp_path / f"{path.stem}.onnx")),
                                   providers=["CPUExecutionProvider"])
    module = torch.jit.load(str(export(path, "torchscript", tmp_path / f"{path.stem}.torchscript.pt")))

    def check(batch: dict, ref) -> None:
        logits, _ = session.run(OUTPUTS, {k: v.numpy() for k, v in batch.items()})
        with torch.inference_mode():
            scripted, _ = module(**batch)
        np.testing.assert_allclose(_probs(logits), _probs(ref), atol=ATOL)
        np.testing.assert_allclose(_probs(scripted), _probs(ref), atol=ATOL)
    return check


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_late_fused_voice_classifier_is_exported_with_the_network(tiny_checkpoint, real_batch, tmp_path):
    """model.voice_stats: its vote is part of the exported graphs (ONNX and TorchScript equal eager)."""
    from avemo.model.checkpoint import save_checkpoint
    from avemo.model.net import AVEmotionNet, ModelConfig
    from avemo.core.config import config_from_dict
    ckpt = load_checkpoint(tiny_checkpoint)
    config = dict(ckpt["config"], model=dict(ckpt["config"]["model"], voice_stats=1.0))
    net = AVEmotionNet(config_from_dict(ModelConfig, dict(config["model"], face_weights="")))
    net.load_state_dict(ckpt["model"], strict=False)
    g = torch.Generator().manual_seed(3)
    net.voice_stats.weight.copy_(torch.randn(net.voice_stats.weight.shape, generator=g))   # a fitted one
    net.voice_stats.std.mul_(3.0)
    path = tmp_path / "voted.pt"
    save_checkpoint(path, **dict(ckpt, model=net.state_dict(), config=config))
    voted, plain = model_from_checkpoint(load_checkpoint(path)), model_from_checkpoint(ckpt)
    exported_agree = _exported(path, tmp_path)
    for b in _variants(real_batch):
        with torch.inference_mode():
            ref, without = voted(**b), plain(**b)
        assert np.abs(_probs(ref) - _probs(without)).max() > 0.01               # the vote moves the answer
        exported_agree(b, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_mirrored_faces_are_exported_with_the_network(tiny_checkpoint, real_batch, tmp_path):
    """model.face_flip_tta: the exported graphs read each face as is and mirrored, as eager does in use."""
    from avemo.model.checkpoint import save_checkpoint
    ckpt = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "flip.pt"
    save_checkpoint(path, **dict(ckpt, config=dict(ckpt["config"], model=dict(ckpt["config"]["model"],
                                                                                 face_flip_tta=True))))
    flip, plain = model_from_checkpoint(load_checkpoint(path)), model_from_checkpoint(ckpt)
    exported_agree = _exported(path, tmp_path)
    for b in _variants(real_batch):
        with torch.inference_mode():
            ref, without = flip(**b), plain(**b)
            mirrored = flip(**dict(b, faces=b["faces"].flip(-1)))
        assert np.abs(_probs(ref) - _probs(without)).max() > 2e-4   # the mirror moves the answer (the tiny model
        #                                                             is near-uniform: float noise is ~1e-7)
        np.testing.assert_allclose(_probs(mirrored), _probs(ref), atol=ATOL)   # and a mirrored face reads alike
        exported_agree(b, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_warped_voices_are_exported_with_the_network(tiny_checkpoint, real_batch, tmp_path):
    """model.voice_warp_tta: the exported graphs read each voice as is and warped, as eager does in use."""
    from avemo.model.checkpoint import save_checkpoint
    ckpt = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "warp.pt"
    save_checkpoint(path, **dict(ckpt, config=dict(ckpt["config"], model=dict(ckpt["config"]["model"],
                                                                                 voice_warp_tta=[0.9, 1.1]))))
    warp, plain = model_from_checkpoint(load_checkpoint(path)), model_from_checkpoint(ckpt)
    exported_agree = _exported(path, tmp_path)
    moved = 0.0
    for b in _variants(real_batch):
        with torch.inference_mode():
            ref, without = warp(**b), plain(**b)
        moved = max(moved, float(np.abs(_probs(ref) - _probs(without)).max()))
        exported_agree(b, ref)
    assert moved > 2e-4   # the warps move the answer of clips with a voice (the tiny model is near-uniform)
