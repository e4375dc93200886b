"""Which files in build-shards' --out are ours: only those may ever be replaced or deleted.

A build marks its folder with MARKER before writing anything. A folder without it is ours only while it is
empty, or when it holds an older build (from before the marker existed), recognised by its content: a
manifest or a part that really is a build's table, not merely a file of that name. Any other non-empty
folder is refused in one line, so a user's `train-photos.tar` beside a mistyped --out survives. Inside our
folder, stale files are deleted only when their names are exactly the ones a build writes (OUR_SHARD /
OUR_PART), and leftover temporaries only when they are those of such a name (written_in_out / written_in_parts).
"""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from avemo.core.atomic import atomic_write_bytes
from avemo.core.errors import ConfigError
from avemo.pipeline.media_list import INVALID_SPLIT
from avemo.shards.manifest import BUILD_CONFIG_NAME, MANIFEST_NAME

MARKER = ".avemo-build"
OUR_SHARD = re.compile(r"^(train|dev|test)-\d{6}\.tar$")
OUR_PART = re.compile(r"^(train|dev|test)-\d{6}\.parquet$")
OUR_LABELS = re.compile(rf"^(train|dev|test|{INVALID_SPLIT})-labels\.parquet$")   # rows rejected before probing
MANIFEST_COLUMNS = {"key", "split", "status", "reason", "shard"}   # in every manifest and part ever written


def written_in_out(name: str) -> bool:
    """Whether OUT/name is a file a build writes (its shards, manifest, settings, marker)."""
    return bool(OUR_SHARD.match(name)) or name in (MANIFEST_NAME, BUILD_CONFIG_NAME, MARKER)


def written_in_parts(name: str) -> bool:
    """Whether OUT/parts/name is a file a build writes (a shard's part, a split's label rejections)."""
    return bool(OUR_PART.match(name) or OUR_LABELS.match(name))


def _is_build_table(path: Path) -> bool:
    """A parquet file with the manifest's columns (only its footer is read)."""
    try:
        return path.is_file() and MANIFEST_COLUMNS <= set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException):
        return False


def older_build(out: Path) -> bool:
    """A build from before the marker: its manifest, or one of its parts (a build killed before its manifest)."""
    parts = sorted(p for p in (out / "parts").glob("*.parquet") if written_in_parts(p.name))
    return any(_is_build_table(p) for p in [out / MANIFEST_NAME, *parts[:3]])


def claim_out(out: Path) -> None:
    """Refuse a non-empty --out that no build of ours wrote; mark it ours otherwise (before any write)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if (out / MARKER).is_file():
        return
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not older_build(out):
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
