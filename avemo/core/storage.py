"""One storage layer for shards and checkpoints: a local path or any fsspec URL (s3://, gs://, az://, memory://).

Local paths (and file:// URLs) keep the crash-safe local code of avemo.core.atomic: temp file, fsync, rename.
An object store has no rename, but it makes an object visible only once its upload is complete: a single
PUT, or a multipart upload only when CompleteMultipartUpload is sent. So `atomic_open` on a URL writes a
local temporary file and uploads it with ONE `put_file` at the end (s3fs: one PUT below its 5 MiB-ish
threshold, else a multipart upload completed last): a reader never sees a partial object, and a killed
writer leaves nothing visible (at most an incomplete multipart upload, which a bucket lifecycle rule
`AbortIncompleteMultipartUpload` reclaims). A temporary object plus server-side copy would double the bytes.

Credentials and endpoints come the ecosystem's way (AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws/*,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*); `storage_options` in a config passes non-secret
filesystem arguments (endpoint_url, anon, client_kwargs, ...) and refuses secrets, which would otherwise be
copied into config.yaml and every checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

from avemo.core import atomic
from avemo.core.errors import ConfigError, DataError

log = logging.getLogger("avemo.storage")
T = TypeVar("T")
SECRET_KEYS = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "account_key", "sas_token", "client_secret", "connection_string"}
RETRIES = 6                   # transient errors: attempts after the first, exponential backoff from BACKOFF_S
BACKOFF_S = 0.2
# errors that no retry will fix
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
TRANSIENT_MODULES = ("aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "http", "google", "azure")


class StorageError(DataError):
    """An object store or remote filesystem kept failing (after retries) or refused access."""


def is_url(path: str | Path) -> bool:
    """A URL handled by fsspec (file:// counts as local: it keeps the local fsync + rename code)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local(path: str | Path) -> Path:
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(base: str | Path, *names: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return str(local(base).joinpath(*names))


def normalize(path: str | Path) -> str:
    """A URL as given (minus a trailing slash), a local path made absolute (Dask workers share it)."""
    return str(path).rstrip("/") if is_url(path) else str(local(path).resolve())


SECRETS_HELP = ("storage_options must not hold credentials (configs are copied into config.yaml and checkpoints): "
                "use the environment or the provider's files (AWS_PROFILE, ~/.aws/credentials, "
                "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)")


def secret_keys(options: dict | None) -> list[str]:
    return sorted(k for k in (options or {}) if str(k).lower() in SECRET_KEYS)


def check_options(options: dict | None) -> dict:
    if secret_keys(options):
        raise ConfigError(f"{SECRETS_HELP} (found {', '.join(secret_keys(options))})")
    return dict(options or {})


def filesystem(url: str, options: dict | None = None):
    """(fsspec filesystem, path inside it) for a URL; a missing backend is one line, not an ImportError."""
    import fsspec
    try:
        return fsspec.core.url_to_fs(url, **check_options(options))
    except ImportError as exc:
        raise ConfigError(f"{url}: {exc} (gs:// needs avemo[gcs], az:// avemo[azure])") from None
    except ValueError as exc:   # unknown protocol
        raise ConfigError(f"{url}: {exc}") from None


def transient(exc: BaseException) -> bool:
    """Worth another try: connection resets, timeouts, 5xx and throttling, as each client library raises them."""
    if isinstance(exc, PERMANENT) or isinstance(exc, (ConfigError, DataError)):
        return False
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    return any(type(e).__module__.split(".")[0] in TRANSIENT_MODULES for e in (exc, exc.__cause__) if e)


def retrying(fn: Callable[[], T], what: str, retries: int = RETRIES) -> T:
    """fn() with retries on transient errors; when they run out, StorageError (one line)."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == retries:
                raise StorageError(f"{what}: {type(exc).__name__}: {exc} (after {retries} retries)") from exc
            delay = BACKOFF_S * 2 ** attempt * (0.5 + random.random())
            log.warning("%s: %s: %s; retry %d/%d in %.1f s", what, type(exc).__name__, exc, attempt + 1, retries,
                        delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def exists(path: str | Path, options: dict | None = None) -> bool:
    if not is_url(path):
        return local(path).is_file()
    fs, p = filesystem(str(path), options)
    fs.invalidate_cache(p)   # other processes (Dask workers) write here: never answer from a cached listing
    return retrying(lambda: fs.isfile(p), f"checking {path}")


def read_bytes(path: str | Path, options: dict | None = None) -> bytes:
    if not is_url(path):
        return local(path).read_bytes()
    fs, p = filesystem(str(path), options)
    return retrying(lambda: fs.cat_file(p), f"reading {path}")


def write_bytes(path: str | Path, data: bytes, options: dict | None = None) -> None:
    """Atomic: local temp + fsync + rename, or one PUT of the whole object."""
    if not is_url(path):
        return atomic.atomic_write_bytes(local(path), data)
    fs, p = filesystem(str(path), options)
    retrying(lambda: fs.pipe_file(p, data), f"writing {path}")


@contextlib.contextmanager
def atomic_open(path: str | Path, options: dict | None = None) -> Iterator[BinaryIO]:
    """Write a file that readers see whole or not at all (see the module docstring for URLs)."""
    if not is_url(path):
        with atomic.atomic_open(local(path)) as fh:
            yield fh
        return
    fs, p = filesystem(str(path), options)
    with tempfile.NamedTemporaryFile(prefix="avemo-upload-", suffix=Path(p).suffix) as tmp:
        yield tmp  # type: ignore[misc]  # a BinaryIO at run time
        tmp.flush()
        retrying(lambda: fs.put_file(tmp.name, p), f"uploading {path}")


def remove(path: str | Path, options: dict | None = None) -> None:
    """Delete a file or object; a missing one is fine."""
    if not is_url(path):
        local(path).unlink(missing_ok=True)
        return
    fs, p = filesystem(str(path), options)
    with contextlib.suppress(FileNotFoundError):
        retrying(lambda: fs.rm_file(p), f"deleting {path}")


def list_names(folder: str | Path, pattern: str, options: dict | None = None) -> list[str]:
    """Names (not paths) of the files in `folder` matching a glob pattern, sorted."""
    if not is_url(folder):
        return sorted(p.name for p in local(folder).glob(pattern))
    fs, p = filesystem(str(folder), options)
    fs.invalidate_cache(p)   # see exists()
    found = retrying(lambda: fs.glob(f"{p.rstrip('/')}/{pattern}"), f"listing {folder}")
    return sorted(name.rsplit("/", 1)[-1] for name in found)


def makedirs(folder: str | Path) -> None:
    """Local folders only: an object store has no folders (a key prefix exists once an object has it)."""
    if not is_url(folder):
        local(folder).mkdir(parents=True, exist_ok=True)


def clean_temporaries(folder: str | Path, ours: Callable[[str], bool]) -> list:
    """Leftovers of killed local writers of the names `ours` accepts (atomic.clean_temporaries); an object
    store has none (uploads are whole objects)."""
    return [] if is_url(folder) else atomic.clean_temporaries(local(folder), ours)


def sha256(path: str | Path, options: dict | None = None) -> str:
    if not is_url(path):
        return atomic.sha256_file(local(path))
    import hashlib
    digest = hashlib.sha256()
    with open_stream(str(path), options) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def open_stream(url: str, options: dict | None = None, block_size: int = 8 << 20) -> Iterator[BinaryIO]:
    """A sequential reader of a URL that resumes after transient errors by reopening at the byte offset it
    had reached (a ranged GET): no byte is read twice or skipped, so no sample is duplicated or dropped."""
    stream = ResumingReader(url, options, block_size)
    try:
        yield stream  # type: ignore[misc]  # file-like: read/seek/tell
    finally:
        stream.close()


class ResumingReader:
    def __init__(self, url: str, options: dict | None, block_size: int = 8 << 20,
                 on_bytes: Callable[[bytes], None] | None = None):
        # the size of each ranged GET (and of what one retry re-requests): storage_options can set it
        self.url, self.on_bytes = url, on_bytes
        self.block_size = int((options or {}).get("default_block_size", block_size))
        self.fs, self.path = filesystem(url, options)
        self.offset = 0
        self.fh = None

    def _open(self):
        fh = self.fs.open(self.path, "rb", block_size=self.block_size, cache_type="readahead")
        if self.offset:
            fh.seek(self.offset)
        return fh

    def _read(self, n: int) -> bytes:
        try:
            if self.fh is None:
                self.fh = self._open()
            return self.fh.read(n)  # type: ignore[attr-defined]
        except BaseException:
            self.close()   # the next attempt reopens at self.offset
            raise

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(self.block_size), b""))
        data = retrying(lambda: self._read(n), f"reading {self.url} at byte {self.offset}")
        self.offset += len(data)
        if self.on_bytes is not None and data:
            self.on_bytes(data)
        return data

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()

    def __str__(self) -> str:   # webdataset appends str(fileobj) to its messages
        return self.url

