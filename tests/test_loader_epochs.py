"""No start-up tax per epoch: the training loader is built once, its workers persist across epochs and read
the epoch from a SharedEpoch, and every epoch is shuffled exactly as a loader built for that epoch shuffles it.
The dev loaders are built once too, but their workers live only while a scoring runs."""
from __future__ import annotations

import torch

from avemo.train.config import AugmentConfig, DataConfig
from avemo.train.data import SharedEpoch, split_shards, train_loader


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_persistent_workers_see_each_epoch_and_shuffle_it_as_before(built_shards):
    split = split_shards(built_shards, "train")
    data = DataConfig(batch_size=4, workers=2, max_frames=4, max_mel_frames=300, shuffle_buffer=16, pin_memory=False)
    aug = AugmentConfig(enabled=False)
    fresh = [_keys(train_loader(split, data, aug, epoch, 0)[0]) for epoch in range(3)]
    shared = SharedEpoch(0)
    loader, _ = train_loader(split, data, aug, shared, 0)
    dataloader = loader.pipeline[0]                              # wds.WebLoader wraps one torch DataLoader
    seen, workers = [], []
    for epoch in range(3):
        shared.set_value(epoch)
        seen.append(_keys(loader))
        workers.append({w.pid for w in dataloader._iterator._workers if w.is_alive()})
    assert seen == fresh and fresh[0] != fresh[1] != fresh[2]     # the same per-epoch order as before
    assert len(workers[0]) == 2 and workers[0] == workers[1] == workers[2]   # the same 2 worker processes


def test_augmentation_draws_depend_on_the_epoch_not_on_when_workers_started(built_shards):
    """A run resumed at epoch 1 starts its workers there; its epoch-1 augmentations must equal those of a
    run whose workers started at epoch 0 (exact resume)."""
    split = split_shards(built_shards, "train")
    data = DataConfig(batch_size=4, workers=1, max_frames=4, max_mel_frames=300, shuffle_buffer=16, pin_memory=False)
    aug = AugmentConfig()
    shared = SharedEpoch(0)
    long_run, _ = train_loader(split, data, aug, shared, 0)
    list(long_run)
    shared.set_value(1)
    a = next(iter(long_run))
    resumed, _ = train_loader(split, data, aug, SharedEpoch(1), 0)
    b = next(iter(resumed))
    assert a["key"] == b["key"] and torch.equal(a["faces"], b["faces"]) and torch.equal(a["mel"], b["mel"])


def test_dev_loaders_fork_their_workers_for_each_scoring_and_end_them_after_it(built_shards, tmp_path):
    """Training's dev loaders are built once; their workers live only while a scoring runs (persistent ones,
    forked after the first epoch, came to hold a snapshot of the trainer's heap: bench/results/
    train_memory_devloader.md), and every scoring still reads the whole split."""
    import types

    import psutil

    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.data import split_shards
    from avemo.train.loop import dev_loaders
    cfg = load_config(TrainConfig, "train", None, ["data.workers=2", "data.batch_size=2"],
                      {"shards": str(built_shards), "run": str(tmp_path / "run")})
    split = split_shards(built_shards, cfg.eval_split, log_fn=lambda *a, **k: None)
    [loader] = dev_loaders(types.SimpleNamespace(cfg=cfg, main=True, eval_splits=[split]))
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    for _ in range(2):
        seen, during = 0, set()
        for batch in loader:
            seen += len(batch["label"])
            during |= {p.pid for p in me.children()} - before
        assert seen == split.n_samples
        assert during, "the scoring ran without worker processes"
        assert not ({p.pid for p in me.children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
                    - before), "a dev loader's worker outlived its scoring"
