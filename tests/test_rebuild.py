"""Rebuilding into an OUT that holds an earlier build: what makes a shard stale (a corrected CSV, a media
setting; never a timeout), that a failed rebuild leaves no stale rows or tars behind, and that
OUT/build_config.json keeps describing every shard kept in OUT."""
from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from badmedia import clip, csv_row, write_csv
from conftest import build_config, session_scheduler
from avemo.pipeline.build import SettingsMismatchError, run_build
from avemo.shards.manifest import read_build_config, sha256_file

TRAIN_TEXTS = ["Hello there", "How you doin", "We were on a break", "Pivot"]


@pytest.fixture(scope="module")
def warm():
    """The session's in-process Dask worker (conftest): quick to reuse, and a monkeypatch reaches its tasks."""
    return f"scheduler={session_scheduler()}"


def _tree(root, train_texts=TRAIN_TEXTS):
    """train: 4 one-second clips (2 shards of 2); dev: 1 clip."""
    for split, folder, texts in (("train", "train_splits", train_texts), ("dev", "dev_splits_complete", ["Dev"])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, text in enumerate(texts):
            if not (root / folder / f"dia{i}_utt0.mp4").exists():
                clip(root / folder / f"dia{i}_utt0.mp4", seconds=1.0, rate=8)
            rows.append(csv_row(i + 1, i, 0, text=text))
        write_csv(root / f"{split}_sent_emo.csv", rows)
    return root


def _build(root, out, warm, *overrides, splits="[train,dev]"):
    return run_build(build_config(root, out, "shards.max_clips=2", f"splits={splits}", warm, *overrides),
                     log=lambda *a, **k: None)


def _texts(tar):
    return {s["__key__"]: json.loads(s["json"])["utterance"] for s in wds.WebDataset(str(tar), shardshuffle=False)}


def test_a_corrected_csv_text_rebuilds_its_shard_and_a_timeout_rebuilds_nothing(tmp_path, warm):
    root, out = _tree(tmp_path / "meld"), tmp_path / "out"
    first = _build(root, out, warm)
    assert (first.shards_built, first.shards_skipped) == (3, 0)
    before = {p.name: sha256_file(p) for p in out.glob("*.tar")}
    assert _texts(out / "train-000001.tar") == {"dia2_utt0": "We were on a break", "dia3_utt0": "Pivot"}

    _tree(root, [*TRAIN_TEXTS[:3], "PIVOT! PIVOT!"])            # the same videos, labels and times
    second = _build(root, out, warm)
    assert (second.shards_built, second.shards_skipped) == (1, 2)
    assert _texts(out / "train-000001.tar") == {"dia2_utt0": "We were on a break", "dia3_utt0": "PIVOT! PIVOT!"}
    assert sha256_file(out / "train-000000.tar") == before["train-000000.tar"]
    assert sha256_file(out / "dev-000000.tar") == before["dev-000000.tar"]
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {r["shard_sha256"] for r in manifest if r["key"] == "dia3_utt0" and r["split"] == "train"} == {
        sha256_file(out / "train-000001.tar")}

    # timeouts, threads, the device and the detector's batch size change how fast, not what: nothing to redo
    third = _build(root, out, warm, "probe.timeout_s=30", "decode.timeout_s=100", "decode.ffmpeg_threads=2",
                   "face.batch_frames=3", "face.device=cpu")
    assert (third.shards_built, third.shards_skipped) == (0, 3)


def test_a_failed_rebuild_leaves_one_row_per_key_and_no_stale_shard(tmp_path, warm, monkeypatch):
    """A shard built before, whose fingerprint changed, fails when rebuilt: its clips are task_failed, once;
    the old part (the old rows) and the old tar are gone. The next run builds it."""
    import avemo.pipeline.shard_task
    root, out = _tree(tmp_path / "meld"), tmp_path / "out"
    assert _build(root, out, warm, splits="[train]").shards_built == 2
    _tree(root, [*TRAIN_TEXTS[:2], "We were ON A BREAK", "Pivot"])    # changes train-000001 only

    def broken(*args, **kwargs):
        raise RuntimeError("the detector\n  exploded")
    monkeypatch.setattr(avemo.pipeline.shard_task, "_run_clips", broken)   # in the in-process worker, every retry
    failed = _build(root, out, warm, splits="[train]")
    assert (failed.shards_built, failed.shards_skipped, failed.shards_failed) == (0, 1, 1)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["key"] for r in rows) == [f"dia{i}_utt0" for i in range(4)]      # each key once
    by_key = {r["key"]: r for r in rows}
    for key in ("dia2_utt0", "dia3_utt0"):
        assert (by_key[key]["status"], by_key[key]["reason"]) == ("rejected", "task_failed")
        assert by_key[key]["detail"] == "RuntimeError: the detector exploded"     # one line
        assert by_key[key]["source"].endswith(f"{key}.mp4") and by_key[key]["shard"] == ""
    assert by_key["dia0_utt0"]["status"] == by_key["dia1_utt0"]["status"] == "ok"
    assert not (out / "train-000001.tar").exists() and not (out / "parts" / "train-000001.parquet").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]

    monkeypatch.undo()
    again = _build(root, out, warm, splits="[train]")
    assert (again.shards_built, again.shards_skipped, again.shards_failed) == (1, 1, 0)
    assert _texts(out / "train-000001.tar")["dia2_utt0"] == "We were ON A BREAK"
    assert [r["status"] for r in pq.read_table(out / "manifest.parquet").to_pylist()] == ["ok"] * 4


def test_kept_shards_of_other_splits_stop_a_build_with_other_media_settings(tmp_path, warm, capsys):
    """OUT/build_config.json describes every shard in OUT: a run that keeps the train shards (made at
    decode.fps=4) must not rewrite it for decode.fps=2 dev shards; it stops with one line, OUT untouched."""
    from conftest import command
    main = command("build-shards")   # as the `avemo` command runs it: errors become one line
    root, out = _tree(tmp_path / "meld"), tmp_path / "out"
    assert _build(root, out, warm).shards_built == 3
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with pytest.raises(SettingsMismatchError, match=r"keeps train shards .*decode\.fps=4\.0 there, 2\.0 now.*"
                                                    r"--splits train,dev\) or use a new --out"):
        _build(root, out, warm, "decode.fps=2", splits="[dev]")
    capsys.readouterr()                                               # the progress bars of the builds above
    code = main(["--root", str(root), "--out", str(out), "--splits", "dev,test", "decode.fps=2", "face.crop=box",
                 "decode.max_frames=8", warm])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"avemo build-shards: error: {out} keeps train shards")
    assert "decode.fps=4.0 there, 2.0 now; face.crop='align' there, 'box' now" in err[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # scheduling settings may differ; so may everything when no other split's shards are kept
    assert _build(root, out, warm, "decode.timeout_s=99", "face.batch_frames=2", splits="[dev]").shards_skipped == 1
    rebuilt = _build(root, out, warm, "decode.fps=2")
    assert (rebuilt.shards_built, rebuilt.shards_skipped) == (3, 0)
    assert read_build_config(out)["decode"]["fps"] == 2.0
    fresh = _build(root, tmp_path / "fresh", warm, "decode.fps=2", splits="[dev]")
    assert fresh.shards_built == 1 and read_build_config(tmp_path / "fresh")["decode"]["fps"] == 2.0


def test_a_setting_newer_than_the_kept_build_reads_as_what_that_build_did(tmp_path, warm, capsys):
    """An asd build from before face.asd_sync_weight existed (its build_config.json lacks the key) chose the
    speaker by Light-ASD alone: keeping its train shards while building dev with lip sync stops the build;
    with sync_weight=0 (what it did) it goes on. A default build does not use the key: nothing stops."""
    from conftest import command
    main = command("build-shards")   # face.speaker=asd needs the command's Light-ASD scorer
    root = _tree(tmp_path / "meld")

    def build(out, splits, *extra):
        code = main(["--root", str(root), "--out", str(out), "--splits", splits, "shards.max_clips=2",
                     "decode.max_frames=8", warm, *extra])
        return code, capsys.readouterr().err.strip().splitlines()

    for out, extra in ((tmp_path / "asd", ["face.speaker=asd"]), (tmp_path / "score", [])):
        assert build(out, "train,dev", *extra)[0] == 0
        saved = json.loads((out / "build_config.json").read_text())
        assert saved["face"].pop("asd_sync_weight") == 2.0
        (out / "build_config.json").write_text(json.dumps(saved))
    code, err = build(tmp_path / "asd", "dev", "face.speaker=asd")
    assert code == 2 and "face.asd_sync_weight=0.0 there, 2.0 now" in err[-1], err
    assert build(tmp_path / "asd", "dev", "face.speaker=asd", "face.asd_sync_weight=0")[0] == 0
    assert build(tmp_path / "score", "dev")[0] == 0
