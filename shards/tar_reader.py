"""Reading shard tars with every member's declared size bounded BEFORE its bytes are read.

webdataset's tar iterator (tariterators.tar_file_iterator) reads each member whole, trusting the header:
a 1 MB shard holding a sparse member that declares 2 GiB would allocate 2 GiB before decode_sample could
refuse it. This is the same pipeline stage (url_opener -> members -> group_by_keys, webdataset's own
functions) with the member loop replaced by one that checks TarInfo.size against the contract's limit
for that member (format.member_limit) and skips the member unread: decode_sample then refuses its sample,
like any other malformed one.
"""
from __future__ import annotations

import tarfile
from typing import Callable, Iterable, Iterator

from webdataset import filters
from webdataset.tariterators import group_by_keys, url_opener

from avemo.shards.format import UnsafeSampleError, member_limit


def bounded_members(fileobj, url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    stream = tarfile.open(fileobj=fileobj, mode="r|*")
    for info in stream:
        try:
            if not info.isreg():
                continue
            limit = member_limit(info.name)
            data = None   # an oversized member is skipped unread (a streaming tar reads past it in small
            if info.size > limit:   # chunks); None in its place makes decode_sample refuse the whole sample
                if not handler(UnsafeSampleError(f"member {info.name[:140]!r} declares {info.size} bytes, more "
                                                 f"than the {limit} its kind may hold @ {url}")):
                    raise UnsafeSampleError(f"member {info.name[:140]!r} of {url} is too large")
            else:
                data = stream.extractfile(info).read()
            yield {"fname": info.name, "data": data, "__url__": url}
            stream.members = []  # type: ignore[attr-defined]  # a streaming tar would otherwise keep every TarInfo of the shard
        except UnsafeSampleError as exc:
            if not handler(exc):
                raise


def bounded_expander(sources: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    for source in sources:
        try:
            yield from bounded_members(source["stream"], source["url"], handler)
            yield {}   # end of shard: samples of two shards are never merged (group_by_keys)
        except (tarfile.TarError, OSError, EOFError) as exc:
            exc.args = (*exc.args, source.get("url"))
            if not handler(exc):
                raise


def bounded_tarfile_samples(src: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterable[dict]:
    return group_by_keys(bounded_expander(url_opener(src, handler=handler), handler), handler=handler)


# a pipeline stage like wds.tarfile_to_samples(handler=...)
bounded_tarfile_to_samples = filters.pipelinefilter(bounded_tarfile_samples)
