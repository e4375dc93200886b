"""Training on several shard sets at once (--shards A --shards B, data.weights), --init-from, and the model
and augmentation options for real faces and voices (face_trainable=last, grey faces, speed and noise)."""
from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from avemo.model.mobilefacenet import MobileFaceNet
from avemo.model.net import AVEmotionNet, ModelConfig
from avemo.train.augment import augment_faces, augment_mel
from avemo.train.config import AugmentConfig, TrainConfig
from avemo.train.data import MixedSets, SplitShards, mix_weights, mixed_label_counts
from tests.conftest import command, session_scheduler
from tiny_model import TINY


# ------------------------------------------------------------------ pure logic

@pytest.mark.unit
def test_mix_draws_by_weight_reproducibly_and_drops_an_exhausted_set():
    sources = [[("a", i) for i in range(10_000)], [("b", i) for i in range(10_000)], [("c", i) for i in range(3)]]
    mix = MixedSets(sources, [0.6, 0.3, 0.1], seed=1, epoch=0)
    draws = [name for name, _ in mix]
    counts = Counter(draws)
    assert counts["c"] == 3                               # exhausted after its 3 samples: never drawn again
    first = Counter(name for name, _ in list(MixedSets(sources[:2], [0.6, 0.3], seed=1, epoch=0))[:3000])
    assert abs(first["a"] / 3000 - 2 / 3) < 0.03 and abs(first["b"] / 3000 - 1 / 3) < 0.03
    assert draws == [name for name, _ in MixedSets(sources, [0.6, 0.3, 0.1], seed=1, epoch=0)]   # seeded
    assert draws != [name for name, _ in MixedSets(sources, [0.6, 0.3, 0.1], seed=1, epoch=1)]   # per epoch
    assert Counter(n for n, _ in MixedSets(sources, [0, 1, 0], seed=0, epoch=0)) == {"b": 10_000}


@pytest.mark.unit
def test_mix_weights_and_the_class_counts_of_the_mix():
    a = SplitShards([], 100, [100, 0, 0, 0, 0, 0, 0])
    b = SplitShards([], 300, [0, 150, 150, 0, 0, 0, 0])
    assert mix_weights([a, b], []) == [0.25, 0.75]              # by size
    assert mix_weights([a, b], [1, 1]) == [0.5, 0.5]
    counts = mixed_label_counts([a, b], [0.5, 0.5])             # 400 samples an epoch, half from each set
    assert counts[:3] == [200.0, 100.0, 100.0] and sum(counts) == 400


@pytest.mark.unit
def test_shards_may_be_one_folder_or_several_and_weights_must_match():
    from avemo.core.config import load_config
    from avemo.core.errors import ConfigError
    assert TrainConfig(shards="s").shards == ["s"] and TrainConfig().shards == []
    cfg = load_config(TrainConfig, "train", None, ["data.weights=[2,1]"], {"shards": ["a", "b"], "run": "r"})
    assert cfg.shards == ["a", "b"] and cfg.data.weights == [2.0, 1.0]
    with pytest.raises(ConfigError, match="data.weights has 1 value"):
        load_config(TrainConfig, "train", None, ["data.weights=[1]"], {"shards": ["a", "b"], "run": "r"})
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(shards=["a", "a"])
    with pytest.raises(ConfigError, match="positive sum"):
        load_config(TrainConfig, "train", None, ["data.weights=[0,0]"], {"shards": ["a", "b"], "run": "r"})


@pytest.mark.unit
def test_face_trainable_last_trains_only_the_last_blocks_and_keeps_the_rest_frozen():
    model = AVEmotionNet(ModelConfig(face_trainable="last", face_train_blocks=3, modality_dropout=0)).train()
    blocks = model.face.cnn.blocks()
    assert len(blocks) == 21
    frozen = {id(p) for b in blocks[:-3] for p in b.parameters()}
    trained = {id(p) for b in blocks[-3:] for p in b.parameters()}
    face_params = {id(p): p.requires_grad for p in model.face.cnn.parameters()}
    assert all(not face_params[i] for i in frozen) and all(face_params[i] for i in trained)
    assert not blocks[0].training and not blocks[-4].training and blocks[-1].training   # frozen BN statistics kept
    faces = torch.randint(0, 255, (2, 3, 3, 112, 112), dtype=torch.uint8)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    model(faces, mask, torch.randn(2, 64, 80), torch.ones(2, 80, dtype=torch.bool)).sum().backward()
    assert all(p.grad is None for b in blocks[:-3] for p in b.parameters())
    assert all(p.grad is not None for b in blocks[-3:] for p in b.parameters())
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


@pytest.mark.unit
@pytest.mark.parametrize("n_faces", [0, 1])
def test_a_training_batch_with_fewer_than_two_faces_still_trains_every_face_weight(n_faces):
    """BatchNorm in training needs >= 2 frames and DDP a gradient for every trainable weight: a batch from a
    voice-only set, or with one face left, runs two frames through the face CNN."""
    model = AVEmotionNet(ModelConfig(face_trainable="all", modality_dropout=0)).train()
    faces = torch.randint(0, 255, (2, 3, 3, 112, 112), dtype=torch.uint8)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, 0] = n_faces == 1
    model(faces, mask, torch.randn(2, 64, 80), torch.ones(2, 80, dtype=torch.bool)).sum().backward()
    assert all(p.grad is not None for p in model.face.cnn.parameters())


@pytest.mark.unit
def test_only_frames_with_a_face_are_embedded_and_the_result_equals_the_dense_pass():
    model = AVEmotionNet(ModelConfig(face_trainable="none")).eval()
    faces = torch.randint(0, 255, (3, 4, 3, 112, 112), dtype=torch.uint8)
    mask = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, False]])
    calls = []
    cnn_embed = model.face.cnn_embed                       # what goes through MobileFaceNet
    model.face.cnn_embed = lambda x: calls.append(x.shape[0]) or cnn_embed(x)   # type: ignore[method-assign]
    with torch.no_grad():
        sparse = model.embed_faces(faces, mask)
        dense = model.embed_faces(faces)
    del model.face.cnn_embed
    assert calls == [4, 12]                                # 4 faces, then all 12 frames
    torch.testing.assert_close(sparse[mask], dense[mask], atol=1e-5, rtol=1e-4)
    assert (sparse[~mask] == 0).all()
    with torch.no_grad():                                   # and the logits do not depend on masked frames
        mel, mel_mask = torch.randn(3, 64, 80), torch.ones(3, 80, dtype=torch.bool)
        torch.testing.assert_close(model(faces, mask, mel, mel_mask),
                                   model.forward_from_embeddings(dense, mask, mel, mel_mask), atol=1e-5, rtol=1e-4)


@pytest.mark.unit
def test_every_pass_of_an_epoch_is_shuffled_anew_and_a_rerun_shuffles_alike():
    """A set that a mix repeats within an epoch (or a worker holding one shard) gets a new shard order and
    a new sample order on every pass; the same (seed, epoch, pass) gives the same order in a new process,
    and the shard order is the same on every rank and worker (they split the list after it)."""
    from avemo.train.data import SharedEpoch, _EpochShardShuffle, _SeededShuffle
    epoch = SharedEpoch(3)
    for stage_of in (lambda: _SeededShuffle(1000, 7, epoch), lambda: _EpochShardShuffle(40, 7, epoch)):
        first, again = stage_of(), stage_of()
        passes = [list(first.run(iter(range(40)))) for _ in range(12)]     # more passes than the old seed's 10
        assert all(sorted(p) == list(range(40)) for p in passes)
        assert len({tuple(p) for p in passes}) == 12
        assert list(again.run(iter(range(40)))) == passes[0]
        epoch.set_value(4)                                                 # a new epoch: new orders, pass 0 again
        next_epoch = list(first.run(iter(range(40))))
        assert next_epoch not in passes and next_epoch == list(stage_of().run(iter(range(40))))
        epoch.set_value(3)


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_utterance_mel_norm_ignores_a_clips_level_and_gain_and_its_padding():
    """model.mel_norm=utterance: each clip's own per-bin mean/std over its valid frames, so a louder speaker
    or another channel (a per-bin offset and scale of the log-mel) gives the same output; global does not."""
    from avemo.model.net import AudioEncoder
    torch.manual_seed(0)
    mel, mask = torch.randn(2, 64, 80), torch.ones(2, 80, dtype=torch.bool)
    mask[1, 50:] = False
    shifted = mel * 1.7 + torch.randn(64, 1) * 3
    shifted[1, :, 50:] = 99.0                                   # padding content must not matter
    utt = AudioEncoder(ModelConfig(mel_norm="utterance")).eval()
    glob = AudioEncoder(ModelConfig(mel_norm="global")).eval()
    glob.load_state_dict(utt.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(utt(mel, mask), utt(shifted, mask), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(glob(mel, mask), glob(shifted, mask), atol=1e-2)
        traced = torch.jit.trace(utt, (mel, mask))             # static shapes: exports like the global one
        torch.testing.assert_close(traced(shifted, mask), utt(shifted, mask))


@pytest.mark.unit
def test_grey_speed_and_noise_augmentations():
    torch.manual_seed(0)
    faces = torch.randint(0, 255, (2, 3, 112, 112), dtype=torch.uint8)
    grey = augment_faces(faces, AugmentConfig(grey_p=1.0, flip_p=0, brightness=0, contrast=0, saturation=0,
                                              rotate_deg=0, translate=0, scale=0))
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all() and not (faces[:, 0] == faces[:, 1]).all()
    quiet = dict(gain_db=0, freq_masks=0, time_masks=0)
    mel = torch.full((64, 200), -12.0)
    mel[:, 50:150] = 2.0                                    # a loud stretch in silence
    lengths = {augment_mel(mel, AugmentConfig(speed=0.2, **quiet)).shape[1] for _ in range(30)}
    assert min(lengths) >= 166 and max(lengths) == 200 and len(lengths) > 5   # 200 / 1.2, never longer
    noisy = augment_mel(mel, AugmentConfig(noise_p=1.0, noise_snr_db=10.0, **quiet))
    assert (noisy >= mel - 1e-6).all()                      # noise adds power, never removes it
    assert noisy[:, :50].mean() > -12.0 + 5                 # the silence is filled ...
    assert (noisy[:, 50:150] - 2.0).abs().max() < 0.5       # ... the loud part barely changes
    assert torch.equal(augment_mel(mel, AugmentConfig(noise_p=0.0, **quiet)), mel)


# ------------------------------------------------------------------ real shards, real training

def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def build_list(folder: Path, lines: list[str], out: Path, *overrides: str) -> Path:
    (folder / "list.csv").write_text("\n".join(["path,label,split,key", *lines]) + "\n", encoding="utf-8")
    code = command("build-shards")(["--list", str(folder / "list.csv"), "--out", str(out),
                                    f"scheduler={session_scheduler()}", "shards.max_clips=4", *overrides])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    """An audio-only set: spoken sentences (espeak-ng), train and dev."""
    folder = tmp_path_factory.mktemp("voices")
    lines = []
    for i, (label, split) in enumerate([("joy", "train"), ("anger", "train"), ("sadness", "train"),
                                        ("joy", "train"), ("anger", "dev"), ("sadness", "dev")]):
        wav = folder / f"v{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), "-s", str(120 + 30 * i), f"sentence number {i} for {label}"],
                       check=True)
        lines.append(f"{wav.name},{label},{split},voice{i}")
    return build_list(folder, lines, folder / "shards")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, shared) -> Path:
    """An image-only set: real FER2013 faces (from ../shared, never copied into the repository)."""
    folder = tmp_path_factory.mktemp("faces")
    fer = shared / "data" / "fer2013" / "validation"
    if not fer.is_dir():
        pytest.skip(f"{fer} is absent (the real FER2013 faces of ../shared/data)")
    lines = []
    for cls, label in (("happy", "joy"), ("angry", "anger"), ("sad", "sadness")):
        for j, path in enumerate(sorted((fer / cls).glob("*.jpg"))[:3]):
            lines.append(f"{path},{label},{'dev' if j == 2 else 'train'},{cls}{j}")
    return build_list(folder, lines, folder / "shards")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, built_shards, voices, faces) -> Path:
    run = tmp_path_factory.mktemp("mixed_run")
    code = command("train")(["--shards", str(built_shards), "--shards", str(voices), "--shards", str(faces),
                             "--run", str(run), *TINY, "optim.epochs=1", "data.weights=[2,1,1]",
                             "model.face_trainable=last", "model.face_train_blocks=2", "augment.grey_p=0.5",
                             "augment.speed=0.1", "augment.noise_p=0.3", "augment.mixup=0.4"])
    assert code == 0
    return run


def test_several_sets_train_together_and_each_dev_split_is_scored(mixed_run, built_shards, voices, faces):
    record = read_jsonl(mixed_run / "metrics.jsonl")[-1]
    names = [built_shards.name, "shards", "shards_2"]      # the folders' names, made unique
    for name in names:
        assert 0.0 <= record[f"dev_{name}_accuracy"] <= 1.0 and f"dev_{name}_weighted_f1" in record
    assert record["dev_weighted_f1"] == record[f"dev_{built_shards.name}_weighted_f1"]   # the first picks best.pt
    config = yaml.safe_load((mixed_run / "config.yaml").read_text())
    assert config["train"]["shards"] == [str(built_shards), str(voices), str(faces)]
    shas = config["train"]["shards_sha256"].split(",")
    assert len(shas) == 3 and len(set(shas)) == 3 and all(len(s) == 64 for s in shas)
    log = (mixed_run / "train.log").read_text()
    assert "p=0.500" in log and "p=0.250" in log            # data.weights [2,1,1], normalised
    assert (mixed_run / "best.pt").is_file()


def test_the_mixed_stream_holds_samples_of_every_weighted_set_and_none_of_a_zero_weight_one(built_shards, voices, faces):
    from avemo.train.config import DataConfig
    from avemo.train.data import mixed_train_loader, split_shards
    splits = [split_shards(s, "train") for s in (built_shards, voices, faces)]
    keys_of = [set().union(*s.listed.values()) for s in splits]

    def keys(weights):
        data = DataConfig(batch_size=4, workers=0, max_frames=4, max_mel_frames=300, shuffle_buffer=8,
                          pin_memory=False, weights=weights)
        loader, steps = mixed_train_loader(splits, data, AugmentConfig(enabled=False), epoch=0, seed=0)
        batches = list(loader)
        assert len(batches) == steps == sum(s.n_samples for s in splits) // 4
        return [k for b in batches for k in b["key"]]

    seen = keys([1, 1, 1])
    assert all(any(k in ks for k in seen) for ks in keys_of)
    only_voices = keys([0, 1, 0])
    assert set(only_voices) <= keys_of[1]


def test_init_from_starts_a_new_run_from_another_runs_weights(mixed_run, built_shards, tmp_path):
    from avemo.model.checkpoint import load_checkpoint
    source = load_checkpoint(mixed_run / "best.pt")["model"]
    run = tmp_path / "finetune"
    # a learning rate too small to move the weights: after an epoch they are still the source's
    code = command("train")(["--shards", str(built_shards), "--run", str(run), "--init-from",
                             str(mixed_run / "best.pt"), *TINY, "optim.epochs=1", "optim.lr=1e-9",
                             "model.modality_dropout=0"])
    assert code == 0
    tuned = load_checkpoint(run / "last.pt")["model"]
    for key in ("head.0.weight", "audio.lstm.weight_ih_l0", "face.lstm.weight_hh_l0", "audio.mel_mean"):
        torch.testing.assert_close(tuned[key], source[key], atol=1e-5, rtol=0)
    assert f"model initialised from {mixed_run / 'best.pt'}" in (run / "train.log").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init_from"] == str(mixed_run / "best.pt")


def test_voice_stats_is_fitted_on_the_train_voices_alone_and_travels_in_the_checkpoint(mixed_run, voices, faces,
                                                                                       tmp_path, capsys):
    import functools

    from avemo.core.config import load_config
    from avemo.model.checkpoint import load_checkpoint
    from avemo.train.data import split_shards
    from avemo.train.loop import class_weights
    from avemo.train.voice_stats import fit_voice_stats
    splits = [split_shards(s, "train") for s in (voices, faces)]
    assert list(splits[0].audio_urls()) == list(splits[0].urls) and list(splits[1].audio_urls()) == []  # images
    cfg = load_config(TrainConfig, "train", None, [*TINY, "model.voice_stats=1"], {"shards": str(faces), "run": "r"})
    said: list[str] = []
    assert fit_voice_stats(splits[1:], cfg, functools.partial(class_weights, mode="none"), said.append) is None
    assert "is not fitted: 0 train clips with audio" in said[0]
    run = tmp_path / "voted"
    # from a run without the classifier (--init-from): the new run fits its own on its train voices
    code = command("train")(["--shards", str(voices), "--shards", str(faces), "--run", str(run), "--init-from",
                             str(mixed_run / "best.pt"), *TINY, "optim.epochs=1", "model.voice_stats=1.0"])
    assert code == 0
    assert "model.voice_stats: fitted on 4 train clips with audio" in (run / "train.log").read_text()
    state = load_checkpoint(run / "last.pt")["model"]
    assert state["voice_stats.weight"].abs().sum() > 0 and state["voice_stats.std"].shape == (128,)
    capsys.readouterr()
    assert command("evaluate")(["--shards", str(voices), "--checkpoint", str(run / "last.pt"), "--split", "dev",
                                "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 2
    # from that run onto faces alone: nothing to fit, and the source's classifier is not kept either
    code = command("train")(["--shards", str(faces), "--run", str(tmp_path / "faces"), "--init-from",
                             str(run / "last.pt"), *TINY, "optim.epochs=1", "model.voice_stats=1.0"])
    assert code == 0 and "model.voice_stats is not fitted" in (tmp_path / "faces" / "train.log").read_text()
    assert load_checkpoint(tmp_path / "faces" / "last.pt")["model"]["voice_stats.weight"].abs().sum() == 0


def test_init_from_a_model_of_other_shapes_is_one_line(mixed_run, built_shards, tmp_path, capsys):
    code = command("train")(["--shards", str(built_shards), "--run", str(tmp_path / "r"), "--init-from",
                             str(mixed_run / "best.pt"), *TINY, "model.hidden=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other shapes (model.hidden 128 vs 64)" in err[0]


def test_sets_built_with_other_audio_settings_are_refused(built_shards, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-ar", "16000", str(wav))
    other = build_list(tmp_path, ["a.wav,joy,train,a"], tmp_path / "shards40", "audio.n_mels=40")
    capsys.readouterr()                                      # the build's own output
    code = command("train")(["--shards", str(built_shards), "--shards", str(other), "--run", str(tmp_path / "r"),
                             *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other audio settings" in err[0] and "n_mels 64 vs 40" in err[0]
    # the sample rate is decode:'s: a set of log-mels at 8 kHz is refused beside 16 kHz ones too ...
    slow = build_list(tmp_path, ["a.wav,joy,train,a", "a.wav,joy,dev,b"], tmp_path / "shards8k", "decode.sample_rate=8000")
    capsys.readouterr()
    code = command("train")(["--shards", str(built_shards), "--shards", str(slow), "--run", str(tmp_path / "r2"),
                             *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sample_rate 16000 vs 8000" in err[0]
    # ... and alone, the frequency warp (which reads the bins as a 16 kHz build's) refuses it in one line
    code = command("train")(["--shards", str(slow), "--run", str(tmp_path / "r8"), *TINY, "augment.freq_warp=0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "augment.freq_warp" in err[0] and "8000 Hz" in err[0]
    # ... as does the same warp in use (model.voice_warp_tta)
    code = command("train")(["--shards", str(slow), "--run", str(tmp_path / "r9"), *TINY,
                             "model.voice_warp_tta=[0.9,1.1]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.voice_warp_tta" in err[0] and "8000 Hz" in err[0]


@pytest.mark.unit
def test_stream_seeds_are_the_same_in_every_process():
    """The augmentation, shuffle and mix seeds must not depend on Python's per-process hash salt, or a run
    resumed in a new process would draw other augmentations than the uninterrupted run."""
    import os
    import sys
    code = ("from avemo.train.data import stream_seed, AUGMENT_STREAM, MIX_STREAM;"
            "print(stream_seed(0, 3, 0, 1, AUGMENT_STREAM), stream_seed(5, 1, 2, 0, MIX_STREAM), stream_seed(1, 2))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout for h in (1, 2, 3)}
    assert len(outs) == 1 and len(set(outs.pop().split())) == 3
    with pytest.raises(TypeError):
        from avemo.train.data import stream_seed
        stream_seed(1, "augment")  # type: ignore[arg-type]


def test_a_resumed_mixed_run_equals_the_uninterrupted_one(built_shards, voices, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    args = ["--shards", str(built_shards), "--shards", str(voices), *TINY, "optim.epochs=2", "data.weights=[1,1]",
            "augment.speed=0.1", "augment.noise_p=0.5", "augment.mixup=0.4", "data.workers=2",
            "model.face_trainable=last", "model.face_train_blocks=2"]   # loader workers' seeds; a learning face CNN
    assert command("train")([*args, "--run", str(full)]) == 0
    assert command("train")([*args, "--run", str(parts), "stop_after_epochs=1"]) == 0
    assert command("train")([*args, "--run", str(parts), "--resume"]) == 0
    from avemo.model.checkpoint import load_checkpoint
    a, b = load_checkpoint(full / "last.pt")["model"], load_checkpoint(parts / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_a_resume_on_other_shard_sets_is_one_line(mixed_run, built_shards, voices, capsys):
    before = sorted(p.name for p in mixed_run.iterdir())
    code = command("train")(["--shards", str(built_shards), "--shards", str(voices), "--run", str(mixed_run),
                             "--resume", *TINY, "optim.epochs=2", "data.weights=[2,1]", "model.face_trainable=last",
                             "model.face_train_blocks=2", "augment.grey_p=0.5", "augment.speed=0.1",
                             "augment.noise_p=0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "it was trained on 3 shard set(s)" in err[0] and "--init-from" in err[0]
    assert sorted(p.name for p in mixed_run.iterdir()) == before


def test_a_wrong_init_from_is_one_line_before_the_run_folder_is_touched(built_shards, tmp_path, capsys):
    run = tmp_path / "r"
    code = command("train")(["--shards", str(built_shards), "--run", str(run), "--init-from",
                             str(tmp_path / "nope.pt"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.pt does not exist" in err[0]
    assert not run.exists() or not any(run.iterdir())


def test_both_training_loaders_augment_every_clip_with_a_face_and_no_other(built_shards, voices, faces):
    """Augmentation on vs off, the same stream: each clip with a face gets other face pixels, frames without a
    face stay empty, and voice-only clips keep no face at all (train_loader and the mixed loader alike)."""
    from avemo.train.config import DataConfig
    from avemo.train.data import mixed_train_loader, split_shards, train_loader
    splits = [split_shards(s, "train") for s in (built_shards, voices, faces)]
    data = DataConfig(batch_size=4, workers=0, max_frames=4, max_mel_frames=300, shuffle_buffer=8, pin_memory=False)

    def clips(make, enabled):
        torch.manual_seed(0)
        loader, _ = make(AugmentConfig(enabled=enabled))
        return {k: (b["faces"][i], b["face_mask"][i]) for b in loader for i, k in enumerate(b["key"])}

    for mixed, make in ((False, lambda aug: train_loader(splits[0], data, aug, 0, 0)),
                        (True, lambda aug: mixed_train_loader(splits, data, aug, 0, 0))):
        on, off = clips(make, True), clips(make, False)
        assert on.keys() == off.keys() and len(on) >= 4
        assert any(m.any() for _f, m in off.values())
        assert any(not m.any() for _f, m in off.values()) or not mixed      # the voices: clips without a face
        for key, (face_off, mask) in off.items():
            face_on = on[key][0]
            assert torch.equal(on[key][1], mask)
            assert not face_on[~mask].any() and not face_off[~mask].any()       # no face: an empty frame
            if mask.any():
                assert not torch.equal(face_on[mask], face_off[mask]), key     # augmented
