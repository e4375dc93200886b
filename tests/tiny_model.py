"""A small checkpoint trained once per test session on the real shards (tests/conftest.py `built_shards`),
for the predict and export tests. Import the fixture into a test module: `from tiny_model import tiny_checkpoint`.
"""
from __future__ import annotations

import pytest

# the one tiny training recipe of the suite (CPU, seconds); tests add or override keys after it
TINY = ["device=cpu", "data.batch_size=4", "data.workers=0", "data.max_frames=4", "data.max_mel_frames=300",
        "model.face_trainable=none", "model.face_weights=auto", "data.shuffle_buffer=16", "log_every=1"]
TINY_TRAIN = [*TINY, "data.max_frames=8", "data.max_mel_frames=400", "optim.epochs=1"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, built_shards):
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    run = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(TrainConfig, "train", None, TINY_TRAIN, {"shards": str(built_shards), "run": str(run)})
    run_train(cfg, log=lambda *a, **k: None)
    return run / "last.pt"
