"""The training loop's phases: the LR schedule is planned over exactly the batches the loader yields (one
source for the steps per epoch, a mix of sets with data.weights, several ranks), and a failure at any point
after the trackers are open ends their runs FAILED, never leaves them RUNNING (MLflow file store, read back)."""
from __future__ import annotations

import json
import shutil

import pytest

from avemo.core.config import load_config
from avemo.train.config import AugmentConfig, DataConfig, TrainConfig
from avemo.train.data import SplitShards, epoch_steps, mixed_train_loader, split_shards, train_loader
from avemo.train.loop import lr_lambda, run_train
from tests.tiny_model import TINY


def _config(shards: list, run, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "train", None, [*TINY, *overrides], {"shards": [str(s) for s in shards],
                                                                          "run": str(run)})


@pytest.fixture(scope="module")
def two_sets(built_shards, tmp_path_factory):
    """The session's shards and a copy of them: two sets to mix (a copy is a set of its own to the loop)."""
    copy = tmp_path_factory.mktemp("second_set") / "copy"
    shutil.copytree(built_shards, copy)
    return [built_shards, copy]


@pytest.mark.unit
def test_the_loaders_yield_the_steps_per_epoch_arithmetic_for_a_weighted_mix_and_several_ranks():
    def fake(n_shards: int, n_samples: int) -> SplitShards:   # loaders open no file until iterated
        return SplitShards([f"/nowhere/train-{i:06d}.tar" for i in range(n_shards)], n_samples, [0] * 7)
    sets = [fake(4, 21), fake(2, 10)]
    data = DataConfig(batch_size=4, workers=0, weights=[3.0, 1.0], pin_memory=False)
    for world in (1, 2):
        steps = epoch_steps(sets, data.batch_size, world)
        assert steps == (21 + 10) // (4 * world)       # the samples of every set, whatever their weights
        assert mixed_train_loader(sets, data, AugmentConfig(), 0, 0, world)[1] == steps
        assert train_loader(sets[0], data, AugmentConfig(), 0, 0, world)[1] == epoch_steps(sets[:1], 4, world)
    assert epoch_steps([fake(2, 3)], 4, 2) == 1         # fewer samples than a batch per rank: one step


def test_each_rank_of_a_weighted_mix_gets_the_batches_its_schedule_counts(two_sets, monkeypatch):
    splits = [split_shards(s, "train") for s in two_sets]
    data = DataConfig(batch_size=4, workers=0, max_frames=4, max_mel_frames=300, shuffle_buffer=8,
                      pin_memory=False, weights=[3.0, 1.0])
    for rank in (0, 1):          # webdataset's split_by_node reads the rank from torchrun's variables
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader, steps = mixed_train_loader(splits, data, AugmentConfig(enabled=False), 0, 0, world=2)
        assert steps == epoch_steps(splits, 4, 2) == sum(s.n_samples for s in splits) // 8
        assert sum(1 for _ in loader) == steps


def test_the_cosine_schedule_ends_on_the_last_batch_of_a_weighted_mix(two_sets, tmp_path):
    run = tmp_path / "run"
    cfg = _config(two_sets, run, "optim.epochs=2", "stop_after_epochs=1", "eval_every=2", "data.batch_size=8",
                  "data.weights=[3,1]", "optim.warmup_epochs=0", "report_to=jsonl")
    state = run_train(cfg, log=lambda *a, **k: None)
    steps = epoch_steps([split_shards(s, "train") for s in two_sets], 8)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in lines if "lr" in r}
    assert state["step"] == steps and sorted(lrs) == list(range(1, steps + 1))   # the loader gave `steps`
    # the plan is 2 epochs of the loader's batches: after the first, the LR is that plan's, not another's
    for step, lr in lrs.items():
        assert lr == pytest.approx(1e-3 * lr_lambda(2 * steps, 1)(step), rel=1e-6), step


def test_a_failure_right_after_the_trackers_open_ends_the_tracker_run_failed(built_shards, tmp_path, monkeypatch):
    """`avemo train ... | head` on rank 0: once head exits, the next line the loop prints raises BrokenPipeError.
    Here it is the first line printed after the MLflow run exists, wherever the loop prints it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    cfg = _config([built_shards], tmp_path / "run", "optim.epochs=1", "report_to=mlflow",
                  f"tracker.mlflow_uri=file://{store}")

    def log(*args, **kwargs) -> None:
        if list(store.glob("*/*/meta.yaml")):           # an MLflow run folder: the trackers are open
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_train(cfg, log=log)
    from mlflow.tracking import MlflowClient
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]["run_id"]
    info = MlflowClient(f"file://{store}").get_run(run_id).info
    assert info.status == "FAILED" and info.end_time is not None


def test_a_tracker_that_cannot_open_ends_the_ones_already_open_failed(built_shards, tmp_path, monkeypatch):
    """report_to=mlflow,wandb with W&B misconfigured (a WANDB_MODE it refuses): the MLflow run it opened
    first is ended FAILED, not left RUNNING."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "no-such-mode")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    store = tmp_path / "mlruns"
    cfg = _config([built_shards], tmp_path / "run", "optim.epochs=1", "report_to=mlflow,wandb",
                  f"tracker.mlflow_uri=file://{store}")
    import wandb
    wandb.teardown()    # W&B keeps its settings (WANDB_MODE) in a process-wide singleton: read them anew ...
    try:
        with pytest.raises(Exception, match="no-such-mode"):
            run_train(cfg, log=lambda *a, **k: None)
    finally:
        wandb.teardown()   # ... and leave none behind for the next test
    from mlflow.tracking import MlflowClient
    (run,) = MlflowClient(f"file://{store}").search_runs(
        [e.experiment_id for e in MlflowClient(f"file://{store}").search_experiments()])
    assert run.info.status == "FAILED" and run.info.end_time is not None
