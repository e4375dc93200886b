"""Issue 18, points 5 and 7: a build deletes only what a build writes. Its clean-up removes the temporaries of
its own file names (a user's `.draft.tmp-1` is not one), and a folder without the marker is an older build only
when its manifest or parts really are a build's (a file merely named manifest.parquet is not). The builds here
reject every row of their list before any media is read: no Dask cluster, no media."""
from __future__ import annotations

from pathlib import Path

import pytest

from avemo.core.config import load_config
from avemo.core.errors import ConfigError
from avemo.pipeline.build import run_build
from avemo.pipeline.config import BuildConfig
from avemo.pipeline.out_dir import MARKER, claim_out
from avemo.shards.manifest import make_table, write_table

pytestmark = pytest.mark.unit


def rejected_only_build(tmp_path: Path, out: Path):
    """A build of a list whose one row is refused on reading (unknown label): plans no shard."""
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,split\nx.wav,grumpy,train\n")
    cfg = load_config(BuildConfig, "build", None, [], {"media_list": str(listing), "out": str(out)})
    return run_build(cfg, log=lambda *a: None)


def test_the_clean_up_removes_only_temporaries_of_names_a_build_writes(tmp_path):
    out = tmp_path / "shards"
    (out / "parts").mkdir(parents=True)
    (out / MARKER).write_text("ours")                # an older build of ours
    users = [out / ".draft.tmp-1", out / ".notes.txt.tmp-12-0123abcd", out / "parts" / ".draft.tmp-1",
             out / ".train-photos.tar.tmp-7-0123abcd", out / "parts" / ".x.parquet.tmp-3-deadbeef"]
    leftovers = [out / ".train-000003.tar.tmp-4242-0123abcd", out / ".manifest.parquet.tmp-99-deadbeef",
                 out / "parts" / ".train-000003.parquet.tmp-4242-0123abcd",
                 out / "parts" / ".dev-labels.parquet.tmp-5-00000000"]
    for path in users + leftovers:
        path.write_bytes(b"x")
    summary = rejected_only_build(tmp_path, out)
    assert summary.rows == 1 and summary.rejected == {"unknown_label": 1}
    assert [p for p in users if not p.exists()] == []
    assert [p for p in leftovers if p.exists()] == []


def test_a_file_named_manifest_parquet_does_not_make_a_folder_an_older_build(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.parquet").write_bytes(b"my own notes, not a parquet file")
    (out / "train-000003.tar").write_bytes(b"a user's archive")
    (out / "parts").mkdir()
    (out / "parts" / "train-000003.parquet").write_bytes(b"not a part either")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="is not empty and was not written by build-shards"):
        rejected_only_build(tmp_path, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "train-000003.tar").read_bytes() == b"a user's archive"


@pytest.mark.parametrize("where", ["manifest.parquet", "parts/train-000000.parquet"])
def test_an_older_build_is_recognised_by_its_manifest_or_parts(tmp_path, where):
    out = tmp_path / "shards"
    (out / "parts").mkdir(parents=True)
    write_table(out / where, make_table([{"key": "a", "split": "train", "status": "ok", "shard": "train-000000.tar"}]))
    claim_out(out)
    assert (out / MARKER).is_file()
