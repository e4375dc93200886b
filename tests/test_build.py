"""build-shards end to end on a generated mini-MELD tree plus the real videos, read back by stock tools."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import build_config, command
from avemo.pipeline.build import run_build
from avemo.shards.format import decode_sample
from avemo.shards.manifest import read_build_config, sha256_file


def _csv_rows(root):
    return sum(len(list(csv.DictReader(open(root / f"{s}_sent_emo.csv", encoding="utf-8"))))
               for s in ("train", "dev", "test"))


def _by_key(out, split="train"):
    return {r["key"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist() if r["split"] == split}


def test_manifest_has_one_row_per_csv_row(built_shards, mini_meld):
    table = pq.read_table(built_shards / "manifest.parquet")
    statuses = table.column("status").to_pylist()
    assert len(statuses) == _csv_rows(mini_meld)
    assert set(statuses) <= {"ok", "rejected"}
    for row in table.to_pylist():
        assert (row["reason"] == "") == (row["status"] == "ok")
        assert (row["shard"] != "") == (row["status"] == "ok")
    saved = read_build_config(built_shards)                 # what predict will reproduce
    assert saved["decode"]["max_frames"] == 8 and saved["face"]["backend"] == "mobilenet0.25"


def test_stock_webdataset_reads_every_ok_sample(built_shards):
    rows = pq.read_table(built_shards / "manifest.parquet").to_pylist()
    for shard in sorted({r["shard"] for r in rows if r["shard"]}):
        expected = {r["key"] for r in rows if r["shard"] == shard}
        samples = list(wds.WebDataset(str(built_shards / shard), shardshuffle=False))
        assert {s["__key__"] for s in samples} == expected
        for s in samples:
            decoded = decode_sample(s)
            assert decoded.meta["key"] == s["__key__"]
        assert sha256_file(built_shards / shard) == next(r["shard_sha256"] for r in rows if r["shard"] == shard)


def test_tar_lists_the_documented_members(built_shards):
    shard = sorted(built_shards.glob("train-*.tar"))[0]
    names = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    assert names and all(n.split(".", 1)[1] in {"json", "mel.npy", "facemask.npy", "boxes.npy", "faces.jpg"}
                         for n in names)


def test_members_are_plain_ustar_without_extended_headers(built_shards):
    """Each member is one 512-byte header and its data: no PAX header per member (a float mtime wrote one),
    which the training loader would parse for every member of every epoch."""
    import tarfile
    shard = sorted(built_shards.glob("train-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    assert members and all(m.pax_headers == {} and m.mtime == 0 for m in members)
    assert all(b.offset_data - b.offset == tarfile.BLOCKSIZE for b in members)
    assert all(a.offset_data + -(-a.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE == b.offset
               for a, b in zip(members, members[1:]))


def test_real_videos_faces_and_audio_policy(built_shards):
    rows = _by_key(built_shards)
    single, crying, noface, silent, leaving = (rows[f"dia{900 + i}_utt0"] for i in range(5))
    assert single["status"] == "ok" and single["n_faces"] == single["n_frames"] and single["has_audio"]
    assert crying["status"] == "ok" and crying["n_faces"] >= crying["n_frames"] - 1
    assert noface["status"] == "ok" and noface["n_faces"] == 0 and noface["has_audio"]  # audio kept, empty mask
    assert silent["status"] == "ok" and not silent["has_audio"] and silent["n_faces"] > 0  # default: silent mask
    assert 0 < leaving["n_faces"] < leaving["n_frames"]


def test_no_audio_policy_reject(tmp_path, mini_meld):
    summary = run_build(build_config(mini_meld, tmp_path / "out", "audio.missing=reject", "splits=[train]"))
    rows = _by_key(tmp_path / "out")
    assert rows["dia903_utt0"]["status"] == "rejected"
    assert rows["dia903_utt0"]["reason"] == "no_audio_stream"
    assert summary.rejected.get("no_audio_stream", 0) >= 1


def test_pitch_build_stores_a_track_per_mel_frame_and_a_new_fingerprint(tmp_path, mini_meld, built_shards):
    """audio.pitch=true: each clip with audio holds .pitch.npy, one (log2 F0, periodicity) column per mel frame;
    clips without audio hold none. The option is in the build's fingerprint only when on (default builds keep
    theirs), and a kept build from before it counts as pitch=false."""
    import numpy as np
    from avemo.pipeline.shard_task import media_settings
    from avemo.pipeline.config import BuildConfig, AudioConfig
    out = tmp_path / "out"
    run_build(build_config(mini_meld, out, "audio.pitch=true", "splits=[train]"))
    samples = [decode_sample(s) for shard in sorted(out.glob("train-*.tar"))
               for s in wds.WebDataset(str(shard), shardshuffle=False)]
    with_audio = [s for s in samples if s.mel is not None]
    assert with_audio and all(s.pitch is not None and s.pitch.shape == (2, s.mel.shape[1]) and s.meta["pitch"]
                              for s in with_audio)
    assert all(s.pitch is None for s in samples if s.mel is None)
    voiced = np.concatenate([s.pitch[1] for s in with_audio]).astype(np.float32)
    assert 0 < voiced.max() <= 1 and voiced.min() >= 0                     # periodicity: real speech and tones
    assert read_build_config(out)["audio"]["pitch"] is True
    assert "pitch" not in media_settings(BuildConfig(), hashed=True)["audio"]
    assert media_settings(BuildConfig(audio=AudioConfig(pitch=True)), hashed=True)["audio"]["pitch"] is True


def test_interrupted_build_resumes_to_the_same_result(tmp_path, built_shards, mini_meld):
    """Keep only some finished shards (as a kill would), plus a leftover temporary; the rerun
    rebuilds the rest and ends byte-identical to the uninterrupted build."""
    out = tmp_path / "resumed"
    shutil.copytree(built_shards, out)
    tars = sorted(out.glob("*.tar"))
    for tar in tars[::2]:
        tar.unlink()
        (out / "parts" / f"{tar.stem}.parquet").unlink()
    (out / "manifest.parquet").unlink()
    (out / ".train-000000.tar.tmp-999-deadbeef").write_bytes(b"half a shard")
    summary = run_build(build_config(mini_meld, out))
    assert summary.shards_built == len(tars[::2]) and summary.shards_skipped == len(tars) - len(tars[::2])
    assert not list(out.glob(".*tmp-*"))
    for tar in tars:
        assert sha256_file(out / tar.name) == sha256_file(built_shards / tar.name), tar.name
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(built_shards / "manifest.parquet"))
    again = run_build(build_config(mini_meld, out))                   # a third run has nothing to do
    assert again.shards_built == 0 and again.shards_skipped == len(tars)


def test_cli_errors_are_one_line(tmp_path, capsys):
    build = command("build-shards")
    assert build(["--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "train_sent_emo.csv" in err
    assert build(["--root", str(tmp_path), "--out", str(tmp_path / "o"), "decode.fps=fast"]) == 2
    err = capsys.readouterr().err
    assert "decode.fps must be a number" in err and "Traceback" not in err


def test_bad_splits_is_one_line(tmp_path, capsys):
    assert command("build-shards")(["--root", str(tmp_path), "--out", str(tmp_path / "o"), "--splits", "foo"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "avemo build-shards: error: --splits must be a comma list of train, dev, test; got 'foo'"]
    assert not (tmp_path / "o").exists()


def test_help_teaches_a_newcomer():
    result = subprocess.run([sys.executable, "-m", "avemo", "build-shards", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "MELD_ROOT" in result.stdout and "resumes" in result.stdout


def test_gpu_resource_without_gpu_workers_is_a_clear_error(tmp_path, mini_meld):
    from avemo.pipeline.cluster import ClusterError
    with pytest.raises(ClusterError, match="--resources GPU=1"):
        run_build(build_config(mini_meld, tmp_path / "out", "dask.gpu_resource=true", "dask.workers=1"))


def test_unusable_detector_weights_stop_before_any_task(tmp_path, mini_meld):
    from avemo.core.weights import WeightsError
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load weights"):
        run_build(build_config(mini_meld, tmp_path / "out", f"face.weights={bad}", shared_cluster=False))
    assert not list((tmp_path / "out").glob("*.tar"))
