"""optim.ema_decay: an exponential moving average of the weights, scored on dev and saved as the checkpoints'
`model` (what predict, evaluate, export and --init-from read), the trained weights kept for --resume."""
from __future__ import annotations

import json

import pytest
import torch

from avemo.core.config import load_config
from avemo.core.errors import ConfigError
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.train.config import TrainConfig
from avemo.train.data import eval_loader, split_shards
from avemo.train.loop import evaluate_split, make_ema, run_train
from tiny_model import TINY


def train_cfg(shards, run, *overrides):
    return load_config(TrainConfig, "train", None, [*TINY, "data.workers=1", *overrides],
                       {"shards": str(shards), "run": str(run)})


def epochs(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]


def test_ema_update_is_the_documented_recurrence():
    """make_ema on the project's own model: the first update copies the weights (and buffers), each later one
    moves the float ones by 1 - ema_decay_at(decay, n) towards the trained ones (a warm-up: a short run is not
    an average of its untrained start); integer buffers (BatchNorm's counters) are copied."""
    from avemo.model.net import AVEmotionNet, ModelConfig
    from avemo.train.loop import ema_decay_at
    torch.manual_seed(0)
    model = AVEmotionNet(ModelConfig(face_trainable="none"))
    ema = make_ema(model, 0.9)
    assert make_ema(model, 0.0) is None
    assert float(ema_decay_at(0.9, torch.tensor(1.0))) == pytest.approx(2 / 11)
    assert float(ema_decay_at(0.9, torch.tensor(1000.0))) == pytest.approx(0.9)
    ema.update_parameters(model)
    name = "head.0.weight"                                  # the fusion head's first layer
    counter = next(k for k, v in model.state_dict().items() if k.endswith("num_batches_tracked"))
    first = model.state_dict()[name].clone()
    assert torch.equal(ema.module.state_dict()[name], first)
    expected, mean = first.clone(), torch.zeros_like(model.audio.mel_mean)
    for n in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            model.audio.mel_mean.add_(2.0)                  # a float buffer: averaged too (use_buffers)
            model.state_dict()[counter].add_(7)
        ema.update_parameters(model)
        d = float(ema_decay_at(0.9, torch.tensor(float(n))))
        expected = d * expected + (1 - d) * model.state_dict()[name]
        mean = d * mean + (1 - d) * model.audio.mel_mean
    assert torch.allclose(ema.module.state_dict()[name], expected, atol=1e-4)
    assert torch.allclose(ema.module.audio.mel_mean, mean, atol=1e-4)
    assert torch.equal(ema.module.state_dict()[counter], model.state_dict()[counter])


def test_ema_run_scores_and_saves_the_averaged_weights(built_shards, tmp_path):
    run = tmp_path / "run"
    run_train(train_cfg(built_shards, run, "optim.epochs=2", "optim.ema_decay=0.5"))
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["ema_updates"] == last["step"] > 0
    trained, averaged = last["train_model"], last["model"]
    assert trained.keys() == averaged.keys()
    moved = [k for k, v in averaged.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert moved, "the EMA should differ from the trained weights after several steps"
    # the dev score of each epoch is the EMA's (it picks best.pt), the trained weights' score beside it
    record = epochs(run)[-1]
    assert {"dev_raw_accuracy", "dev_raw_weighted_f1", "dev_accuracy"} <= record.keys()
    cfg = train_cfg(built_shards, run)
    split = split_shards(built_shards, "dev")
    loader = eval_loader(split.urls, 4, 0, cfg.data.max_frames, cfg.data.max_mel_frames, listed=split.listed)
    scored = evaluate_split(model_from_checkpoint(last, run / "last.pt"), split, cfg, torch.device("cpu"), loader)
    assert scored["weighted_f1"] == pytest.approx(record["dev_weighted_f1"], abs=1e-9)
    raw = model_from_checkpoint(last, run / "last.pt")
    raw.load_state_dict(trained)
    raw_scored = evaluate_split(raw, split, cfg, torch.device("cpu"), loader)
    assert raw_scored["weighted_f1"] == pytest.approx(record["dev_raw_weighted_f1"], abs=1e-9)
    assert best["model"].keys() == averaged.keys() and "train_model" in best


def test_ema_resume_reaches_the_same_state(built_shards, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    run_train(train_cfg(built_shards, full, "optim.epochs=2", "optim.ema_decay=0.8"))
    run_train(train_cfg(built_shards, parts, "optim.epochs=2", "optim.ema_decay=0.8", "stop_after_epochs=1"))
    run_train(train_cfg(built_shards, parts, "optim.epochs=2", "optim.ema_decay=0.8"), resume=True)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(parts / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == a["step"]
    for key in ("model", "train_model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)


def test_no_ema_by_default_and_a_bad_decay_is_refused(tmp_path):
    cfg = load_config(TrainConfig, "train", None, [], {"shards": "x", "run": str(tmp_path)})
    assert cfg.optim.ema_decay == 0.0
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        load_config(TrainConfig, "train", None, ["optim.ema_decay=1.0"], {"shards": "x", "run": str(tmp_path)})


def test_a_set_named_raw_does_not_collide_with_the_raw_weights_scores():
    """dev_raw_* are the trained weights' scores beside the EMA's: a shard set folder named raw (or best,
    set) gets another metric name."""
    from avemo.train.sets import set_names
    assert set_names(["/d/paired", "/d/raw", "/d/best", "s3://b/raw/"]) == ["paired", "raw_set", "best_set",
                                                                            "raw_set_3"]
