"""Checkpoints, the one file format of a trained model: plain tensors, numbers and strings only, written
atomically, read with weights_only=True. Training writes them; training (resume, --init-from), evaluation,
predict and export read them back through load_checkpoint + model_from_checkpoint."""
from __future__ import annotations

import errno
import io
from pathlib import Path

import torch

from avemo.core.errors import CheckpointError, ConfigError
from avemo.core.config import config_from_dict
from avemo.model.net import AVEmotionNet, ModelConfig
from avemo.core import storage
from avemo.core.weights import declared_size_problem, unsafe_load_reason
from avemo.shards.labels import EMOTIONS, LABEL_MAP_VERSION


def load_failure(path: str | Path, exc: Exception) -> str:
    """Three different problems, three different lines: pickled code refused (weights_only), a TorchScript
    export where a training checkpoint is needed, and a file that is no torch checkpoint at all."""
    import zipfile
    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text:
        return f"cannot read checkpoint {path} safely: {unsafe_load_reason(exc)}"
    if not storage.is_url(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") for n in z.namelist()):
                return (f"{path} is a TorchScript export (avemo export), not a training checkpoint: `avemo predict` "
                        "runs it; train, evaluate and export need RUN/best.pt or RUN/last.pt")
    return (f"cannot read checkpoint {path}: not a torch checkpoint (truncated, corrupt or another kind of file; "
            f"{type(exc).__name__})")


def save_checkpoint(path: str | Path, **payload) -> None:
    bad = [k for part in ("model", "train_model") for k, v in (payload.get(part) or {}).items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:   # the last guard against saving a silently broken model (avemo.train.loop.check_epoch is the first)
        raise CheckpointError(f"refusing to save {path}: non-finite weights in {', '.join(bad[:3])}")
    payload.setdefault("label_map_version", LABEL_MAP_VERSION)
    payload.setdefault("labels", list(EMOTIONS))
    try:
        with storage.atomic_open(path) as fh:   # a failed save removes its temporary: the old file stays whole
            torch.save(payload, fh)
    except RuntimeError as exc:
        # Ctrl-C inside torch.save: its zip writer then fails on exit and would hide the interrupt
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        cause = disk_error(exc)
        if cause is None:
            raise
        # torch's zip writer turns ENOSPC into a second error while closing: report the disk, in one line
        raise OSError(cause.errno, cause.strerror, str(path)) from None
    except OSError as exc:
        cause = disk_error(exc)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from None


def disk_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT/EROFS OSError in an exception's chain (cause or context), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def load_checkpoint(path: str | Path, options: dict | None = None) -> dict:
    """From a local path or a URL (storage options from the config; credentials from the environment)."""
    if not storage.exists(path, options):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if storage.is_url(path):
        data = storage.read_bytes(path, options)
        source: io.BytesIO | Path = io.BytesIO(data)
        problem = declared_size_problem(io.BytesIO(data), size=len(data))
    else:
        source = storage.local(path)
        problem = declared_size_problem(source)
    if problem:
        raise CheckpointError(f"refusing checkpoint {path}: {problem}")
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(load_failure(path, exc)) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is not an avemo checkpoint (no model weights or config)")
    missing = [s for s in ("model", "data") if not isinstance(ckpt["config"].get(s), dict)]
    if missing:
        raise CheckpointError(f"{path} is not a complete avemo checkpoint: its config lacks {', '.join(missing)}")
    if ckpt.get("label_map_version") != LABEL_MAP_VERSION:
        raise CheckpointError(f"{path} uses label map {str(ckpt.get('label_map_version'))[:80]!r}, "
                              f"this code uses {LABEL_MAP_VERSION!r}")
    # the one place every command (train --resume, evaluate, predict, export) reads a checkpoint: a label list
    # other than the code's would rename the classes in some outputs and not others, so it is refused
    if list(ckpt.get("labels", EMOTIONS)) != list(EMOTIONS):
        raise CheckpointError(f"{path} has the labels {str(ckpt.get('labels'))[:120]}, this code has "
                              f"{list(EMOTIONS)}; rebuild or retrain with this code")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> AVEmotionNet:
    """The model a checkpoint describes, its weights loaded; weights that do not fit their own config (another
    model's, a section missing) are one CheckpointError line. Every command calls it before its work."""
    try:
        model_cfg = dict(ckpt["config"]["model"], face_weights="")  # weights come from the checkpoint
        model = AVEmotionNet(config_from_dict(ModelConfig, model_cfg))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, ConfigError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes: {first[:200]}") from None
    return model.eval()
