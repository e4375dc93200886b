"""Streaming WebDataset loaders over verified shards, written as one visible list of stages:

    shard list -> detshuffle(epoch) -> split_by_node -> split_by_worker -> tar -> shuffle buffer
    -> safe decode -> augment log-mels -> batch with padding and masks -> augment faces (whole batch)

Epoch arithmetic is explicit: each rank takes `steps = train samples // (batch x ranks)` batches per
epoch from an endless, per-epoch-seeded stream, so all ranks step together and resume is exact.
The training loader is built once: its workers persist across epochs and read the epoch number from a
SharedEpoch (open_clip's pattern), which seeds the shard order, the shuffle buffer and (in workers) the
augmentation draws per (seed, epoch, rank, worker), so no epoch pays the workers' start-up again.
"""
from __future__ import annotations

import functools
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import webdataset as wds

from avemo.core import storage
from avemo.core.errors import ConfigError, DataError
from avemo.core.memory import release_free_memory
from avemo.model.inputs import collate, to_tensors
from avemo.shards.format import KEY_RE
from avemo.shards.labels import EMOTIONS
from avemo.shards.manifest import CorruptShardError, read_manifest, shards_for_split, verify_shards
from avemo.shards.streaming import verified_samples
from avemo.shards.tar_reader import bounded_tarfile_to_samples
from avemo.train.augment import augment_batch, augment_sample
from avemo.train.config import AugmentConfig, DataConfig

TRAIN_HINT = "set data.corrupt_shards=skip to train without it"   # ends a corrupt-shard error
log = logging.getLogger("avemo.data")


class EmptySplitError(DataError):
    """The manifest lists no ok sample for the split asked for."""


class ShardList(list):
    """Shard paths or URLs. For URLs it also carries how to verify them while they stream (the manifest's
    sha256 per URL, corrupt_shards, storage options): the loaders below read it from here."""
    checksums: dict[str, str] = {}
    policy: str = "stop"
    options: dict = {}
    hint: str = ""


@dataclass
class SplitShards:
    urls: list[str]
    n_samples: int
    label_counts: list[int]   # per emotion id, ok rows of the split
    listed: dict[str, frozenset] | None = None   # shard file name -> keys the manifest lists ok in it
    audio_shards: frozenset | None = None        # shard file names with an ok sample with audio (None: not recorded)

    def audio_urls(self) -> "ShardList":
        """The shards that hold a voice (a set of images has none): what a pass over the voices reads."""
        if self.audio_shards is None:
            return self.urls   # type: ignore[return-value]
        out = ShardList(u for u in self.urls if str(u).rsplit("/", 1)[-1] in self.audio_shards)
        out.__dict__.update(getattr(self.urls, "__dict__", {}))   # a URL list's checksums, policy, options
        return out


def present_shards(shard_dir: str, expected: dict[str, str], policy: str, log_fn, hint: str,
                   options: dict | None) -> list[str]:
    """A bucket's shards are verified as they stream (shards/streaming.py), not downloaded twice: here only
    that each one exists (one listing), with corrupt_shards deciding about a missing one."""
    listed = set(storage.list_names(shard_dir, "*.tar", options))
    for name in sorted(set(expected) - listed):
        message = f"shard {storage.join(shard_dir, name)} is missing"
        if policy == "stop":
            raise CorruptShardError(f"{message} ({hint})" if hint else message)
        log_fn(f"warning: {message}; skipping it")
    return [name for name in expected if name in listed]


def split_shards(shard_dir: str | Path, split: str, policy: Literal["stop", "skip"] = "stop", log_fn=print,
                 hint: str = TRAIN_HINT, options: dict | None = None) -> SplitShards:
    """The verified shards of one split (local: each hashed once against the manifest; URL: checked while
    it streams); `hint` ends the error of a bad shard with the calling command's setting."""
    table = read_manifest(shard_dir, options)
    expected = shards_for_split(table, split)
    if not expected:
        raise EmptySplitError(f"no ok samples for split '{split}' in {storage.join(shard_dir, 'manifest.parquet')}")
    remote = storage.is_url(shard_dir)
    if remote:
        good = set(present_shards(str(shard_dir), expected, policy, log_fn, hint, options))
    else:
        good = set(verify_shards(shard_dir, expected, policy=policy, log=log_fn, hint=hint))
    rows = [r for r in table.select(["split", "status", "shard", "label"]).to_pylist()
            if r["split"] == split and r["status"] == "ok" and r["shard"] in good]
    counts = [0] * len(EMOTIONS)
    for r in rows:
        counts[r["label"]] += 1
    keyed = table.select(["split", "status", "shard", "key"]).to_pylist()
    listed = {name: frozenset(r["key"] for r in keyed if r["split"] == split and r["status"] == "ok"
                              and r["shard"] == name) for name in good}
    audio = None
    if "has_audio" in table.column_names:
        audio = frozenset(r["shard"] for r in table.select(["split", "status", "shard", "has_audio"]).to_pylist()
                          if r["split"] == split and r["status"] == "ok" and r["has_audio"] and r["shard"] in good)
    urls = ShardList(storage.join(shard_dir, name) for name in sorted(good))
    if remote:
        urls.checksums = {storage.join(shard_dir, name): expected[name] for name in good}
        urls.policy, urls.options, urls.hint = policy, dict(options or {}), hint
    return SplitShards(urls, len(rows), counts, listed, audio)


def read_shards(urls: list[str]):
    """The tar -> samples stage: local verified files through the bounded tar reader (member sizes checked
    before reading), URLs verified as they stream."""
    if not getattr(urls, "checksums", None):
        return bounded_tarfile_to_samples(handler=skip_bad_sample)
    return wds.pipelinefilter(verified_samples)(urls.checksums, urls.policy, urls.options,  # type: ignore[attr-defined]
                                                urls.hint)  # type: ignore[attr-defined]


def listed_samples(listed: dict[str, frozenset] | None):
    """webdataset stage: only samples the manifest lists (ok) in the shard they come from, each once (per
    reader). An unlisted or repeated sample is skipped with a warning, like a sample that fails decoding."""
    def stage(src):
        seen: set = set()
        for sample in src:
            name, key = Path(str(sample.get("__url__", ""))).name, sample.get("__key__")
            if not isinstance(key, str) or not KEY_RE.match(key):
                yield sample      # decode_sample refuses it, naming the bad key
            elif listed is not None and key not in listed.get(name, ()):
                log.warning("skipping sample %r of %s: the manifest does not list it in that shard", key, name)
            elif (name, key) in seen:
                log.warning("skipping sample %r of %s: a second copy of it", key, name)
            else:
                seen.add((name, key))
                yield sample
    return stage


def skip_bad_sample(exn: Exception) -> bool:
    """webdataset handler: a sample that fails safe decoding is reported and skipped."""
    log.warning("skipping a sample: %s", exn)
    return True


class SharedEpoch:
    """The epoch number, shared with persistent DataLoader workers (a process-shared integer)."""

    def __init__(self, epoch: int = 0):
        import multiprocessing
        self.value = multiprocessing.Value("i", epoch)

    def set_value(self, epoch: int) -> None:
        self.value.value = epoch

    def get_value(self) -> int:
        return self.value.value


AUGMENT_STREAM, MIX_STREAM, SHARD_STREAM, SAMPLE_STREAM = 1, 2, 3, 4   # tags that keep the seeded streams apart


def stream_seed(*parts: int) -> int:
    """A 32-bit seed from integers, the same in every process: a tuple of ints hashes without Python's
    per-process string hash salt (PYTHONHASHSEED), so a run resumed in a new process draws what the
    uninterrupted run drew."""
    if not all(isinstance(p, int) for p in parts):
        raise TypeError("stream_seed takes integers only (a str would hash differently in every process)")
    return hash(tuple(parts)) & 0xFFFFFFFF


def _epoch_of(epoch: int | SharedEpoch) -> int:
    return epoch.get_value() if isinstance(epoch, SharedEpoch) else epoch


class _EpochShardShuffle(wds.PipelineStage):
    """wds.detshuffle over the shard list, seeded by (seed, epoch, pass): the same order on every rank and
    worker (split_by_node/split_by_worker come after it), another order for every pass of a set that a mix
    repeats within an epoch; the epoch is read when a pass starts (a new epoch restarts the pass count). In a worker, the first pass of an epoch also seeds
    torch's RNG (the augmentation draws) from (seed, epoch, rank, worker), so a resumed run draws the
    same augmentations as an uninterrupted one although its workers were started at another epoch."""

    def __init__(self, n: int, seed: int, epoch: int | SharedEpoch):
        self.n, self.seed, self.epoch, self.current, self.passes = n, seed, epoch, None, 0

    def run(self, src):
        epoch = _epoch_of(self.epoch)
        if epoch != self.current:
            self.current, self.passes = epoch, 0
            if torch.utils.data.get_worker_info() is not None:
                rank, _, worker, _ = wds.utils.pytorch_worker_info()
                torch.manual_seed(stream_seed(self.seed, epoch, rank, worker, AUGMENT_STREAM))
        rng = random.Random(stream_seed(self.seed, epoch, self.passes, SHARD_STREAM))
        self.passes += 1
        return wds.filters._shuffle(src, self.n, self.n, rng)


class _SeededShuffle(wds.PipelineStage):
    """Sample shuffle buffer seeded by (seed, epoch, rank, worker, pass): reproducible, different per worker
    and per pass (a worker with one shard, repeated by a mix, would otherwise yield the same order again)."""

    def __init__(self, bufsize: int, seed: int, epoch: int | SharedEpoch):
        self.bufsize, self.seed, self.epoch, self.current, self.passes = bufsize, seed, epoch, None, 0

    def run(self, src):
        epoch = _epoch_of(self.epoch)
        if epoch != self.current:
            self.current, self.passes = epoch, 0
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(stream_seed(self.seed, epoch, rank, worker, self.passes, SAMPLE_STREAM))
        self.passes += 1
        return wds.shuffle(self.bufsize, min(self.bufsize, 100), rng=rng)(src)


def effective_workers(n_shards: int, world: int, wanted: int, what: str = "") -> int:
    if n_shards < world:
        raise ConfigError(f"{what}{n_shards} shard(s) cannot feed {world} ranks: every rank needs at least one shard "
                         f"(rebuild with a smaller shards.max_clips, or use fewer ranks)")
    return min(wanted, n_shards // world)


def _sample_stages(split: SplitShards, data: DataConfig, aug: AugmentConfig, epoch: int | SharedEpoch, seed: int,
                   n_mels: int | None, pitch: bool = False) -> list:
    """shard list -> samples with augmented log-mels: the stages of one set's training stream, before batching
    (its faces are augmented per batch, after it: augment_batch)."""
    return [
        wds.SimpleShardList(split.urls),
        _EpochShardShuffle(len(split.urls), seed, epoch),
        wds.split_by_node,
        wds.split_by_worker,
        read_shards(split.urls),
        listed_samples(split.listed),
        _SeededShuffle(data.shuffle_buffer, seed, epoch),
        wds.map(functools.partial(to_tensors, max_frames=data.max_frames, max_mel=data.max_mel_frames,
                                  random_crop=True, n_mels=n_mels, pitch=pitch), handler=skip_bad_sample),
        wds.map(functools.partial(augment_sample, cfg=aug)),
    ]


class _ForkFromTrimmedHeap(torch.utils.data.DataLoader):
    """Hands the process's free heap pages back before its workers fork. A worker shares the parent's
    pages copy-on-write, and every page the parent rewrites afterwards (the next steps' activations on a
    heap that keeps its high-water mark, avemo/core/memory.py) stays behind as the worker's own copy: a
    dev loader's persistent workers, forked after the first epoch, each came to hold a snapshot of the
    trainer's heap (bench/results/train_memory.md). The dev loaders now fork theirs for each scoring, each
    time after this trim (bench/results/train_memory_devloader.md)."""

    def _get_iterator(self):
        if self.num_workers > 0:
            release_free_memory()
        return super()._get_iterator()


class WebLoader(wds.WebLoader):
    """wds.WebLoader over _ForkFromTrimmedHeap."""

    def __init__(self, *args, **kwargs):
        wds.DataPipeline.__init__(self, _ForkFromTrimmedHeap(*args, **kwargs))


def _train_web_loader(dataset, workers: int, steps: int, data: DataConfig, epoch: int | SharedEpoch,
                      seed: int) -> WebLoader:
    loader = WebLoader(dataset, batch_size=None, num_workers=workers,
                       persistent_workers=workers > 0 and isinstance(epoch, SharedEpoch),
                       pin_memory=data.pin_memory and torch.cuda.is_available(),
                       # the workers' base seed from a private generator: creating the loader (once,
                       # or again on resume) never draws from the training RNG
                       generator=torch.Generator().manual_seed(seed))
    return loader.with_epoch(steps)


def epoch_steps(splits: list[SplitShards], batch_size: int, world: int = 1, epoch_samples: int = 0) -> int:
    """Batches per epoch on each rank: as many as epoch_samples (data.epoch_samples), or when that is 0 the
    sets' train samples together, fill, split over the ranks (at least one). The one place this is computed:
    the loaders yield it, the LR schedule is planned over the number they return."""
    total = epoch_samples or sum(s.n_samples for s in splits)
    return max(1, total // (batch_size * world))


def train_loader(split: SplitShards, data: DataConfig, aug: AugmentConfig, epoch: int | SharedEpoch, seed: int,
                 world: int = 1, n_mels: int | None = None, pitch: bool = False) -> tuple[wds.WebLoader, int]:
    """The training stream and its batches per epoch (epoch_steps); with a SharedEpoch it is built once and
    iterated once per epoch (set the epoch first), its workers kept alive between epochs."""
    workers = effective_workers(len(split.urls), world, data.workers)
    steps = epoch_steps([split], data.batch_size, world, data.epoch_samples)
    per_worker = math.ceil(steps / max(1, workers))
    dataset = wds.DataPipeline(
        *_sample_stages(split, data, aug, epoch, seed, n_mels, pitch),
        # partial: a worker whose pass over its shards holds fewer samples than a batch still yields one
        # (otherwise its pass is empty and webdataset stops repeating it: a silently short epoch)
        wds.batched(data.batch_size, collation_fn=collate, partial=True),
        wds.map(functools.partial(augment_batch, cfg=aug)),   # faces: the whole batch at once
    ).with_epoch(per_worker)
    return _train_web_loader(dataset, workers, steps, data, epoch, seed), steps


class MixedSets(torch.utils.data.IterableDataset):
    """Samples from several endless per-set streams: each draw picks set i with probability weights[i].
    The draws are seeded by (seed, epoch, rank, worker), so a run and its resume mix alike. Hand-written
    rather than wds.RandomMix, whose draws come from the process-wide `random` module (not reproducible
    per worker and epoch). A set whose stream yields nothing (every sample skipped) stops being drawn."""

    def __init__(self, sources: list, weights: list[float], seed: int, epoch: int | SharedEpoch):
        super().__init__()
        self.sources, self.weights, self.seed, self.epoch = sources, list(weights), seed, epoch

    def __iter__(self):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(stream_seed(self.seed, _epoch_of(self.epoch), rank, worker, MIX_STREAM))
        streams = [iter(source) for source in self.sources]
        weights = list(self.weights)
        while sum(weights) > 0:
            i = rng.choices(range(len(streams)), weights=weights)[0]
            try:
                yield next(streams[i])
            except StopIteration:
                weights[i] = 0.0


def mix_weights(splits: list[SplitShards], weights: list[float]) -> list[float]:
    """Sampling probability per set: data.weights normalised, or each set's share of the samples."""
    raw = list(weights) if weights else [float(s.n_samples) for s in splits]
    return [w / sum(raw) for w in raw]


def mixed_label_counts(splits: list[SplitShards], probs: list[float]) -> list[float]:
    """Expected samples per class in an epoch of the mix (for the loss's class weights)."""
    total = sum(s.n_samples for s in splits)
    return [sum(p * total * s.label_counts[c] / max(1, s.n_samples) for s, p in zip(splits, probs))
            for c in range(len(EMOTIONS))]


def _set_stream(split: SplitShards, index: int, data: DataConfig, aug: AugmentConfig, epoch: int | SharedEpoch,
                seed: int, n_mels: int | None, pitch: bool = False):
    """One set's endless stream of samples, log-mels augmented (train_loader's stages, without batching)."""
    return wds.DataPipeline(*_sample_stages(split, data, aug, epoch, seed + 1009 * index, n_mels, pitch)).repeat()


def mixed_train_loader(splits: list[SplitShards], data: DataConfig, aug: AugmentConfig, epoch: int | SharedEpoch,
                       seed: int, world: int = 1, n_mels: int | None = None,
                       pitch: bool = False) -> tuple[wds.WebLoader, int]:
    """train_loader over several shard sets mixed by data.weights. An epoch is as many steps as the sets'
    train samples together fill; every worker reads its share of every set's shards."""
    if len(splits) == 1:
        return train_loader(splits[0], data, aug, epoch, seed, world, n_mels, pitch)
    per_set = [effective_workers(len(s.urls), world, data.workers, f"--shards set {i + 1}: ")
               for i, s in enumerate(splits)]
    workers = min(per_set)
    if workers < data.workers:
        log.warning("mixed loader: %d worker(s), not data.workers=%d: a worker reads every set, and set %d has "
                    "%d shard(s) per rank", workers, data.workers, per_set.index(workers) + 1,
                    len(splits[per_set.index(workers)].urls) // world)
    steps = epoch_steps(splits, data.batch_size, world, data.epoch_samples)
    per_worker = math.ceil(steps / max(1, workers))
    sources = [_set_stream(s, i, data, aug, epoch, seed, n_mels, pitch) for i, s in enumerate(splits)]
    dataset = wds.DataPipeline(
        MixedSets(sources, mix_weights(splits, data.weights), seed, epoch),
        wds.batched(data.batch_size, collation_fn=collate, partial=True),
        wds.map(functools.partial(augment_batch, cfg=aug)),   # faces: the whole batch at once
    ).with_epoch(per_worker)
    return _train_web_loader(dataset, workers, steps, data, epoch, seed), steps


def eval_loader(urls: list[str], batch_size: int, workers: int, max_frames: int = 16,
                max_mel: int = 1000, persistent: bool = False, n_mels: int | None = None,
                listed: dict[str, frozenset] | None = None, pitch: bool = False) -> wds.WebLoader:
    """Every sample of the split exactly once, in shard order (rank 0 only); `persistent` keeps the workers
    for the next pass (training's dev loaders do not: train/loop.py dev_loaders); listed: SplitShards.listed."""
    dataset = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        read_shards(urls),
        listed_samples(listed),
        wds.map(functools.partial(to_tensors, max_frames=max_frames, max_mel=max_mel, random_crop=False,
                                  n_mels=n_mels, pitch=pitch),
                handler=skip_bad_sample),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    workers = min(workers, len(urls))
    return WebLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=persistent and workers > 0,
                     pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))


__all__ = ["SharedEpoch", "SplitShards", "split_shards", "epoch_steps", "train_loader", "mixed_train_loader", "MixedSets",
           "mix_weights", "mixed_label_counts", "eval_loader"]
