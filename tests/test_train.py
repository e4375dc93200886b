"""Training and evaluation from real shards: loader, overfit, exact resume, metrics vs scikit-learn."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from avemo.core.config import load_config
from avemo.model.net import AVEmotionNet, ModelConfig, count_parameters, flops_per_clip
from avemo.shards.labels import EMOTIONS
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.train.config import EvalConfig, TrainConfig
from avemo.model.inputs import collate, crop_mel, frame_indices, to_tensors
from avemo.train.data import eval_loader, split_shards, train_loader
from avemo.train.evaluate import MODES, predict, run_evaluate
from avemo.train.loop import class_weights, make_optimizer, run_train
from avemo.train.metrics import classification_metrics

from tiny_model import TINY


def train_cfg(shards, run, *overrides):
    return load_config(TrainConfig, "train", None, [*TINY, *overrides], {"shards": str(shards), "run": str(run)})


def _raw_samples(shards, keys):
    import webdataset as wds
    found = {}
    for url in split_shards(shards, "train").urls:
        for raw in wds.WebDataset(url, shardshuffle=False):
            if raw["__key__"] in keys:
                found[raw["__key__"]] = raw
    return [found[k] for k in keys]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, built_shards):
    run = tmp_path_factory.mktemp("run")
    run_train(train_cfg(built_shards, run, "optim.epochs=2"))
    return run


def test_loader_epoch_is_explicit_and_seeded(built_shards):
    cfg = train_cfg(built_shards, "unused", "data.workers=1")
    split = split_shards(built_shards, "train")
    loader, steps = train_loader(split, cfg.data, cfg.augment, epoch=0, seed=0)
    batches = list(loader)
    assert len(batches) == steps == split.n_samples // cfg.data.batch_size
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == len(keys)                      # one worker: one pass, no sample twice
    b = batches[0]
    assert b["faces"].shape == (4, 4, 3, 112, 112) and b["faces"].dtype == torch.uint8
    assert b["mel"].shape[1] == 64 and b["mel"].shape[2] % 64 == 0 and b["mel_mask"].shape == b["mel"].shape[::2]
    again = [k for b in train_loader(split, cfg.data, cfg.augment, epoch=0, seed=0)[0] for k in b["key"]]
    other = [k for b in train_loader(split, cfg.data, cfg.augment, epoch=1, seed=0)[0] for k in b["key"]]
    assert again == keys and other != keys
    cfg.data.workers = 2                                    # workers stream their own shards, endlessly:
    assert len(list(train_loader(split, cfg.data, cfg.augment, epoch=0, seed=0)[0])) == steps  # same step count


def test_class_weights_follow_the_label_map():
    w = class_weights([10, 1, 1, 10, 100, 5, 5], "weighted_loss")
    assert w.argmax() in (1, 2) and w.argmin() == EMOTIONS.index("neutral")
    counts = torch.tensor([10, 1, 1, 10, 100, 5, 5], dtype=torch.float32)
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0)
    assert class_weights([1] * 7, "none") is None


def test_no_face_and_silent_clips_pass_through_the_model(built_shards, tmp_path):
    """Real samples: no_face.mp4 (no face frames) and fer_test.mp4 (no audio), plus a silent-track clip."""
    import subprocess
    from avemo.pipeline.audio import log_mel
    from avemo.pipeline.config import AudioConfig, BuildConfig
    from avemo.pipeline.decode import decode_clip, plan_decode
    from avemo.pipeline.probe import ffmpeg_source, probe_clip
    noface, noaudio = (to_tensors(r, 4, 300, False) for r in _raw_samples(built_shards, ["dia902_utt0", "dia903_utt0"]))
    assert not noface["face_mask"].any() and noface["mel"].shape[1] > 0
    assert noaudio["face_mask"].any() and noaudio["mel"].shape[1] == 0
    clip = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:d=2", "-f", "lavfi", "-i",
                    "anullsrc=r=16000:cl=mono", "-t", "2", "-shortest", str(clip)], check=True)
    cfg = BuildConfig()
    decoded = decode_clip(ffmpeg_source(clip), plan_decode(probe_clip(clip, cfg.probe, cfg.audio), cfg.decode))
    assert decoded.audio is not None and np.abs(decoded.audio).max() == 0
    silent = dict(noface, key="silent", mel=torch.from_numpy(log_mel(decoded.audio, 16000, AudioConfig()).astype(np.float32)))
    batch = collate([noface, noaudio, silent])
    model = AVEmotionNet(ModelConfig(face_trainable="none")).train()
    logits = model(batch["faces"], batch["face_mask"], batch["mel"], batch["mel_mask"])
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([4, 6, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_model_is_light():
    model = AVEmotionNet(ModelConfig())
    assert count_parameters(model) < 5_000_000
    assert 1e9 < flops_per_clip(model, frames=16) < 20e9


def test_flops_dummy_inputs_follow_the_model_device():
    """The loop counts FLOPs after model.to(device): the dummy clip must be made on the parameters' device
    (a CUDA run crashed with a device mismatch). "meta" stands in for a device other than the CPU."""
    model = AVEmotionNet(ModelConfig(face_trainable="none")).to(torch.device("cpu"))
    on_cpu = flops_per_clip(model, frames=4)
    on_meta = flops_per_clip(model.to("meta"), frames=4)   # failed: "Tensor on device meta is not on ... cpu"
    assert on_meta == pytest.approx(on_cpu, rel=0.05)


def test_one_forward_is_embed_faces_then_forward_from_embeddings(built_shards):
    """forward (modality dropout aside) is exactly the two halves that evaluate and predict call."""
    batch = next(iter(eval_loader(split_shards(built_shards, "train").urls, 4, 0, 4, 300)))
    model = AVEmotionNet(ModelConfig(face_trainable="none")).eval()
    args = (batch["face_mask"], batch["mel"], batch["mel_mask"])
    with torch.inference_mode():
        assert torch.equal(model(batch["faces"], *args),
                           model.forward_from_embeddings(model.embed_faces(batch["faces"]), *args))


def test_frame_and_mel_helpers_shared_with_predict():
    np.testing.assert_array_equal(frame_indices(3, 4), [0, 1, 2])
    np.testing.assert_array_equal(frame_indices(10, 4), [0, 3, 6, 9])
    mel = torch.arange(20.0).view(2, 10)
    assert torch.equal(crop_mel(mel, 4), mel[:, :4]) and crop_mel(mel, 10) is mel
    torch.manual_seed(0)
    crops = {int(crop_mel(mel, 4, random_crop=True)[0, 0]) for _ in range(50)}
    assert crops <= set(range(7)) and len(crops) > 1


def test_bench_step_is_the_training_loops_step(monkeypatch):
    """bench/common.py times avemo.train.loop.train_step itself, with the training defaults (no copy to drift)."""
    import importlib.util
    from pathlib import Path
    import avemo.train.loop
    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[1] / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    calls = []
    real = avemo.train.loop.train_step
    monkeypatch.setattr(avemo.train.loop, "train_step", lambda *a, **k: calls.append(a) or real(*a, **k))
    model = AVEmotionNet(ModelConfig(face_trainable="none")).train()
    opt = make_optimizer(model, TrainConfig())
    g = torch.Generator().manual_seed(0)
    batch = {"faces": torch.randint(0, 256, (2, 3, 3, 112, 112), dtype=torch.uint8, generator=g),
             "face_mask": torch.ones(2, 3, dtype=torch.bool), "mel": torch.randn(2, 64, 128, generator=g),
             "mel_mask": torch.ones(2, 128, dtype=torch.bool), "label": torch.tensor([0, 4])}
    for _ in range(2):
        loss = common.train_step(model, opt, batch)
    assert len(calls) == 2 and torch.is_tensor(loss) and torch.isfinite(loss)
    _, optimizer, scheduler, _, optim, weights, _ = calls[0]
    assert optimizer is opt and optim == TrainConfig().optim and torch.equal(weights, torch.ones(7))
    assert scheduler is calls[1][2] and scheduler.last_epoch == 2          # one schedule, stepped per step


def test_overfits_a_handful_of_real_samples(built_shards, tmp_path):
    run = tmp_path / "overfit"
    cfg = train_cfg(built_shards, run, "optim.epochs=40", "optim.lr=0.003", "optim.warmup_epochs=0.2",
                    "data.max_frames=1",   # fitting is the loop's job, not the frame count's: 1 frame, 2.5x faster
                    "augment.enabled=false", "model.modality_dropout=0.0", "model.dropout=0.0",
                    "optim.weight_decay=0.0", "imbalance=none", "eval_every=40")
    run_train(cfg)
    metrics = run_evaluate(load_config(EvalConfig, "evaluate", None, ["device=cpu", "workers=0"], {
        "shards": str(built_shards), "checkpoint": str(run / "last.pt"), "split": "train", "out": str(tmp_path / "e")}))
    assert metrics["accuracy"] >= 0.95, metrics["accuracy"]


def test_resume_reaches_the_same_state(built_shards, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    run_train(train_cfg(built_shards, full, "optim.epochs=3", "data.workers=1"))
    run_train(train_cfg(built_shards, parts, "optim.epochs=3", "data.workers=1", "stop_after_epochs=1"))
    assert load_checkpoint(parts / "last.pt")["epoch"] == 1
    run_train(train_cfg(built_shards, parts, "optim.epochs=3", "data.workers=1"), resume=True)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(parts / "last.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    lines = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "epoch" in r] == [1, 2, 3]
    # the running sums kept on the device: per-step lines (log_every=1) and the epoch means agree
    full_lines = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in full_lines if "epoch" in r]
    steps = [r for r in full_lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, a["step"] + 1))
    per_epoch = a["step"] // 3
    for i, record in enumerate(epochs):
        losses = [r["loss"] for r in steps[i * per_epoch: (i + 1) * per_epoch]]
        assert record["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)   # full batches of 4
        assert 0.0 <= record["train_acc"] <= 1.0 and record["samples_per_s"] > 0


def test_resume_with_other_settings_is_a_one_line_error(trained, built_shards, tmp_path, capsys):
    """The checkpoint's model shape, batch size and optimiser settings must match, or the restored weights,
    optimiser and LR schedule would not fit: one line naming what changed, RUN untouched."""
    import shutil
    from conftest import command
    main = command("train")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(trained / "last.pt", run / "last.pt")
    (run / "config.yaml").write_text("as trained\n")
    base = ["--shards", str(built_shards), "--run", str(run), "--resume", *TINY, "optim.epochs=2"]
    code = main([*base, "model.hidden=256", "data.batch_size=8", "optim.lr=0.002"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"avemo train: error: cannot resume from {run / 'last.pt'}: it was trained with other settings "
        "(data.batch_size 4 -> 8, optim.lr 0.001 -> 0.002, model.hidden 128 -> 256); "
        "resume with its settings or start a new run"], err
    assert (run / "config.yaml").read_text() == "as trained\n"
    # model.face_weights only seeds a new run: another value resumes (here: nothing left to do)
    assert main([*base, "model.face_weights="]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_device_cuda_without_cuda_is_a_one_line_error(trained, built_shards, tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")          # no CUDA device, on any machine
    commands = {
        "train": ["--shards", str(built_shards), "--run", str(tmp_path / "run"), *TINY, "device=cuda"],
        "evaluate": ["--shards", str(built_shards), "--checkpoint", str(trained / "last.pt"), "--out",
                     str(tmp_path / "eval"), "device=cuda"],
    }
    for command, args in commands.items():
        result = subprocess.run([sys.executable, "-m", "avemo", command, *args], capture_output=True,
                                text=True, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"avemo {command}: error: device=cuda but no CUDA device is visible (use device=cpu or device=auto)"]
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "eval").exists()


def test_evaluate_embeds_each_batch_once_for_all_modes(trained, built_shards):
    """The ablation's three modes share one face embedding per batch and give what a full forward per mode
    gives."""
    model = model_from_checkpoint(load_checkpoint(trained / "last.pt"))
    urls = split_shards(built_shards, "dev").urls
    frames = []
    cnn_embed = model.face.cnn_embed                           # what goes through MobileFaceNet
    model.face.cnn_embed = lambda x: frames.append(x.shape[0]) or cnn_embed(x)   # type: ignore[method-assign]
    results = predict(model, eval_loader(urls, 4, 0, 4, 300), torch.device("cpu"), tuple(MODES))
    del model.face.cnn_embed
    n = len(results["both"][0])
    assert sum(frames) == n * 4                                # each clip's 4 frames embedded once, not 3 times
    with torch.inference_mode():
        for batch_i, batch in enumerate(eval_loader(urls, 4, 0, 4, 300)):
            for mode, (use_face, use_audio) in MODES.items():
                logits = model(batch["faces"], batch["face_mask"] & use_face, batch["mel"],
                               batch["mel_mask"] & use_audio)
                rows = slice(batch_i * 4, batch_i * 4 + len(batch["key"]))
                np.testing.assert_array_equal(results[mode][2][rows], torch.softmax(logits.float(), -1).numpy())


def test_evaluate_writes_metrics_equal_to_sklearn(trained, built_shards, tmp_path):
    out = tmp_path / "eval"
    metrics = run_evaluate(load_config(EvalConfig, "evaluate", None, ["device=cpu", "workers=1"], {
        "shards": str(built_shards), "checkpoint": str(trained / "best.pt"), "split": "train", "out": str(out)}))
    assert load_checkpoint(trained / "best.pt")["build"]["decode"]["max_frames"] == 8  # for avemo predict
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["weighted_f1"] == metrics["weighted_f1"]
    pred = pq.read_table(out / "predictions.parquet").to_pydict()
    y, p = np.array(pred["label"]), np.array(pred["pred"])
    probs = np.stack([pred[f"p_{name}"] for name in EMOTIONS], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(1), p)
    labels = list(range(7))
    assert on_disk["n"] == len(y) == split_shards(built_shards, "train").n_samples
    assert on_disk["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert on_disk["weighted_f1"] == pytest.approx(f1_score(y, p, labels=labels, average="weighted", zero_division=0))
    assert on_disk["macro_f1"] == pytest.approx(f1_score(y, p, labels=labels, average="macro", zero_division=0))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for i, name in enumerate(EMOTIONS):
        got = on_disk["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (prec[i], rec[i], f1[i], support[i]))
    assert on_disk["confusion"] == confusion_matrix(y, p, labels=labels).tolist()
    assert set(on_disk["ablation"]) == {"both", "face_only", "audio_only"}
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "evaluate.log", "metrics.json",
                                                     "predictions.parquet"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    p[:100] = y[:100]
    m = classification_metrics(y, p)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=list(range(7)), average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))


def test_a_worker_with_less_than_a_batch_per_pass_still_delivers(built_shards):
    """4 train shards (8+8+8+2 clips), batch 20, 2 workers: each worker's pass holds < 20 samples."""
    cfg = train_cfg(built_shards, "unused", "data.workers=2", "data.batch_size=20")
    split = split_shards(built_shards, "train")
    loader, steps = train_loader(split, cfg.data, cfg.augment, epoch=0, seed=0)
    batches = list(loader)
    assert steps == split.n_samples // 20 == 1 and len(batches) == steps   # was 0 batches before the fix
    assert all(0 < len(b["key"]) <= 20 for b in batches)
