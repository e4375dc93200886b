"""Runs you can trust, reproduce and track: safe run folders, RUN/config.yaml as a --config that reproduces
the run, resume with more epochs, Ctrl-C advice, and the trackers (TensorBoard, JSONL, W&B offline, MLflow
file store) read back after a real run."""
from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import shutil
import threading
import _thread
import time

import pytest
import torch
import yaml

from conftest import command, pin_torch_threads
from avemo.core.atomic import sha256_file
from avemo.model.checkpoint import load_checkpoint

TINY = ["device=cpu", "data.batch_size=4", "data.workers=0", "data.max_frames=4", "data.max_mel_frames=300",
        "model.face_trainable=none", "model.face_weights=auto", "data.shuffle_buffer=16", "log_every=1"]


def train(shards, run, *args: str) -> tuple[int, str, str]:
    pin_torch_threads()   # a module fixture's run too: a build just before may have left 1 thread (not bit-equal)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = command("train")(["--shards", str(shards), "--run", str(run), *TINY, *args])
        gc.collect()     # what an interrupted run left behind (a progress bar) has written by now, if it ever will
    return code, out.getvalue(), err.getvalue()


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def one_epoch(built_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "a"
    code, _, err = train(built_shards, run, "optim.epochs=1")
    assert code == 0, err
    return run


def test_a_new_run_into_a_used_folder_is_refused_and_loses_nothing(built_shards, one_epoch, tmp_path):
    run = tmp_path / "a"
    shutil.copytree(one_epoch, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = train(built_shards, run, "optim.epochs=1", "optim.lr=0.5")
    assert code == 2 and err.splitlines() == [
        f"avemo train: error: run folder {run} is not empty (best.pt, config.yaml, last.pt, metrics.jsonl, ...); "
        "continue that run with --resume, start it over with --overwrite (deletes its checkpoints and logs), "
        "or pick another --run"], err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # best.pt et al. untouched
    code, _, err = train(built_shards, run, "optim.epochs=1", "--overwrite", "seed=1")
    assert code == 0, err
    assert len([r for r in jsonl(run / "metrics.jsonl") if "epoch" in r]) == 1        # one run's log, not two
    assert len(list((run / "tb").iterdir())) == 1
    assert load_checkpoint(run / "best.pt")["config"]["seed"] == 1
    code, _, err = train(built_shards, run, "--resume", "--overwrite")
    assert code == 2 and "pick one" in err


def test_ctrl_c_names_the_resume_command_that_continues(built_shards, tmp_path):
    run = tmp_path / "run"
    args = ["optim.epochs=3", "data.workers=0"]

    def interrupt_after_first_epoch():
        deadline = time.time() + 300
        while not (run / "last.pt").is_file() and time.time() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()             # a real Ctrl-C (SIGINT's KeyboardInterrupt) in the main thread
    watcher = threading.Thread(target=interrupt_after_first_epoch, daemon=True)
    watcher.start()
    code, _, err = train(built_shards, run, *args)
    watcher.join()
    assert code == 130
    line = err.strip().splitlines()[-1]
    prefix = f"avemo train: interrupted; finished epochs are kept in {run}; continue with: avemo train "
    assert line.startswith(prefix) and line.endswith(" --resume"), line
    import shlex
    argv = shlex.split(line.removeprefix(prefix.removesuffix("avemo train ")))[2:]
    assert command("train")(argv) == 0                       # the advised command finishes the run
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_run_config_yaml_reproduces_the_run(built_shards, one_epoch, tmp_path):
    saved = yaml.safe_load((one_epoch / "config.yaml").read_text())
    assert saved["train"]["optim"]["epochs"] == 1 and saved["train"]["data"]["batch_size"] == 4   # was: no train:
    assert saved["train"]["shards_sha256"] == sha256_file(built_shards / "manifest.parquet")
    assert saved["avemo"]["shards_sha256"] == saved["train"]["shards_sha256"]
    assert "# peak AdamW learning rate" in (one_epoch / "config.yaml").read_text()        # help per key
    again = tmp_path / "again"
    code, _, err = command("train")(["--shards", str(built_shards), "--run", str(again),
                                     "--config", str(one_epoch / "config.yaml")]), None, None
    assert code == 0
    redone = yaml.safe_load((again / "config.yaml").read_text())
    assert {**redone["train"], "run": ""} == {**saved["train"], "run": ""}
    a, b = jsonl(one_epoch / "metrics.jsonl"), jsonl(again / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in rows]
    assert strip(a) == strip(b) and any("dev_weighted_f1" in r for r in a)               # the same metrics
    ca, cb = load_checkpoint(one_epoch / "last.pt"), load_checkpoint(again / "last.pt")
    for name, tensor in ca["model"].items():
        assert torch.equal(tensor, cb["model"][name]), name
    # written for other data: one line, before any work
    other = tmp_path / "other.yaml"
    other.write_text((one_epoch / "config.yaml").read_text().replace(saved["train"]["shards_sha256"], "f" * 64))
    code, _, err = train(built_shards, tmp_path / "b", "--config", str(other))
    assert code == 2 and "shards_sha256=ffffffffffff..." in err and len(err.splitlines()) == 1


def test_resume_may_extend_the_schedule(built_shards, one_epoch, tmp_path):
    """optim.epochs 1 -> 2 on --resume: the cosine is re-planned over the new total, so every LR after the
    resume equals that of a run started with epochs=2 (the old main refused: optim.epochs 1 -> 2)."""
    from avemo.train.loop import lr_lambda
    run = tmp_path / "a"
    shutil.copytree(one_epoch, run)
    code, out, err = train(built_shards, run, "--resume", "optim.epochs=2")
    assert code == 0, err
    assert "optim.epochs 1 -> 2: the cosine schedule is re-planned" in (run / "train.log").read_text()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["optim"]["epochs"] == 2
    steps = [r for r in jsonl(run / "metrics.jsonl") if "lr" in r]
    per_epoch = ckpt["step"] // 2
    f = lr_lambda(2 * per_epoch, per_epoch)                 # warmup_epochs=1 (default)
    after = [r for r in steps if r["step"] > per_epoch]
    assert len(after) == per_epoch
    for r in after:
        assert r["lr"] == pytest.approx(1e-3 * f(r["step"]), rel=1e-6), r
    assert not math.isclose(after[0]["lr"], 1e-3 * lr_lambda(per_epoch, per_epoch)(after[0]["step"]))


def test_trackers_log_grouped_metrics_params_and_test_results(built_shards, tmp_path, monkeypatch):
    """report_to=tensorboard,jsonl,wandb,mlflow for real: W&B in offline mode, MLflow on a local file store;
    evaluate log_to_run=true attaches the test metrics to the same tracker runs. Read back, no mocks."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "wandb").mkdir()
    run, uri = tmp_path / "run", f"file://{tmp_path / 'mlruns'}"
    code, _, err = train(built_shards, run, "optim.epochs=1", "report_to=tensorboard,jsonl,wandb,mlflow",
                         f"tracker.mlflow_uri={uri}", "tracker.project=avemo-test")
    assert code == 0, err
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert command("evaluate")(["--shards", str(built_shards), "--checkpoint", str(run / "best.pt"), "--out",
                                    str(tmp_path / "test"), "device=cpu", "workers=0", "log_to_run=true"]) == 0
    assert "evaluate test: 100%" in err.getvalue() and "batch" in err.getvalue()     # a progress bar
    assert "test: weighted_f1=" in (tmp_path / "test" / "evaluate.log").read_text()
    state = json.loads((run / "trackers.json").read_text())

    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    mlrun = client.get_run(state["mlflow"]["run_id"])
    assert mlrun.data.params["optim.lr"] == "0.001" and mlrun.data.params["data.batch_size"] == "4"
    assert int(float(mlrun.data.params["model/parameters"])) > 1_000_000
    for key in ("train/loss", "train/lr", "train/epoch_loss", "dev/weighted_f1", "dev/best_weighted_f1",
                "test/weighted_f1", "test/audio_only_weighted_f1"):
        assert key in mlrun.data.metrics, key
    assert mlrun.data.metrics["test/weighted_f1"] == pytest.approx(
        json.loads((tmp_path / "test" / "metrics.json").read_text())["weighted_f1"])
    assert client.get_experiment(mlrun.info.experiment_id).name == "avemo-test"

    from wandb_records import read_offline_run
    wb = read_offline_run(run, state["wandb"]["id"])
    assert wb["config"]["optim.lr"] == 0.001 and wb["project"] == "avemo-test"
    assert {"train/loss", "dev/weighted_f1", "test/weighted_f1"} <= wb["history_keys"]
    assert wb["summary"]["model/parameters"] > 1_000_000 and "test/weighted_f1" in wb["summary"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "dev/weighted_f1", "test/weighted_f1"} <= tags and "loss" not in tags
    assert "best" not in tags
    assert [r for r in jsonl(run / "metrics.jsonl") if "model/parameters" in r]


@pytest.mark.unit
def test_a_tracker_without_its_library_is_one_line_before_any_work(tmp_path):
    from avemo.core.errors import ConfigError
    from avemo.train.trackers import check_available
    with pytest.raises(ConfigError, match=r"report_to=nope needs the nope_pkg_absent package"):
        from avemo.train import trackers
        trackers.EXTRAS["nope"] = "nope_pkg_absent"
        try:
            check_available(["nope"])
        finally:
            del trackers.EXTRAS["nope"]
    code = command("train")(["--shards", str(tmp_path), "--run", str(tmp_path / "r"), "report_to=neptune"])
    assert code == 2 and not (tmp_path / "r").exists()


def test_demo_regenerates_what_its_changed_settings_change(built_shards, one_epoch, tmp_path):
    """`avemo demo` on an existing folder: changed demo.* settings regenerate the dataset; changed train.*
    settings or rebuilt shards start the run over instead of failing the resume check."""
    import json as _json
    from dataclasses import asdict, replace
    from avemo.core.config import load_config
    from avemo.demo.app import DEMO_STATE, DemoConfig, dataset_changes, training_changes
    from avemo.train.config import TrainConfig
    (tmp_path / DEMO_STATE).write_text(_json.dumps({"demo": asdict(DemoConfig())}))
    assert dataset_changes(tmp_path, DemoConfig()) == []
    changed = DemoConfig(seed=1)
    changed.per_class.train = 3
    assert dataset_changes(tmp_path, changed) == ["demo.per_class.train 20 -> 3", "demo.seed 0 -> 1"]
    saved = yaml.safe_load((one_epoch / "config.yaml").read_text())["train"]
    same = load_config(TrainConfig, "train", one_epoch / "config.yaml")
    assert training_changes(same) == []                       # resumable as it is
    assert training_changes(replace(same, optim=replace(same.optim, lr=0.01))) == ["train.optim.lr 0.001 -> 0.01"]
    other = tmp_path / "shards"
    shutil.copytree(built_shards, other)
    import pyarrow.parquet as pq
    table = pq.read_table(other / "manifest.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), other / "manifest.parquet")
    assert training_changes(replace(same, shards=str(other))) == ["the shards were rebuilt"]
    assert saved["shards"] == [str(built_shards)]
