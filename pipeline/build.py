"""build-shards: MELD CSVs + videos, or a media list -> OUT/{split}-{NNNNNN}.tar + OUT/manifest.parquet,
resumably.

Stages, composed here and nowhere else:
    labels (MELD CSVs or a media list -> rows) -> plan (rows -> shard specs) -> skip finished shards
    -> Dask: probe_shard (any worker) -> build_shard (GPU workers when dask.gpu_resource)
    -> manifest (all part parquets + label rejections) -> summary
"""
from __future__ import annotations

import errno
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
from distributed import as_completed
from tqdm import tqdm

from avemo.core.errors import ConfigError
from avemo.pipeline.cluster import open_client
from avemo.pipeline.config import BuildConfig
from avemo.pipeline.labels import read_label_csv
from avemo.pipeline.media_list import INVALID_SPLIT, read_media_list
from avemo.pipeline.layout import find_csv, find_video_dir, video_path
from avemo.pipeline.out_dir import claim_out, ours, written_in_out, written_in_parts
from avemo.pipeline.probe import safe_resolve
from avemo.pipeline.shard_task import (PROGRESS_TOPIC, ShardSpec, build_shard, check_scorer, fingerprint,
                                       manifest_row, media_settings, probe_shard)
from avemo.core import storage
from avemo.core.logfile import tee
from avemo.core.storage import join
from avemo.core.weights import load_state_dict, resolve_weights
from avemo.shards.manifest import BUILD_CONFIG_NAME, MANIFEST_NAME, make_table, read_table, write_table

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
JPEG_BYTES_PER_FACE = 6_000   # for shard size planning only
SAMPLE_OVERHEAD = 4_000
UNKNOWN_DURATION_S = 5.0      # a media list row without start/end: planned as this long


@dataclass
class BuildSummary:
    rows: int = 0
    ok: int = 0
    rejected: dict = field(default_factory=dict)
    shards_built: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    elapsed_s: float = 0.0
    clips_per_s: float = 0.0
    failures: dict = field(default_factory=dict)   # why shard tasks failed: first line -> count
    rerun_helps: bool = True                       # False when a failure would repeat (a bug or a setting)

    def failure_advice(self) -> str:
        why = "; ".join(f"{n} x {reason}" for reason, n in self.failures.items())
        if self.rerun_helps:
            return (f"{self.shards_failed} shard task(s) failed ({why}); their clips are listed as task_failed in "
                    "the manifest. This looks transient (a worker died, timed out or lost its connection): rerun "
                    "the same command to retry only them")
        return (f"{self.shards_failed} shard task(s) failed ({why}); their clips are listed as task_failed in the "
                "manifest. A rerun would fail the same way: fix the cause above, then rerun the same command "
                "(finished shards are kept)")

    def lines(self) -> list[str]:
        out = [f"rows: {self.rows}  accepted: {self.ok}  rejected: {sum(self.rejected.values())}",
               f"shards: {self.shards_built} built, {self.shards_skipped} already done, {self.shards_failed} failed",
               f"elapsed: {self.elapsed_s:.1f} s  throughput: {self.clips_per_s:.2f} clips/s"]
        out += [f"  rejected {reason}: {n}" for reason, n in sorted(self.rejected.items())]
        return out


def load_rows(cfg: BuildConfig, split: str) -> list[dict]:
    root = Path(cfg.root)
    rows = read_label_csv(find_csv(root, split), split)
    if cfg.limit:
        rows = rows[: cfg.limit]
    video_dir = find_video_dir(root, split)
    for row in rows:
        if row["status"] == "ok":
            path = video_path(video_dir, row["dialogue_id"], row["utterance_id"])
            row["source"] = str(safe_resolve(path)) if path is not None else ""   # a link loop: probe's reason
    return rows


def load_sources(cfg: BuildConfig) -> tuple[dict[str, list[dict]], list[dict]]:
    """({split: label rows}, rows of no valid split): MELD's CSVs (the default) or a media list."""
    if cfg.media_list:
        return read_media_list(cfg.media_list, cfg.splits, cfg.limit)
    if not cfg.root:
        raise ConfigError("no input: give a MELD folder (--root, root=) or a media list (--list, media_list=)")
    return {s: load_rows(cfg, s) for s in cfg.splits}, []


def _estimated_bytes(row: dict, cfg: BuildConfig) -> float:
    if row.get("kind") and row.get("end_s") is None:
        duration = 0.0 if row["kind"] == "image" else UNKNOWN_DURATION_S
    else:
        duration = max(0.0, (row.get("end_s") or 0) - (row.get("start_s") or 0))
    duration = min(duration, cfg.probe.max_duration_s)   # a longer clip is too_long; a part past the end is cut
    frames = min(cfg.decode.max_frames, math.ceil(duration * cfg.decode.fps) + 1)
    mel = min(duration, cfg.decode.max_audio_s) * cfg.decode.sample_rate / cfg.audio.hop_length
    return frames * JPEG_BYTES_PER_FACE + mel * cfg.audio.n_mels * 2 + SAMPLE_OVERHEAD


def plan_shards(rows: list[dict], split: str, cfg: BuildConfig) -> list[ShardSpec]:
    """Deterministic: the same rows and config always give the same shard names and contents."""
    groups: list[list[dict]] = [[]]
    size = 0.0
    limit = cfg.shards.max_mb * 1e6
    for row in (r for r in rows if r["status"] == "ok"):
        est = _estimated_bytes(row, cfg)
        if groups[-1] and (len(groups[-1]) >= cfg.shards.max_clips or size + est > limit):
            groups.append([])
            size = 0.0
        groups[-1].append(row)
        size += est
    config = asdict(cfg)
    return [ShardSpec(name=f"{split}-{i:06d}", split=split, out_dir=storage.normalize(cfg.out), rows=g,
                      config=config, fingerprint=fingerprint(g, cfg))
            for i, g in enumerate(groups) if g]


def is_done(spec: ShardSpec) -> bool:
    """The part parquet is the commit record (written after the tar), locally and in a bucket alike."""
    options = spec.config.get("storage_options")
    part = join(spec.out_dir, "parts", f"{spec.name}.parquet")
    if not storage.exists(part, options):
        return False
    try:
        table = read_table(part, options, columns=["status"])
    except (OSError, pa.ArrowInvalid):
        return False
    if (table.schema.metadata or {}).get(b"fingerprint", b"").decode() != spec.fingerprint:
        return False
    has_ok = "ok" in table["status"].to_pylist()
    return (not has_ok) or storage.exists(join(spec.out_dir, spec.tar_name), options)


# failures a rerun can cure: the machine, not the data or the code (distributed's KilledWorker, comm errors)
TRANSIENT = ("KilledWorker", "CommClosedError", "TimeoutError", "FutureCancelledError", "MemoryError",
             "StreamClosedError", "ConnectionError", "ConnectionResetError", "BrokenPipeError")


def is_transient(exc: BaseException) -> bool:
    return type(exc).__name__ in TRANSIENT or isinstance(exc, (TimeoutError, ConnectionError, MemoryError))


def _failed_rows(spec: ShardSpec, exc: BaseException) -> list[dict]:
    detail = f"{type(exc).__name__}: {exc}"
    return [manifest_row(row, status="rejected", reason="task_failed", detail=detail) for row in spec.rows]


class SettingsMismatchError(ConfigError):
    """OUT keeps shards made with other media settings than this run's; reported as one line."""


def check_kept_settings(out: str, cfg: BuildConfig) -> None:
    """OUT/build_config.json must describe every shard in OUT (training copies it into its checkpoints, so
    `avemo predict` decodes and crops like the shards). Stop, before anything is written, when this run
    would keep shards of other splits that were made with other media settings than this run's."""
    options = cfg.storage_options
    path = join(out, BUILD_CONFIG_NAME)
    kept = sorted({n.split("-")[0] for n in storage.list_names(join(out, "parts"), "*-[0-9]*.parquet", options)}
                  - set(cfg.splits))
    if not kept or not storage.exists(path, options):
        return
    try:
        saved = json.loads(storage.read_bytes(path, options).decode("utf-8"))
    except (OSError, ValueError):
        return  # unreadable: nothing to compare with; this run writes a new one
    # a key newer than the saved build reads as the value such builds had (where it matters: face.speaker=asd)
    before = {("face", "asd_sync_weight"): 0.0} if cfg.face.speaker == "asd" else {}
    before[("audio", "pitch")] = False                       # builds from before audio.pitch stored none
    differ = [f"{section}.{key}={there!r} there, {value!r} now"
              for section, values in media_settings(cfg, bool(cfg.media_list)).items()
              if isinstance(saved.get(section), dict)
              for key, value in values.items()
              for there in [saved[section].get(key, before.get((section, key), value))] if there != value]
    if differ:
        every = [s for s in ("train", "dev", "test") if s in set(cfg.splits) | set(kept)]
        raise SettingsMismatchError(
            f"{out} keeps {' and '.join(kept)} shards built with other media settings ({'; '.join(differ)}), "
            f"which its {BUILD_CONFIG_NAME} could then no longer describe: rebuild every split with these "
            f"settings (--splits {','.join(every)}) or use a new --out")


def _remove_stale(out: str | Path, split: str, keep: set[str], options: dict | None = None) -> None:
    for folder, ext in ((out, "tar"), (join(out, "parts"), "parquet")):
        for name in storage.list_names(folder, f"{split}-*.{ext}", options):
            # only names a build writes: a user's train-photos.tar is not ours and is never deleted
            if name.rsplit(".", 1)[0] not in keep and ours(Path(name)):
                storage.remove(join(folder, name), options)


def clean_temporaries(out: str) -> None:
    """Leftovers of killed writers of a build's own files (a user's `.draft.tmp-1` stays)."""
    storage.clean_temporaries(out, written_in_out)
    storage.clean_temporaries(join(out, "parts"), written_in_parts)


def check_cuda(cfg: BuildConfig, client=None) -> None:
    """face.device=cuda on workers that have no CUDA device: one line before any shard runs (it used to fail
    every shard task after its retries). Local workers share this machine; remote ones are asked."""
    if not cfg.face.device.startswith("cuda"):
        return
    if client is None:
        from avemo.core.config import resolve_device
        resolve_device(cfg.face.device, "face.device")
        return
    seen = client.run(_sees_cuda)
    if not any(seen.values()):
        raise ConfigError(f"face.device={cfg.face.device} but none of the {len(seen)} worker(s) sees a CUDA device "
                          "(use face.device=cpu or face.device=auto, or start GPU workers)")


def _sees_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


class ClipProgress:
    """build-shards' bar, one step per finished clip: shard tasks publish an event per clip
    (shard_task.clip_done); a shard's completion tops its count up to its clips (a retried task's
    repeated events are not counted twice)."""

    def __init__(self, bar, specs: list[ShardSpec], progress=None):
        self.bar, self.progress = bar, progress
        self.size = {s.name: len(s.rows) for s in specs}
        self.seen: Counter = Counter()

    def _advance(self, shard: str, n: int) -> None:
        n = max(0, min(n, self.size.get(shard, 0) - self.seen[shard]))
        if n:
            self.seen[shard] += n
            self.bar.update(n)
            if self.progress is not None:
                self.progress(shard, n)

    def on_event(self, event) -> None:      # (timestamp, shard name), on the client's event loop
        self._advance(event[1], 1)

    def finished(self, shard: str) -> None:
        self._advance(shard, self.size.get(shard, 0))


def run_build(cfg: BuildConfig, log=print, progress=None, scorer=None) -> BuildSummary:
    """`progress(shard, n)`, when given, is called as clips finish (n clips of that shard). `scorer`: the
    active-speaker network that face.speaker=asd needs (model.asd.LightASDScorer; picklable, for the workers)."""
    check_scorer(cfg, scorer)
    t0 = time.perf_counter()
    out, options = storage.normalize(cfg.out), cfg.storage_options
    if not storage.is_url(out):
        claim_out(storage.local(out))   # a non-empty folder that is not a build of ours: one line, nothing touched
    check_kept_settings(out, cfg)
    storage.makedirs(join(out, "parts"))
    clean_temporaries(out)
    if not storage.is_url(out):            # a bucket OUT keeps its log with the caller
        log = tee(log, storage.local(out) / "build.log")

    label_rows, invalid = load_sources(cfg)  # CSV errors stop here
    specs = [spec for s in cfg.splits for spec in plan_shards(label_rows[s], s, cfg)]
    invalid_part = join(out, "parts", f"{INVALID_SPLIT}-labels.parquet")   # a list's rows of no valid split
    if invalid:
        write_table(invalid_part, make_table(invalid), options)
    else:
        storage.remove(invalid_part, options)
    for split in cfg.splits:
        rejected = [r for r in label_rows[split] if r["status"] != "ok"]
        write_table(join(out, "parts", f"{split}-labels.parquet"), make_table(rejected), options)
        _remove_stale(out, split, {s.name for s in specs if s.split == split} | {f"{split}-labels"}, options)

    todo = [s for s in specs if not is_done(s)]
    for spec in todo:  # an older build of it (other rows or settings): its task rewrites both, or fails and
        # its clips are task_failed; the old part must not stay in the manifest beside them, nor its tar
        storage.remove(join(out, "parts", f"{spec.name}.parquet"), options)   # the commit record first
        storage.remove(join(out, spec.tar_name), options)
    summary = BuildSummary(shards_skipped=len(specs) - len(todo))
    n_clips = sum(len(s.rows) for s in todo)
    log(f"build-shards: {sum(len(r) for r in label_rows.values()) + len(invalid)} rows, {len(specs)} shards "
        f"({summary.shards_skipped} already done), {n_clips} clips to process -> {out}")
    failed_rows: list[dict] = []
    if todo and not cfg.scheduler:
        # local workers share this machine's files and devices: unusable detector weights or a missing
        # CUDA device are one line now, not a task_failed on every shard after its retries
        check_cuda(cfg)
        load_state_dict(resolve_weights(cfg.face.backend, cfg.face.weights))
    if todo:
        resources = {"GPU": 1} if cfg.dask.gpu_resource else None
        with open_client(cfg, log=log) as client:
            if cfg.scheduler:
                check_cuda(cfg, client)
            futures = {}
            # a token per run in the task keys: on a shared scheduler, another build of the same rows and
            # settings (another OUT, or a rerun while an interrupted run's task still runs) would otherwise get
            # that task's result, written to the other run's OUT
            run = uuid.uuid4().hex[:12]
            for spec in todo:
                probed = client.submit(probe_shard, spec, key=f"probe-{spec.name}-{spec.fingerprint}-{run}",
                                       retries=cfg.dask.retries, pure=False)
                built = client.submit(build_shard, spec, probed, scorer, key=f"shard-{spec.name}-{spec.fingerprint}-{run}",
                                      retries=cfg.dask.retries, resources=resources, pure=False)
                futures[built] = spec
            with tqdm(total=n_clips, unit="clip", desc="build-shards", dynamic_ncols=True) as bar:
                clips = ClipProgress(bar, todo, progress)
                client.subscribe_topic(PROGRESS_TOPIC, clips.on_event)
                try:
                    for future in as_completed(futures):
                        spec = futures[future]
                        try:
                            future.result()
                            summary.shards_built += 1
                        except Exception as exc:  # after its retries: record every clip, keep going
                            if getattr(exc, "errno", None) in DISK_FULL:
                                raise  # every other shard would fail the same way: stop; finished shards are kept
                            summary.shards_failed += 1
                            failed_rows += _failed_rows(spec, exc)
                            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                            summary.failures[why] = summary.failures.get(why, 0) + 1
                            summary.rerun_helps &= is_transient(exc)
                            log(f"shard {spec.name} failed after {cfg.dask.retries} retries: {exc}")
                        clips.finished(spec.name)
                finally:
                    # before the client closes, a Ctrl-C included: a subscribed topic's next event (a worker
                    # still finishing a clip) made the scheduler log a CRITICAL CommClosedError traceback
                    client.unsubscribe_topic(PROGRESS_TOPIC)
            # while the cluster still runs: its shutdown (a worker slow to die) cannot cost the manifest
            return finish_build(cfg, out, specs, failed_rows, summary, n_clips, t0)
    return finish_build(cfg, out, specs, failed_rows, summary, n_clips, t0)


def finish_build(cfg: BuildConfig, out: str, specs: list[ShardSpec], failed_rows: list[dict], summary: BuildSummary,
                 n_clips: int, t0: float) -> BuildSummary:
    """Every part parquet -> OUT/manifest.parquet, the build's media settings -> OUT/build_config.json, and
    the summary's counts."""
    options = cfg.storage_options
    manifest = assemble_manifest(out, specs, cfg.splits, failed_rows, options)
    # what training copies into its checkpoints, so `avemo predict` decodes and crops exactly like this build
    media = {k: v for k, v in asdict(cfg).items() if k in ("probe", "decode", "face", "audio")}
    storage.write_bytes(join(out, BUILD_CONFIG_NAME), json.dumps(media, indent=2, sort_keys=True).encode(), options)
    clean_temporaries(out)   # e.g. what a worker that died mid-shard left; its task ran again
    statuses = manifest.column("status").to_pylist()
    summary.rows = len(statuses)
    summary.ok = statuses.count("ok")
    summary.rejected = dict(Counter(r for r, s in zip(manifest.column("reason").to_pylist(), statuses)
                                    if s != "ok"))
    summary.elapsed_s = time.perf_counter() - t0
    summary.clips_per_s = n_clips / summary.elapsed_s if n_clips else 0.0
    return summary


def assemble_manifest(out: str, specs: list[ShardSpec], splits, failed_rows: list[dict],
                      options: dict | None = None) -> pa.Table:
    """Manifest = every part parquet in OUT (all splits ever built there) + rows of failed tasks."""
    tables = []
    planned = {s.name for s in specs}
    for name in storage.list_names(join(out, "parts"), "*.parquet", options):
        stem = name.rsplit(".", 1)[0]
        # _remove_stale deleted this run's unplanned parts, but a still-running worker of a killed earlier
        # build (its plan had more shards) can commit one after that: its rows are not this build's
        if stem.split("-")[0] in splits and stem not in planned and not stem.endswith("-labels"):
            continue
        # through make_table: a part written before a column was added (e.g. kind) gets its default
        tables.append(make_table(read_table(join(out, "parts", name), options).to_pylist()))
    if failed_rows:
        tables.append(make_table(failed_rows))
    table = pa.concat_tables(tables) if tables else make_table([])
    order = {"train": 0, "dev": 1, "test": 2}
    rows = sorted(table.to_pylist(), key=lambda r: (order.get(r["split"], 9), r["csv_line"] or 0))
    table = make_table(rows)
    write_table(join(out, MANIFEST_NAME), table, options)
    return table
