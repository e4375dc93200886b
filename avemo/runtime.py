"""Model runtimes for `avemo predict`: the same two calls on PyTorch or onnxruntime.

    embed(crops (n, 112, 112, 3) uint8) -> (n, 128) float32          face CNN, once per new face crop
    logits(emb (B, T, 128), face_mask (B, T), mel (B, n_mels, F), mel_mask (B, F)) -> (B, 7)

Splitting at the per-frame embeddings (AVEmotionNet.embed_faces / forward_from_embeddings, the
`face_embeddings` output of an exported graph) lets a sliding window reuse the embeddings of frames it
shares with the previous window: with a 2 s window and a 0.5 s hop each face is embedded once, not 4x.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from avemo.config import ConfigError
from avemo.export import META_KEY, model_meta, to_onnx_bytes


class TorchRunner:
    name = "torch"

    def __init__(self, net, meta: dict):
        self.net, self.meta = net.eval(), meta

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        faces = torch.from_numpy(crops).permute(0, 3, 1, 2).unsqueeze(0)     # (1, n, 3, 112, 112)
        return self.net.embed_faces(faces)[0].numpy()

    @torch.inference_mode()
    def logits(self, emb, face_mask, mel, mel_mask) -> np.ndarray:
        return self.net.forward_from_embeddings(torch.from_numpy(emb), torch.from_numpy(face_mask),
                                                torch.from_numpy(mel), torch.from_numpy(mel_mask)).numpy()


class OnnxRunner:
    """An exported graph cut in two at `face_embeddings` (onnx.utils.Extractor), one session per part."""
    name = "onnx"

    def __init__(self, model_bytes: bytes, threads: int):
        import onnx
        import onnxruntime as ort
        from onnx.utils import Extractor
        proto = onnx.load_from_string(model_bytes)
        props = {p.key: p.value for p in proto.metadata_props}
        if META_KEY not in props:
            raise ConfigError("this ONNX file was not written by `avemo export` (no avemo metadata)")
        self.meta = json.loads(props[META_KEY])
        parts = Extractor(proto)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = lambda p: ort.InferenceSession(p.SerializeToString(), options,  # noqa: E731
                                                 providers=["CPUExecutionProvider"])
        self.face = session(parts.extract_model(["faces"], ["face_embeddings"]))
        self.head = session(parts.extract_model(["face_embeddings", "face_mask", "mel", "mel_mask"], ["logits"]))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        faces = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))[None]      # (1, n, 3, 112, 112)
        return self.face.run(None, {"faces": faces})[0][0]

    def logits(self, emb, face_mask, mel, mel_mask) -> np.ndarray:
        return self.head.run(None, {"face_embeddings": emb, "face_mask": face_mask, "mel": mel,
                                    "mel_mask": mel_mask})[0]


def load_runner(path: str | Path, runtime: str = "auto", threads: int = 1):
    """A checkpoint (.pt) runs on PyTorch, or on onnxruntime after an in-memory export (runtime=onnx);
    an exported .onnx file runs on onnxruntime."""
    path = Path(path)
    torch.set_num_threads(threads)
    if path.suffix == ".onnx":
        if runtime == "torch":
            raise ConfigError(f"{path} is an ONNX file: it runs with runtime=onnx (or auto)")
        if not path.is_file():
            raise FileNotFoundError(f"model {path} does not exist")
        return OnnxRunner(path.read_bytes(), threads)
    from train.checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(path)
    net, meta = model_from_checkpoint(ckpt), model_meta(ckpt, str(path))
    if runtime == "onnx":
        return OnnxRunner(to_onnx_bytes(net, meta), threads)
    return TorchRunner(net, meta)
