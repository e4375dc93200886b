"""Issue 12, data loss in build-shards' --out: only files a build of ours wrote are ever replaced or deleted."""
from __future__ import annotations

import pytest

from avemo.core.errors import ConfigError
from avemo.pipeline.build import _remove_stale, clean_temporaries, run_build
from avemo.pipeline.out_dir import MARKER, claim_out
from avemo.shards.manifest import make_table, write_table

from conftest import build_config

pytestmark = pytest.mark.unit


def test_a_users_non_empty_folder_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "train-photos.tar").write_bytes(b"a user's archive")
    (out / ".vimrc.tmp-keep").write_text("set nu")
    with pytest.raises(ConfigError, match="is not empty and was not written by build-shards"):
        run_build(build_config(tmp_path / "no-root", out))
    assert sorted(p.name for p in out.iterdir()) == [".vimrc.tmp-keep", "train-photos.tar"]


def test_in_our_folder_only_our_file_names_are_deleted(tmp_path):
    out = tmp_path / "shards"
    claim_out(out)                                    # empty: ours now
    assert (out / MARKER).is_file()
    (out / "parts").mkdir()
    users = [out / "train-photos.tar", out / "train-1.tar", out / "parts" / "train-notes.parquet",
             out / ".vimrc.tmp-keep", out / ".x.tmp-12-notrandom"]
    stale = [out / "train-000007.tar", out / "parts" / "train-000007.parquet"]
    for path in users + stale:
        path.write_bytes(b"x")
    leftover = out / ".train-000008.tar.tmp-4242-0123abcd"   # what a killed atomic_open leaves
    leftover.write_bytes(b"partial")
    clean_temporaries(str(out))                         # as a rerun does
    _remove_stale(out, "train", keep={"train-000000"})
    assert all(p.exists() for p in users), [p for p in users if not p.exists()]
    assert not any(p.exists() for p in stale) and not leftover.exists()
    claim_out(out)                                    # ours (marker): a rebuild goes ahead


def test_an_older_build_without_the_marker_is_still_ours(tmp_path):
    out = tmp_path / "shards"
    (out / "parts").mkdir(parents=True)
    write_table(out / "manifest.parquet", make_table([]))   # a real manifest (any bytes are not: test_out_ownership)
    claim_out(out)
    assert (out / MARKER).is_file()


def test_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        claim_out(tmp_path / "out")
