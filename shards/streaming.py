"""Shards read straight from object storage, each verified against the manifest WHILE it streams.

Local shards are hashed once before an epoch (manifest.verify_shards). A bucket's shards are not downloaded
twice for that: the bytes the tar parser consumes are hashed as they arrive (plus the end-of-archive padding
it leaves unread), and the digest is compared when the shard's stream ends. Transient errors (connection
reset, 5xx, throttling) resume the stream at the byte offset already consumed (storage.ResumingReader), so a
retry never repeats or skips a sample.

A mismatch follows corrupt_shards:
  stop  samples flow as they stream; at the end of the bad shard the epoch stops with CorruptShardError.
        Nothing of that epoch reaches a checkpoint (they are written at epoch ends), nor an evaluate report.
  skip  a shard's samples are held in memory (its raw tar members: at most one shard, shards.max_mb, per
        loader worker) until its checksum is known, then released, or dropped whole with a warning: as
        locally, a corrupt shard contributes no sample at all.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, Iterator, Literal

from webdataset.tariterators import group_by_keys, tar_file_iterator

from avemo.core.storage import ResumingReader, StorageError
from avemo.shards.manifest import CorruptShardError

log = logging.getLogger("avemo.data")


def shard_samples(url: str, sha256: str, options: dict | None = None) -> Iterator[dict]:
    """The samples of one shard as it streams; raises CorruptShardError at its end if its bytes are not the
    manifest's (also when the tar itself is torn: the checksum, not the parser, says whether it was tampered)."""
    digest = hashlib.sha256()
    reader = ResumingReader(url, options, on_bytes=digest.update)
    try:
        error = None
        try:
            files = ({**f, "__url__": url} for f in tar_file_iterator(reader))
            yield from group_by_keys(files)
        except StorageError:
            raise
        except Exception as exc:   # a torn or tampered tar: let the checksum decide
            error = exc
        reader.read()   # the padding after the end-of-archive marker, which the parser leaves unread
        if digest.hexdigest() != sha256:
            raise CorruptShardError(f"shard {url} does not match its checksum in the manifest "
                                    f"(corrupt or modified; read {reader.offset} bytes)")
        if error is not None:
            raise error
    finally:
        reader.close()


def verified_samples(src: Iterable[dict], checksums: dict[str, str], policy: Literal["stop", "skip"] = "stop",
                     options: dict | None = None, hint: str = "") -> Iterator[dict]:
    """webdataset stage: shard dicts {"url": ...} -> samples, each shard verified as it streams."""
    for item in src:
        url = item["url"]
        samples = shard_samples(url, checksums[url], options)
        try:
            if policy == "stop":
                yield from samples
            else:
                yield from list(samples)   # released only once the shard's checksum matched
        except CorruptShardError as exc:
            if policy == "stop":
                raise CorruptShardError(f"{exc} ({hint})" if hint else str(exc)) from None
            log.warning("%s; skipping it", exc)
