"""Output paths checked before any work: a folder we can write, and never one of the command's own inputs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from avemo.core.errors import ConfigError


def writable_dir(path: str | Path, flag: str) -> Path:
    """Create `path` (a folder) if needed and prove it writable; a file there or a read-only folder is a
    ConfigError naming the flag, raised before the command spends its time."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create the folder: {exc.strerror}") from None
    try:   # a real write: os.access says yes to root even on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".avemo-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not writable ({exc.strerror})") from None
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (through links, `..` and case-folding file systems)."""
    try:
        return os.path.samefile(a, b)
    except OSError:    # one of them does not exist: compare where they would be
        return Path(a).resolve() == Path(b).resolve()


def refuse_inputs_as_output(out: str | Path | None, flag: str, inputs: dict[str, str | Path | None]) -> None:
    """An output that is one of the inputs would be truncated by the write: refuse it in one line.
    inputs: {what it is (e.g. "the checkpoint"): path}."""
    if not out:
        return
    for what, path in inputs.items():
        if path and same_file(out, path):
            raise ConfigError(f"{flag} {out} is {what}: writing it would destroy it; choose another path")


def check_outputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Every given output (flag -> path) is neither an input nor another output: checked before any work."""
    given = {flag: path for flag, path in outputs.items() if path}
    for flag, path in given.items():
        others = {f"the path of {other}": p for other, p in given.items() if other != flag}
        refuse_inputs_as_output(path, flag, {**inputs, **others})


def local_inputs(texts: list[str]) -> dict[str, Path]:
    """{"the input X": path} for the files among command-line inputs, and the files of the folders among them."""
    out: dict[str, Path] = {}
    for text in texts:
        path = Path(text)
        try:
            files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path] if path.is_file() else []
        except OSError:
            continue
        out.update({f"the input {p}": p for p in files})
    return out
