"""Checkpoints: plain tensors, numbers and strings only, written atomically, read with weights_only=True."""
from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from avemo.core.errors import CheckpointError
from avemo.core.config import config_from_dict
from avemo.model.net import AVEmotionNet, ModelConfig
from avemo.core.weights import unsafe_load_reason
from avemo.core import storage
from avemo.shards.labels import EMOTIONS, LABEL_MAP_VERSION




def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_failure(path: Path, exc: Exception) -> str:
    """Three different problems, three different lines: pickled code refused (weights_only), a TorchScript
    export where a training checkpoint is needed, and a file that is no torch checkpoint at all."""
    import zipfile
    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text:
        return f"cannot read checkpoint {path} safely: {unsafe_load_reason(exc)}"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") for n in z.namelist()):
                return (f"{path} is a TorchScript export (avemo export), not a training checkpoint: `avemo predict` "
                        "runs it; train, evaluate and export need RUN/best.pt or RUN/last.pt")
    return (f"cannot read checkpoint {path}: not a torch checkpoint (truncated, corrupt or another kind of file; "
            f"{type(exc).__name__})")


def save_checkpoint(path: str | Path, **payload) -> None:
    payload.setdefault("label_map_version", LABEL_MAP_VERSION)
    payload.setdefault("labels", list(EMOTIONS))
    try:
        with storage.atomic_open(path) as fh:
            torch.save(payload, fh)
    except RuntimeError as exc:
        # Ctrl-C inside torch.save: its zip writer then fails on exit and would hide the interrupt
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        raise


def load_checkpoint(path: str | Path, options: dict | None = None) -> dict:
    """From a local path or a URL (storage options from the config; credentials from the environment)."""
    if not storage.exists(path, options):
        raise CheckpointError(f"checkpoint {path} does not exist")
    source = io.BytesIO(storage.read_bytes(path, options)) if storage.is_url(path) else storage.local(path)
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(load_failure(path, exc)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an avemo checkpoint")
    if ckpt.get("label_map_version") != LABEL_MAP_VERSION:
        raise CheckpointError(f"{path} uses label map {ckpt.get('label_map_version')!r}, "
                              f"this code uses {LABEL_MAP_VERSION!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> AVEmotionNet:
    model_cfg = dict(ckpt["config"]["model"], face_weights="")  # weights come from the checkpoint
    model = AVEmotionNet(config_from_dict(ModelConfig, model_cfg))
    model.load_state_dict(ckpt["model"])
    return model.eval()
