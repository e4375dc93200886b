"""Issue 12: silently wrong results, bombs and broken checkpoints are refused before they cost a run.
Real shards (conftest `built_shards`), a real tiny checkpoint (tiny_model), real zip/tar bytes."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from avemo.core.config import load_config
from avemo.core.errors import CheckpointError, TrainingError
from avemo.shards.manifest import make_table, sha256_file, write_table
from avemo.model.checkpoint import load_checkpoint
from avemo.train.config import TrainConfig
from avemo.train.loop import run_train

from tiny_model import TINY_TRAIN


def _rewrite_split(shards: Path, split: str, change) -> None:
    """Rewrite every sample of a split's shards through change(sample dict) and fix the manifest checksums
    (whoever can write the shard folder can write the manifest: the checksum proves nothing about values)."""
    table = pq.read_table(shards / "manifest.parquet").to_pylist()
    for name in sorted({r["shard"] for r in table if r["split"] == split and r["status"] == "ok"}):
        samples = list(wds.WebDataset(str(shards / name), shardshuffle=False))
        with wds.TarWriter(str(shards / name), encoder=False) as tar:
            for s in samples:
                tar.write(change({k: v for k, v in s.items() if k != "__url__" and k != "__local_path__"}))
        for r in table:
            if r["shard"] == name:
                r["shard_sha256"] = sha256_file(shards / name)
    write_table(shards / "manifest.parquet", make_table(table))


def _train_cfg(shards: Path, run: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "train", None, [*TINY_TRAIN, *extra], {"shards": str(shards), "run": str(run)})


def test_run_that_trains_zero_steps_fails_and_saves_nothing(built_shards, tmp_path):
    """Every train sample has label 99 (checksum-valid): each is refused by the safe reader and skipped;
    the epoch saw nothing, so the run fails in one line instead of saving an untrained best.pt."""
    shards = tmp_path / "shards"
    shutil.copytree(built_shards, shards)

    def label_99(s: dict) -> dict:
        return {**s, "json": json.dumps({**json.loads(s["json"]), "label": 99}).encode()}
    _rewrite_split(shards, "train", label_99)
    with pytest.raises(TrainingError, match="trained on 0 samples"):
        run_train(_train_cfg(shards, tmp_path / "run"), log=lambda *a, **k: None)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_non_finite_loss_stops_the_run_and_saves_nothing(tiny_checkpoint, built_shards, tmp_path):
    """A last.pt whose weights went NaN (the state a diverged step leaves): the resumed epoch's loss is NaN;
    the run stops with one line, last.pt stays as it was and no best.pt appears."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    ckpt["config"]["optim"]["epochs"] = 2
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ckpt, run / "last.pt")
    before = sha256_file(run / "last.pt")
    with pytest.raises(TrainingError, match=r"loss of epoch 2 is nan"):
        run_train(_train_cfg(built_shards, run, "optim.epochs=2"), resume=True, log=lambda *a, **k: None)
    assert sha256_file(run / "last.pt") == before and not (run / "best.pt").exists()



def test_a_run_that_stops_on_an_error_ends_its_tracker_run_failed(tiny_checkpoint, built_shards, tmp_path,
                                                                     monkeypatch):
    """The diverged resume above with report_to=mlflow on a real local file store: the MLflow run ends FAILED
    (not left RUNNING forever), and the jsonl log is closed with what was logged."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    ckpt["config"]["optim"]["epochs"] = 2
    run, uri = tmp_path / "run", f"file://{tmp_path / 'mlruns'}"
    run.mkdir()
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(TrainingError, match=r"loss of epoch 2 is nan"):
        run_train(_train_cfg(built_shards, run, "optim.epochs=2", "report_to=jsonl,mlflow",
                             f"tracker.mlflow_uri={uri}"), resume=True, log=lambda *a, **k: None)
    from mlflow.tracking import MlflowClient
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    assert (run / "metrics.jsonl").read_text().endswith("\n")

def _edited(src: Path, dest: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(labels=list(reversed(c["labels"]))), "has the labels"),
    (lambda c: c["config"].pop("model"), "its config lacks model"),
    (lambda c: c.pop("config"), "not an avemo checkpoint"),
    (lambda c: c["config"]["model"].update(n_mels=80), "do not fit the model its config describes"),
    (lambda c: c["config"]["model"].update(hidden=64), "do not fit the model its config describes"),
])
def test_checkpoint_that_does_not_fit_is_refused_in_one_line(tiny_checkpoint, tmp_path, edit, message):
    """load_checkpoint + model_from_checkpoint: what train --resume, evaluate, predict and export all call
    before their work."""
    from avemo.model.checkpoint import model_from_checkpoint
    path = _edited(tiny_checkpoint, tmp_path / "bad.pt", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        model_from_checkpoint(load_checkpoint(path), path)
    assert "\n" not in str(info.value)


def test_checkpoint_without_resume_sections_cannot_be_resumed(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _edited(tiny_checkpoint, run / "last.pt", lambda c: c.pop("optimizer"))
    with pytest.raises(CheckpointError, match="lacks optimizer: it cannot be resumed"):
        run_train(_train_cfg(Path("/nonexistent"), run), resume=True, log=lambda *a, **k: None)


@pytest.mark.unit
def test_deflated_pt_bomb_is_refused_before_loading(tmp_path):
    """torch.save of a 256 MiB zero tensor, members re-deflated: ~260 kB on disk. Refused from the zip
    directory alone (weights and checkpoints), before torch.load inflates anything."""
    from avemo.core.errors import WeightsError
    from avemo.core.weights import load_state_dict
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(64 << 20)}, "config": {}}, buf)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="unpack to 268"):
        load_checkpoint(bomb)
    with pytest.raises(WeightsError, match="unpack to 268"):
        load_state_dict(bomb)


@pytest.mark.unit
@pytest.mark.parametrize("shard", ["../train-000000.tar", "/etc/passwd", "sub/x.tar", "..", ""])
def test_manifest_shard_outside_the_folder_is_refused(shard):
    from avemo.shards.manifest import CorruptShardError, shards_for_split
    table = make_table([dict(key="a", split="train", status="ok", shard="train-000000.tar", shard_sha256="0"),
                        dict(key="b", split="train", status="ok", shard=shard, shard_sha256="0")])
    with pytest.raises(CorruptShardError, match="outside the shards folder"):
        shards_for_split(table, "train")


def test_samples_not_in_the_manifest_or_repeated_are_skipped(built_shards, tmp_path):
    """A dev shard gains a copy of its first sample and a sample the manifest never listed (checksums fixed):
    evaluation sees every listed key exactly once."""
    from avemo.train.data import eval_loader, split_shards
    shards = tmp_path / "shards"
    shutil.copytree(built_shards, shards)
    table = pq.read_table(shards / "manifest.parquet").to_pylist()
    dev = sorted({r["shard"] for r in table if r["split"] == "dev" and r["status"] == "ok"})[0]
    samples = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
               for s in wds.WebDataset(str(shards / dev), shardshuffle=False)]
    stranger = {**samples[0], "__key__": "dia999_utt9"}
    with wds.TarWriter(str(shards / dev), encoder=False) as tar:
        for s in [*samples, samples[0], stranger]:
            tar.write(s)
    for r in table:
        if r["shard"] == dev:
            r["shard_sha256"] = sha256_file(shards / dev)
    write_table(shards / "manifest.parquet", make_table(table))
    split = split_shards(shards, "dev", log_fn=lambda *a: None)
    keys = [k for batch in eval_loader(split.urls, 4, 0, 4, 300, listed=split.listed) for k in batch["key"]]
    listed = sorted(r["key"] for r in table if r["split"] == "dev" and r["status"] == "ok")
    assert sorted(keys) == listed


@pytest.mark.unit
def test_tar_member_declaring_a_huge_size_is_skipped_unread(tmp_path):
    """A 10 kB shard whose .mel.npy is a sparse 1 GiB member (GNU tar --sparse): the reader checks the size
    the header declares before reading, skips the member, and the sample is refused; peak memory stays far
    below 1 GiB (webdataset's own iterator reads the whole member first). Measured in a fresh process."""
    import subprocess
    import sys
    from test_format import _sample
    raw, _, _ = _sample(faces_at=())
    folder = tmp_path / "members"
    folder.mkdir()
    for ext in ("json", "facemask.npy", "boxes.npy"):
        (folder / f"dia1_utt0.{ext}").write_bytes(raw[ext])
    with open(folder / "dia1_utt0.mel.npy", "wb") as fh:
        fh.truncate(1 << 30)
    shard = tmp_path / "train-000000.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(shard), "-C", str(folder), "dia1_utt0.json",
                    "dia1_utt0.mel.npy", "dia1_utt0.facemask.npy", "dia1_utt0.boxes.npy"], check=True)
    assert shard.stat().st_size < 100_000
    script = (f"import resource, logging\nlogging.basicConfig()\nfrom avemo.train.data import eval_loader\n"
              "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\nbefore = peak()\n"
              f"n = sum(len(b['key']) for b in eval_loader([{str(shard)!r}], 4, 0))\n"
              "print(n, peak() - before)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    n, grew_mb = map(int, proc.stdout.split())
    assert n == 0 and "declares 1073741824 bytes" in proc.stderr, proc.stderr[-2000:]
    assert grew_mb < 200, grew_mb     # reading the member would add 1024 MB


def _onnx_with_meta(path: Path, value: str) -> Path:
    import onnx
    from onnx import TensorProto, helper
    from avemo.inference.export import META_KEY
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    onnx.helper.set_model_props(model, {META_KEY: value})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.unit
@pytest.mark.parametrize("value, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"labels": ["b", "a"], "label_map_version": "x"}), "are not this code's"),
    ("GOOD:max_frames=1e21", r"max_frames=1e\+21 is not an integer"),
    ("GOOD:n_mels=0", "n_mels=0 is not an integer"),
    ("GOOD:build=[]", "build settings are not an object"),
])
def test_onnx_file_with_bad_metadata_is_one_line(tmp_path, value, message):
    from avemo.inference.runtime import read_model
    from avemo.shards.labels import EMOTIONS, LABEL_MAP_VERSION
    if value.startswith("GOOD:"):
        key, _, raw = value[5:].partition("=")
        good = {"labels": list(EMOTIONS), "label_map_version": LABEL_MAP_VERSION, "max_frames": 16,
                "max_mel_frames": 300, "n_mels": 64, "build": {}}
        value = json.dumps({**good, key: json.loads(raw)})
    with pytest.raises(CheckpointError, match=message) as info:
        read_model(_onnx_with_meta(tmp_path / "m.onnx", value))
    assert "\n" not in str(info.value)
