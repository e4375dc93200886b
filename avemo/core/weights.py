"""Find pretrained weights: explicit path > $AVEMO_WEIGHTS_DIR > cache > sha256-verified download.

Files are always loaded with torch.load(weights_only=True).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from avemo.core.errors import WeightsError
from avemo.core.atomic import sha256_file


@dataclass(frozen=True)
class WeightsSpec:
    relpath: str          # path under a weights folder, e.g. retinaface/mobilenet0.25_Final.pth
    sha256: str
    url: str


LIGHT_ASD = "https://github.com/Junhua-Liao/Light-ASD/raw/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight"
WEIGHTS = {
    "mobilenet0.25": WeightsSpec(
        "retinaface/mobilenet0.25_Final.pth",
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth"),
    "resnet50": WeightsSpec(
        "retinaface/retinaface.pth", "",  # the retina-face package publishes no checksum
        "https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.pth"),
    "mobilefacenet": WeightsSpec(
        "mobilefacenet/mobilefacenet.pt",
        "90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4",
        "https://github.com/foamliu/MobileFaceNet/releases/download/v1.0/mobilefacenet.pt"),
    # Light-ASD active speaker detector (MIT), pinned to the authors' commit
    "light-asd-talkset": WeightsSpec(
        "light-asd/finetuning_TalkSet.model",
        "efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5",
        f"{LIGHT_ASD}/finetuning_TalkSet.model"),
    "light-asd-ava": WeightsSpec(
        "light-asd/pretrain_AVA_CVPR.model",
        "d44bc3ea7baa8e0946fa3921311714a630ed8b90a1928fab0dbe30d918909317",
        f"{LIGHT_ASD}/pretrain_AVA_CVPR.model"),
}




def cache_dir() -> Path:
    return Path(os.environ.get("AVEMO_CACHE", Path.home() / ".cache" / "avemo")) / "weights"


def resolve_weights(name: str, explicit: str = "", download: bool = True) -> Path:
    spec = WEIGHTS[name]
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path
    candidates = []
    if os.environ.get("AVEMO_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["AVEMO_WEIGHTS_DIR"]) / spec.relpath)
    candidates.append(cache_dir() / spec.relpath)
    for path in candidates:
        if path.is_file():
            return path
    if not download:
        raise WeightsError(f"no {name} weights: looked in {', '.join(map(str, candidates))}")
    target = cache_dir() / spec.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        torch.hub.download_url_to_file(spec.url, str(tmp), progress=False)
    except Exception as exc:  # no network, 404, ...: one clear line
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"no {name} weights found ({', '.join(map(str, candidates))}) and the download from "
            f"{spec.url} failed ({type(exc).__name__}: {exc}); set AVEMO_WEIGHTS_DIR or pass the file") from None
    if spec.sha256 and sha256_file(tmp) != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"downloaded {name} weights do not match sha256 {spec.sha256}")
    os.replace(tmp, target)
    return target


def unsafe_load_reason(exc: Exception) -> str:
    """The line of a weights_only load error that names what was refused ("... unsupported GLOBAL
    posix.system ..."), not torch's generic first line, which suggests retrying with weights_only=False."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "GLOBAL" in line), lines[0])[:300]


def declared_size_problem(path: str | Path | BinaryIO, slack: int = 1 << 20, size: int | None = None) -> str | None:
    """Why a torch zip file must not be loaded, judged from its central directory alone (nothing inflated):
    a member that unpacks to more than the file holds (torch.save stores members uncompressed, so a deflated
    1 MB file that would unpack to a 1 GiB tensor is a bomb). None: fine, or not a zip (the legacy format,
    whose reader is bounded by the file itself)."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    limit = (Path(path).stat().st_size if size is None else size) + slack  # type: ignore[arg-type]   # size: of an in-memory file
    if declared > limit:
        return f"its members unpack to {declared} bytes, more than the {limit - slack}-byte file holds"
    return None


def load_state_dict(path: Path) -> dict:
    problem = declared_size_problem(path)
    if problem:
        raise WeightsError(f"refusing weights {path}: {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot load weights {path} safely: {unsafe_load_reason(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
