"""Crash-safe file writes: write a hidden temporary beside the target, fsync, rename, fsync the folder.

A reader (or a rerun after SIGKILL) sees either the old file or the complete new one, never a torn one.
Temporaries are named `.{name}.tmp-*` so `clean_temporaries` can remove leftovers of a killed run: only those
of the names the caller writes, as a folder may hold a user's own `.draft.tmp-1`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TMP_MARK = ".tmp-"
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-\d+(-[0-9a-f]{8})?$")   # .NAME.tmp-PID-RANDOM (weights: .NAME.tmp-PID)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def clean_temporaries(folder: str | Path, ours: Callable[[str], bool]) -> list[Path]:
    """Remove leftovers of killed writers: names exactly like atomic_open's (TEMP_RE; a user's `.vimrc.tmp-keep`
    is not one) whose target name `ours` accepts (a user's `.draft.tmp-1` is not a temporary of ours);
    returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_MARK}*"):
        match = TEMP_RE.match(tmp.name)
        if match is None or not ours(match["name"]) or not tmp.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def append_line(fd: int, data: bytes) -> None:
    """Append one whole line to a log opened with os.O_APPEND, or nothing: a write cut short (ENOSPC) is
    truncated away before the error goes up, so a full disk never leaves half a JSON line."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.ftruncate(fd, start)
        raise
