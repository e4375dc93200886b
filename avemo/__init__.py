"""avemo: lightweight audio-visual emotion recognition (face + voice, MELD's 7 classes).

The public Python API, for notebooks and other tools (heavy modules load on first use, so `import avemo`
and `avemo --help` stay fast):

    import avemo
    avemo.build_shards(root="MELD", out="data/meld")                 # -> BuildSummary
    state = avemo.train(shards="data/meld", run="runs/a", overrides=["optim.epochs=5"])
    metrics = avemo.evaluate(shards="data/meld", checkpoint="runs/a/best.pt", split="test", out="runs/a/test")
    model = avemo.load_model("runs/a/best.pt")                       # .pt checkpoint or exported .onnx
    windows = avemo.predict("clip.mp4", model)                       # list of per-window dicts
"""
from __future__ import annotations

import sys
import types
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("avemo")
except PackageNotFoundError:          # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["__version__", "build_shards", "train", "evaluate", "load_model", "predict"]


class _CallablePackage(types.ModuleType):
    """`avemo.train` is both the training package (train/) and the API call `avemo.train(...)`: importing a
    subpackage binds its module to the parent's attribute, which would hide a function of the same name,
    so the package itself forwards calls to avemo.api."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(import_module("avemo.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


def _callable_package(name: str) -> None:
    sys.modules[name].__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    if name == "train":                       # the package, callable (see _CallablePackage)
        return import_module("avemo.train")
    if name in __all__:
        return getattr(import_module("avemo.api"), name)
    raise AttributeError(f"module 'avemo' has no attribute {name!r}")
