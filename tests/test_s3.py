"""Shards in object storage, against a REAL S3 endpoint on localhost (moto's server mode, tests/s3local.py):
build into the bucket, SIGKILL and resume, train and evaluate from it (same results as from local shards),
tampered objects (stop | skip), and a server that resets connections and throttles (every sample once)."""
from __future__ import annotations

import hashlib
import json
import logging
import sys

import pytest
import torch

from badmedia import kill_group, start_group, wait_for
from conftest import build_config, command
from s3local import FaultyProxy, moto_s3
from tiny_model import TINY_TRAIN
from avemo.core import storage
from avemo.core.config import load_config
from avemo.core.errors import ConfigError
from avemo.inference.runtime import read_model
from avemo.pipeline.build import run_build
from avemo.shards.labels import EMOTIONS
from avemo.shards.manifest import CorruptShardError, read_manifest, sha256_file
from avemo.train.config import EvalConfig, TrainConfig
from avemo.train.data import eval_loader, split_shards
from avemo.train.evaluate import run_evaluate

BUCKET = "avemo-test"
URL = f"s3://{BUCKET}/meld"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        import boto3
        yield boto3.client("s3", endpoint_url=endpoint), endpoint


def keys_of(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def bucket(s3, mini_meld, built_shards, tmp_path_factory):
    """mini-MELD built into s3://avemo-test/meld by `avemo build-shards` SIGKILLed (process group: CLI, nanny,
    worker) once a shard is committed in the bucket, then resumed: -> (summary of the resume, committed)."""
    client, _ = s3
    log = tmp_path_factory.mktemp("s3kill") / "killed.log"
    proc = start_group([sys.executable, "-m", "avemo", "build-shards", "--root", str(mini_meld), "--out", URL,
                        "dask.workers=1", "shards.max_clips=8", "decode.max_frames=8"], log)
    try:
        wait_for(lambda: [k for k in keys_of(client, "meld/parts/") if "-0" in k], 300,
                 "a shard committed in the bucket", proc, log)
        kill_group(proc)
    finally:
        kill_group(proc)
    committed = {k: get(client, k) for k in keys_of(client, "meld/parts/") if "-0" in k}
    assert "meld/manifest.parquet" not in keys_of(client, "meld/"), "the build ended before the kill"
    summary = run_build(build_config(mini_meld, URL))
    assert summary.shards_failed == 0
    return summary, committed


def test_build_into_a_bucket_kill_and_resume_equals_a_local_build(s3, bucket, built_shards):
    client, _ = s3
    summary, committed = bucket
    local = sorted(p.name for p in built_shards.glob("*.tar"))
    assert summary.shards_skipped >= len(committed) >= 1 and summary.shards_built + summary.shards_skipped == len(local)
    for key, data in committed.items():      # the committed work was kept, not redone
        assert get(client, key) == data
    objects = keys_of(client, "meld/")
    assert [k.split("/")[-1] for k in objects if k.endswith(".tar")] == local
    for name in local:                       # byte-identical to the uninterrupted local build
        assert hashlib.sha256(get(client, f"meld/{name}")).hexdigest() == sha256_file(built_shards / name)
    assert read_manifest(URL).equals(read_manifest(built_shards))
    assert {"meld/manifest.parquet", "meld/build_config.json"} <= set(objects)


def test_root_must_be_local_and_credentials_stay_out_of_configs(mini_meld, tmp_path):
    with pytest.raises(ConfigError, match="root=s3://b/meld: the MELD media must be a local"):
        build_config(mini_meld, tmp_path, "root=s3://b/meld")
    with pytest.raises(ConfigError, match="must not hold credentials"):
        load_config(TrainConfig, "train", None, ["data.storage_options.secret=abc"], {"shards": URL, "run": "r"})


def test_train_and_evaluate_from_the_bucket_equal_a_local_run(s3, bucket, built_shards, tiny_checkpoint,
                                                                 tmp_path):
    """`avemo train --shards s3://...` gives the very weights of the same run from local shards (tiny_checkpoint:
    the same TINY_TRAIN settings), and `avemo evaluate --shards s3://... --checkpoint s3://...` its metrics."""
    client, _ = s3
    run = tmp_path / "run"
    assert command("train")(["--shards", URL, "--run", str(run), *TINY_TRAIN]) == 0
    mine, local = (torch.load(p, weights_only=True)["model"] for p in (run / "last.pt", tiny_checkpoint))
    assert mine.keys() == local.keys() and all(torch.equal(mine[k], local[k]) for k in mine)
    client.put_object(Bucket=BUCKET, Key="runs/a/last.pt", Body=(run / "last.pt").read_bytes())
    model = read_model(f"s3://{BUCKET}/runs/a/last.pt")                 # `avemo predict --checkpoint s3://...`
    assert model.path == f"s3://{BUCKET}/runs/a/last.pt" and model.meta["labels"] == list(EMOTIONS)
    assert command("evaluate")(["--shards", URL, "--checkpoint", f"s3://{BUCKET}/runs/a/last.pt", "--split", "dev",
                                "--out", str(tmp_path / "s3"), "device=cpu", "workers=2"]) == 0
    from_s3 = json.loads((tmp_path / "s3" / "metrics.json").read_text())
    local = run_evaluate(load_config(EvalConfig, "evaluate", None, ["device=cpu", "workers=2"], {
        "shards": str(built_shards), "checkpoint": str(tiny_checkpoint), "split": "dev", "out": str(tmp_path / "l")}))
    for key in ("n", "accuracy", "weighted_f1", "macro_f1", "confusion", "ablation"):
        assert from_s3[key] == local[key]


@pytest.fixture
def tampered(s3, bucket):
    """A copy of the bucket's shards under another prefix with train-000000.tar's bytes flipped (same size)
    and train-000001.tar cut short; -> (url, {bad shard url: its keys}, every train key)."""
    client, _ = s3
    for key in keys_of(client, "meld/"):
        client.copy_object(Bucket=BUCKET, Key=key.replace("meld/", "bad/", 1), CopySource={"Bucket": BUCKET, "Key": key})
    data = bytearray(get(client, "meld/train-000000.tar"))
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key="bad/train-000000.tar", Body=bytes(data))
    client.put_object(Bucket=BUCKET, Key="bad/train-000001.tar", Body=get(client, "meld/train-000001.tar")[:3000])
    rows = read_manifest(URL).to_pylist()
    train = [r for r in rows if r["split"] == "train" and r["status"] == "ok"]
    url = f"s3://{BUCKET}/bad"
    bad = {f"{url}/{s}": {r["key"] for r in train if r["shard"] == s} for s in ("train-000000.tar", "train-000001.tar")}
    return url, bad, {r["key"] for r in train}


def test_a_tampered_object_stops_while_streaming(tampered):
    url, bad, _ = tampered
    split = split_shards(url, "train", "stop")       # nothing is downloaded up front: a listing only
    with pytest.raises(CorruptShardError) as err:    # raised in a loader worker, one line all the same
        for _ in eval_loader(split.urls, 4, 1, 8, 400):
            pass
    assert "\n" not in str(err.value) and "does not match its checksum" in str(err.value)
    assert "set data.corrupt_shards=skip" in str(err.value) and str(err.value).split()[1] in bad


def test_skip_drops_tampered_shards_whole(tampered, caplog):
    url, bad, every = tampered
    split = split_shards(url, "train", "skip")
    with caplog.at_level(logging.WARNING, "avemo.data"):
        keys = [k for batch in eval_loader(split.urls, 4, 0, 8, 400) for k in batch["key"]]
    dropped = set().union(*bad.values())
    assert sorted(keys) == sorted(every - dropped) and dropped   # no sample of a bad shard, every other once
    assert sum("does not match its checksum" in r.message for r in caplog.records) == 2


def test_every_sample_exactly_once_through_resets_and_throttling(s3, bucket, caplog):
    """A proxy that resets connections mid-response and answers 503 SlowDown, sometimes in bursts longer
    than botocore's and s3fs's own retries (about 10 in a row): then avemo's resumes the stream at the byte it
    had reached; no sample is repeated or lost."""
    _, endpoint = s3
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = FaultyProxy((host, int(port)), schedule="..r..f...." * 3 + "f" * 16)
    options = {"endpoint_url": proxy.url, "default_block_size": 32768,   # many ranged GETs per shard
               "config_kwargs": {"retries": {"max_attempts": 1}}}
    try:
        split = split_shards(URL, "train", options=options)
        with caplog.at_level(logging.WARNING, "avemo.storage"):
            keys = [k for batch in eval_loader(split.urls, 4, 0, 8, 400) for k in batch["key"]]
    finally:
        proxy.close()
    expected = [r["key"] for r in read_manifest(URL).to_pylist() if r["split"] == "train" and r["status"] == "ok"]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(expected)
    assert proxy.resets >= 3 and proxy.failures >= 16
    assert any("retry" in r.message and "at byte" in r.message for r in caplog.records)   # our own resume ran


@pytest.mark.unit
def test_storage_layer_on_memory_urls():
    base = "memory://avemo-unit"
    storage.write_bytes(f"{base}/a/x.bin", b"abc")
    with storage.atomic_open(f"{base}/a/y.bin") as fh:
        fh.write(b"defg")
    assert storage.list_names(f"{base}/a", "*.bin") == ["x.bin", "y.bin"]
    assert storage.read_bytes(f"{base}/a/y.bin") == b"defg" and storage.exists(f"{base}/a/x.bin")
    assert storage.sha256(f"{base}/a/x.bin") == hashlib.sha256(b"abc").hexdigest()
    storage.remove(f"{base}/a/x.bin")
    storage.remove(f"{base}/a/x.bin")      # a missing one is fine
    assert not storage.exists(f"{base}/a/x.bin")
    assert storage.join("s3://b/p/", "parts", "x") == "s3://b/p/parts/x" and not storage.is_url("file:///tmp/x")
    with pytest.raises(ConfigError, match="Protocol not known"):
        storage.read_bytes("nosuchproto://x/y")
