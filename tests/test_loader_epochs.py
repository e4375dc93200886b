"""No start-up tax per epoch: the training loader is built once, its workers persist across epochs and read
the epoch from a SharedEpoch, and every epoch is shuffled exactly as a loader built for that epoch shuffles it."""
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
