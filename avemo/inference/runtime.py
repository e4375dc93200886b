"""Model runtimes for `avemo predict`: the same two calls on PyTorch or onnxruntime.

    embed(crops (n, 112, 112, 3) uint8) -> (n, 128) float32          face CNN, once per new face crop
    logits(emb (B, T, 128), face_mask (B, T), mel (B, n_mels, F), mel_mask (B, F)) -> (B, 7)

Splitting at the per-frame embeddings (AVEmotionNet.embed_faces / forward_from_embeddings, the
`face_embeddings` output of an exported graph) lets a sliding window reuse the embeddings of frames it
shares with the previous window: with a 2 s window and a 0.5 s hop each face is embedded once, not 4x.

read_model() only reads the file (an ONNX file without importing torch), so predict can start decoding
while torch, torchvision and the networks load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avemo.core import storage
from avemo.core.errors import CheckpointError
from avemo.core.config import ConfigError
from avemo.inference.export import META_KEY, check_model_meta



@dataclass
class ModelFile:
    path: Path | str                # a local path or a URL
    meta: dict                      # avemo.export.model_meta(): labels, input sizes, configs
    onnx: bytes | None = None       # an exported graph ...
    ckpt: dict | None = None        # ... or a training checkpoint ...
    torchscript: bool = False       # ... or an exported TorchScript archive (loaded by its runner)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with code/ and constants.pkl beside data.pkl (a checkpoint has neither)."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_model(path: str | Path) -> ModelFile:
    """A local path or a URL (s3://..., credentials from the environment: avemo.core.storage)."""
    if not storage.exists(path):
        raise CheckpointError(f"model {path} does not exist")
    path = path if storage.is_url(path) else storage.local(path)
    if str(path).endswith(".onnx"):
        import onnx
        data = storage.read_bytes(path)
        try:
            props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        except Exception as exc:   # protobuf's DecodeError and friends: not an ONNX file
            raise CheckpointError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
        if META_KEY not in props:
            raise ConfigError(f"{path} was not written by `avemo export` (no avemo metadata)")
        try:
            meta = json.loads(props[META_KEY])
        except ValueError:
            raise CheckpointError(f"{path}: bad avemo metadata: not JSON") from None
        return ModelFile(path, check_model_meta(meta, path), onnx=data)
    if is_torchscript(Path(path)):
        import zipfile
        with zipfile.ZipFile(path) as z:
            extra = [n for n in z.namelist() if n.endswith(f"/extra/{META_KEY}.json")]
            if not extra:
                raise CheckpointError(f"{path} is a TorchScript file not written by `avemo export` (no avemo metadata)")
            try:
                meta = json.loads(z.read(extra[0]))
            except ValueError:
                raise CheckpointError(f"{path}: bad avemo metadata: not JSON") from None
            return ModelFile(path, check_model_meta(meta, path), torchscript=True)
    from avemo.inference.export import model_meta
    from avemo.model.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    return ModelFile(path, model_meta(ckpt, str(path)), ckpt=ckpt)


class TorchRunner:
    name = "torch"

    def __init__(self, net, meta: dict):
        self.net, self.meta = net.eval(), meta

    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            faces = torch.from_numpy(crops).permute(0, 3, 1, 2).unsqueeze(0)     # (1, n, 3, 112, 112)
            return self.net.embed_faces(faces)[0].numpy()

    def logits(self, emb, face_mask, mel, mel_mask) -> np.ndarray:
        import torch
        with torch.inference_mode():
            return self.net.forward_from_embeddings(torch.from_numpy(emb), torch.from_numpy(face_mask),
                                                    torch.from_numpy(mel), torch.from_numpy(mel_mask)).numpy()


class TorchScriptRunner:
    """An `avemo export --format torchscript` file: its traced embed() and head() methods."""
    name = "torchscript"

    def __init__(self, path: Path, meta: dict):
        import warnings
        import torch
        with warnings.catch_warnings():    # torch 2.11 marks torch.jit deprecated; the archive still loads
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location="cpu")
        self.meta = meta

    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            return self.module.embed(torch.from_numpy(crops).permute(0, 3, 1, 2).unsqueeze(0))[0].numpy()

    def logits(self, emb, face_mask, mel, mel_mask) -> np.ndarray:
        import torch
        with torch.inference_mode():
            return self.module.head(torch.from_numpy(emb), torch.from_numpy(face_mask), torch.from_numpy(mel),
                                    torch.from_numpy(mel_mask)).numpy()


class OnnxRunner:
    """An exported graph cut in two at `face_embeddings` (onnx.utils.Extractor), one session per part."""
    name = "onnx"

    def __init__(self, model_bytes: bytes, meta: dict, threads: int):
        import onnx
        import onnxruntime as ort
        from onnx.utils import Extractor
        self.meta = meta
        parts = Extractor(onnx.load_from_string(model_bytes))
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


def make_runner(model: ModelFile, runtime: str = "auto", threads: int = 1):
    """A checkpoint runs on PyTorch, or on onnxruntime after an in-memory export (runtime=onnx, ~2 s
    more to start); an exported .onnx file runs on onnxruntime."""
    import torch
    torch.set_num_threads(threads)
    if model.onnx is not None:
        if runtime == "torch":
            raise ConfigError(f"{model.path} is an ONNX file: it runs with runtime=onnx (or auto)")
        return OnnxRunner(model.onnx, model.meta, threads)
    if model.torchscript:
        if runtime == "onnx":
            raise ConfigError(f"{model.path} is a TorchScript file: it runs with runtime=torch (or auto)")
        return TorchScriptRunner(Path(model.path), model.meta)
    from avemo.model.checkpoint import model_from_checkpoint
    assert model.ckpt is not None        # read_model gives a graph or a checkpoint
    net = model_from_checkpoint(model.ckpt, model.path)
    if runtime == "onnx":
        from avemo.inference.export import to_onnx_bytes
        return OnnxRunner(to_onnx_bytes(net, model.meta), model.meta, threads)
    return TorchRunner(net, model.meta)


def load_runner(path: str | Path, runtime: str = "auto", threads: int = 1):
    return make_runner(read_model(path), runtime, threads)
