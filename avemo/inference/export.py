"""`avemo export`: a checkpoint -> ONNX (onnxruntime, any language) or TorchScript (C++ / mobile).

The graph is AVEmotionNet.forward in eval mode, with a second output: the per-frame face embeddings
(B, T, 128) that the logits are computed from. `avemo predict model.onnx` cuts the graph there so a
stream embeds each face once (pipeline: avemo/runtime.py); other users can ignore it.

    inputs:  faces (B, T, 3, 112, 112) uint8, face_mask (B, T) bool, mel (B, n_mels, F) float32, mel_mask (B, F) bool
    outputs: logits (B, 7) float32, face_embeddings (B, T, 128) float32      (B, T and F are dynamic)

Both files carry the checkpoint's configs and labels as JSON: ONNX metadata_props["avemo"], TorchScript
extra file "avemo.json".
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from avemo.core.paths import refuse_inputs_as_output
from avemo.model.net import AVEmotionNet
from avemo.core import storage

INPUTS = ["faces", "face_mask", "mel", "mel_mask"]
OUTPUTS = ["logits", "face_embeddings"]
DYNAMIC_AXES = {"faces": {0: "batch", 1: "frames"}, "face_mask": {0: "batch", 1: "frames"},
                "mel": {0: "batch", 2: "mel_frames"}, "mel_mask": {0: "batch", 1: "mel_frames"},
                "logits": {0: "batch"}, "face_embeddings": {0: "batch", 1: "frames"}}
OPSET = 17
META_KEY = "avemo"   # ONNX metadata_props key / TorchScript extra file stem holding model_meta() as JSON
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportNet(nn.Module):
    """forward(faces, face_mask, mel, mel_mask) -> (logits, face_embeddings); logits == AVEmotionNet.forward."""

    def __init__(self, net: AVEmotionNet):
        super().__init__()
        self.net = net.eval()

    def forward(self, faces, face_mask, mel, mel_mask):
        emb = self.net.embed_faces(faces)                                  # (B, T, 128)
        return self.net.forward_from_embeddings(emb, face_mask, mel, mel_mask), emb

    def embed(self, faces):                                                # (B, T, 3, 112, 112) -> (B, T, 128)
        return self.net.embed_faces(faces)

    def head(self, emb, face_mask, mel, mel_mask):                         # -> logits (B, 7)
        return self.net.forward_from_embeddings(emb, face_mask, mel, mel_mask)


def model_meta(ckpt: dict, source: str = "") -> dict:
    """What a runtime needs besides the weights: labels, input sizes, the configs the model was made with."""
    cfg = ckpt["config"]
    return {"labels": list(ckpt["labels"]), "label_map_version": ckpt["label_map_version"],
            "max_frames": cfg["data"]["max_frames"], "max_mel_frames": cfg["data"]["max_mel_frames"],
            "n_mels": cfg["model"]["n_mels"], "build": ckpt.get("build"), "train": cfg,
            "epoch": ckpt.get("epoch"), "checkpoint": source}


def check_model_meta(meta: object, path: str | Path) -> dict:
    """An exported file's avemo metadata, refused in one line unless it is what model_meta writes for THIS
    code's labels (it comes from a file: a wrong label list would rename the classes, a huge max_frames
    would allocate)."""
    from avemo.core.errors import CheckpointError
    from avemo.shards.labels import EMOTIONS, LABEL_MAP_VERSION
    ranges = {"max_frames": (1, 4096), "max_mel_frames": (1, 100_000), "n_mels": (8, 256)}
    problem = ""
    if not isinstance(meta, dict):
        problem = "it is not a JSON object"
    elif meta.get("labels") != list(EMOTIONS) or meta.get("label_map_version") != LABEL_MAP_VERSION:
        problem = f"its labels {str(meta.get('labels'))[:120]} are not this code's {list(EMOTIONS)}"
    elif meta.get("build") is not None and not isinstance(meta["build"], dict):
        problem = "its build settings are not an object"
    else:
        for key, (low, high) in ranges.items():
            if type(meta.get(key)) is not int or not low <= meta[key] <= high:
                problem = f"{key}={str(meta.get(key))[:40]} is not an integer in [{low}, {high}]"
                break
    if problem:
        raise CheckpointError(f"{path}: bad avemo metadata: {problem}")
    return meta  # type: ignore[return-value]  # checked above: a dict


def example_inputs(audio_rows: int, batch: int = 1, frames: int = 8, mel_frames: int = 256) -> tuple:
    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (batch, frames, 3, 112, 112), dtype=torch.uint8, generator=g)
    face_mask = torch.ones(batch, frames, dtype=torch.bool)
    mel = torch.randn(batch, audio_rows, mel_frames, generator=g)   # the mel bins (and pitch rows)
    mel_mask = torch.ones(batch, mel_frames, dtype=torch.bool)
    return faces, face_mask, mel, mel_mask


def to_onnx_bytes(net: AVEmotionNet, meta: dict) -> bytes:
    import onnx
    buf = io.BytesIO()
    with warnings.catch_warnings():   # the TorchScript-based exporter warns that LSTM batch sizes are traced
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportNet(net), example_inputs(net.cfg.audio_rows), buf,  # type: ignore[arg-type]
                          dynamo=False, opset_version=OPSET, input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=DYNAMIC_AXES)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    return proto.SerializeToString()


def to_torchscript_bytes(net: AVEmotionNet, meta: dict) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch 2.11 marks TorchScript deprecated; it still runs in C++ / mobile
        faces, face_mask, mel, mel_mask = example_inputs(net.cfg.audio_rows)
        emb = net.embed_faces(faces)
        # forward for C++ / mobile users; embed + head for `avemo predict model.torchscript.pt`, which
        # embeds each face crop once across overlapping windows (inference/runtime.py)
        traced = torch.jit.trace_module(ExportNet(net), {"forward": (faces, face_mask, mel, mel_mask),
                                                         "embed": (faces,), "head": (emb, face_mask, mel, mel_mask)},
                                        check_trace=False)
        torch.jit.save(traced, buf, _extra_files={f"{META_KEY}.json": json.dumps(meta)})
    return buf.getvalue()


WRITERS = {"onnx": to_onnx_bytes, "torchscript": to_torchscript_bytes}


def export(checkpoint: str | Path, fmt: str, out: str | Path | None = None) -> Path | str:
    """checkpoint and out: local paths or URLs (avemo.core.storage)."""
    from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
    if not out:   # beside the checkpoint; a URL keeps its "//" (Path would fold it)
        out = (str(checkpoint).rsplit(".", 1)[0] + FORMATS[fmt] if storage.is_url(checkpoint)
               else Path(checkpoint).with_suffix(FORMATS[fmt]))
    out = out if storage.is_url(out) else Path(out)
    if not storage.is_url(out) and not storage.is_url(checkpoint):   # before the work, nothing written
        refuse_inputs_as_output(out, "--out", {"the checkpoint": checkpoint})
    ckpt = load_checkpoint(checkpoint)
    net = model_from_checkpoint(ckpt, checkpoint)
    storage.write_bytes(out, WRITERS[fmt](net, model_meta(ckpt, str(checkpoint))))
    return out
