"""Which files in build-shards' --out are ours: only those may ever be replaced or deleted.

A build marks its folder with MARKER before writing anything. A folder without it is ours only while it is
empty, or when it holds an older build (a manifest or parts/, from before the marker existed); any other
non-empty folder is refused in one line, so a user's `train-photos.tar` beside a mistyped --out survives.
Inside our folder, stale files are deleted only when their names are exactly the ones a build writes
(OUR_SHARD / OUR_PART; temporaries: avemo.core.atomic.TEMP_RE).
"""
from __future__ import annotations

import re
from pathlib import Path

from avemo.core.atomic import atomic_write_bytes
from avemo.core.errors import ConfigError

MARKER = ".avemo-build"
OUR_SHARD = re.compile(r"^(train|dev|test)-\d{6}\.tar$")
OUR_PART = re.compile(r"^(train|dev|test)-\d{6}\.parquet$")


def claim_out(out: Path, legacy_names=("manifest.parquet", "parts", "build_config.json")) -> None:
    """Refuse a non-empty --out that no build of ours wrote; mark it ours otherwise (before any write)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if (out / MARKER).is_file():
        return
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not any(name in entries for name in legacy_names):
        raise ConfigError(f"--out {out} is not empty and was not written by build-shards (it holds "
                          f"{entries[0][:60]!r}{' and more' if len(entries) > 1 else ''}); use a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    atomic_write_bytes(out / MARKER, b"avemo build-shards output: files named like train-000000.tar, "
                                     b"parts/*.parquet, manifest.parquet and build_config.json are replaced "
                                     b"or removed by later builds\n")


def ours(path: Path) -> bool:
    """Whether a shard or part file name is one a build writes (stale ones of ours may be deleted)."""
    return bool((OUR_PART if path.suffix == ".parquet" else OUR_SHARD).match(path.name))
