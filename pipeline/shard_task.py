"""One Dask task = one output shard: probe its clips, decode each ONCE, detect faces in cross-clip
batches, compute log-mels, write `{split}-{NNNNNN}.tar` atomically, then its part parquet (the
done-marker). Every clip ends as a manifest row, ok or rejected with a reason; one bad clip never
fails its shard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from avemo.core.config import config_from_dict
from avemo.core.errors import ConfigError, DataError
from avemo.pipeline.audio import log_mel, pitch_track
from avemo.pipeline.config import BuildConfig
from avemo.pipeline.decode import DecodeError, Decoded, plan_decode
from avemo.pipeline.faces import FrameDets, get_detector, image_box, pad_small_frames, speaker_faces, whole_face
from avemo.pipeline.names import named_choices
from avemo.pipeline.probe import ProbeResult
from avemo.pipeline.speaker import (ASD_FPS, Scorer, TrackSpeech, follow_speaker, identity_embeddings,
                                   one_person, score_tracks)
from avemo.pipeline.tracks import at_frames, every_nth, follow_faces
from avemo.pipeline.readers import decode_file, probe_file
from avemo.core import storage
from avemo.shards.format import encode_sample
from avemo.shards.manifest import make_table, write_table

# fixed member mtimes: the same inputs give byte-identical shards. An int: tarfile (PAX format by default, and
# webdataset 1.0.2's TarWriter does not pass its `format` on) writes a float mtime as an extended header per
# member, which doubled the headers a loader parses and made small-member shards a third larger
TAR_MTIME = 0
MIN_WINDOW_S = 1e-3   # a media list's part shorter than this is too_short whatever probe.min_duration_s says
META_FIELDS = ("split", "dialogue_id", "utterance_id", "label", "emotion", "sentiment", "sentiment_id",
               "speaker", "utterance", "season", "episode", "start_s", "end_s", "csv_file", "csv_line")


@dataclass
class ShardSpec:
    name: str                 # e.g. "train-000003"
    split: str
    out_dir: str              # absolute local folder or URL (storage.normalize)
    rows: list[dict]          # label rows (status ok) with "source": absolute video path or ""
    config: dict              # BuildConfig as a dict (plain data: travels to any Dask worker)
    fingerprint: str = field(default="")

    @property
    def tar_name(self) -> str:
        return f"{self.name}.tar"


# knobs that change how fast a shard is made, never its bytes, and resource limits (as timeouts, they refuse
# only what could not be made here): not in the fingerprint, nor in the settings a kept shard is checked
# against (build.check_kept_settings)
SCHEDULING_KEYS = {"probe": ("timeout_s", "max_pixels"), "decode": ("ffmpeg_threads", "timeout_s"),
                   "face": ("device", "batch_frames"), "audio": ()}
# settings only a media list's images and audio files use: MELD's shards (all videos) keep their fingerprints
LIST_ONLY_KEYS = {"decode": ("in_process",), "face": ("image_mode",)}


# the active-speaker settings decide the bytes only with face.speaker=asd: `score` builds keep their fingerprints
ASD_KEYS = ("speaker", "speaking_min", "asd_variant", "asd_weights", "asd_max_s", "asd_detect_every",
            "asd_one_face", "asd_sync_weight")
NAMES_KEYS = ("speaker_names", "names_min_sim", "names_min_lift", "names_max_clips")   # ... and these with names


def media_settings(cfg: BuildConfig, media_list: bool = True, hashed: bool = False) -> dict:
    """{section: {key: value}} of the probe/decode/face/audio settings that decide a shard's clips and bytes
    (of a MELD build's shards when not media_list). hashed (the fingerprint): without the active-speaker keys
    when face.speaker=score, so that default builds keep the fingerprints they had before those keys."""
    unused = {"face": (*(ASD_KEYS if cfg.face.speaker == "score" else ()),
                       *(NAMES_KEYS if not cfg.face.speaker_names else ())),
              "audio": () if cfg.audio.pitch else ("pitch",)} if hashed else {}
    return {name: {k: v for k, v in vars(getattr(cfg, name)).items()
                   if k not in skip and k not in unused.get(name, ())
                   and (media_list or k not in LIST_ONLY_KEYS.get(name, ()))}
            for name, skip in SCHEDULING_KEYS.items()}


def fingerprint(rows: list[dict], cfg: BuildConfig) -> str:
    """Hash of everything that changes the shard's bytes (not of scheduling knobs): each row's key, video
    and every field its JSON record holds (a corrected CSV text or time rebuilds the shard), the settings."""
    # a media list's rows add their kind (MELD's rows, all videos, keep the fingerprints they had)
    payload = {"rows": [[r["key"], r.get("source", ""), *(r.get(k) for k in META_FIELDS),
                         *([r["kind"]] if "kind" in r else [])] for r in rows],
               **media_settings(cfg, media_list=any("kind" in r for r in rows), hashed=True)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_shard(spec: ShardSpec) -> list[dict]:
    """ffprobe every clip of a shard (runs on any worker, CPU only). A media list's row (it has a `kind`)
    may be a video, an audio file or an image; a MELD row must be a video."""
    cfg = config_from_dict(BuildConfig, spec.config)
    with ThreadPoolExecutor(cfg.dask.decode_threads) as pool:
        results = pool.map(lambda r: probe_file(Path(r["source"]) if r.get("source") else None, cfg.probe,
                                                cfg.audio, any_kind="kind" in r, in_process=cfg.decode.in_process),
                           spec.rows)
        return [_window(row, result, cfg.probe.min_duration_s).to_dict() for row, result in zip(spec.rows, results)]


def list_window(row: dict) -> tuple[float, float]:
    """(start, length; 0 = to the end) of the part of the file a media list's row names with start/end;
    (0, 0) for MELD's rows, whose StartTime/EndTime place an already cut clip in its episode."""
    if "kind" not in row:
        return 0.0, 0.0
    start = row.get("start_s") or 0.0
    return start, (row["end_s"] - start) if row.get("end_s") is not None else 0.0


def _window(row: dict, probe: ProbeResult, min_duration_s: float) -> ProbeResult:
    """A probed file's result for the part of it the row names: its length (an end past the file's is the
    file's end), bad_time when it starts past the end, too_short when the part is shorter than
    probe.min_duration_s or than MIN_WINDOW_S."""
    start, length = list_window(row)
    if not probe.ok or probe.kind == "image" or (start == 0 and length == 0):
        return probe
    left = probe.duration_s - start
    if left <= 0:
        return ProbeResult(False, "bad_time", f"start={start} s is past the end of the file "
                                              f"({probe.duration_s:.3f} s)", probe.duration_s, kind=probe.kind)
    probe.duration_s = min(left, length) if length > 0 else left
    if probe.duration_s < max(min_duration_s, MIN_WINDOW_S):
        bound = (f"probe.min_duration_s={min_duration_s}" if min_duration_s >= MIN_WINDOW_S
                 else f"the shortest part, {MIN_WINDOW_S} s")
        return ProbeResult(False, "too_short", f"the part start={start} end={row.get('end_s')} is "
                                               f"{probe.duration_s:.6f} s < {bound}",
                           probe.duration_s, kind=probe.kind)
    return probe


def _decode_window(row: dict, probe: ProbeResult) -> tuple[float, float]:
    """(start, length) for ffmpeg: the row's part, its length cut at the file's end (_window did the check)."""
    start, length = list_window(row)
    return start, min(length, probe.duration_s) if length > 0 else 0.0


def _decode_one(row: dict, probe: ProbeResult, cfg: BuildConfig) -> tuple[Decoded, FrameDets | str | None] | str:
    """(decoded clip, its whole-image face: detection or why there is none, with face.image_mode=whole; None:
    the detector decides), or why it cannot be decoded."""
    try:
        plan = plan_decode(probe, cfg.decode, *_decode_window(row, probe))
        decoded = decode_file(row["source"], probe.reader, plan, cfg.decode.timeout_s)
    except DecodeError as exc:
        return str(exc)
    whole = None
    if probe.kind == "image":
        image = decoded.frames[0]                                   # (h, w, 3) before padding
        decoded.frames = pad_small_frames(decoded.frames, cfg.face)
        if cfg.face.image_mode == "whole":
            h, w = image.shape[:2]
            whole = whole_face(image, image_box(h, w, cfg.face), cfg.face)
    return decoded, whole


def manifest_row(row: dict, **values) -> dict:
    """A label row's manifest row with `values` (status, reason, ...); a detail is made one line of <= 300 chars."""
    out = {k: row.get(k) for k in ("key", "split", "dialogue_id", "utterance_id", "label", "emotion",
                                  "sentiment", "csv_line")}
    out.update(source=row.get("source", ""), duration_s=None, kind=row.get("kind", "video"))
    out.update(values)
    if "detail" in out:
        out["detail"] = " ".join(str(out["detail"]).split())[:300]
    return out


def non_finite_audio(audio, mel) -> str:
    """Why a clip's audio would train on NaN/inf ('' if it would not): a float container can hold NaN samples,
    and finite but huge ones overflow the float16 log-mel."""
    if audio is not None and not np.isfinite(audio).all():
        return f"{int((~np.isfinite(audio)).sum())} of {audio.size} decoded audio samples are NaN or inf"
    if mel is not None and not np.isfinite(mel).all():
        return "the log-mel holds inf/NaN (audio samples too large for float16)"
    return ""


class _ShardWriter:
    """Finishes clips in order: faces -> crops, mel, encode, append to the tar."""

    def __init__(self, spec: ShardSpec, cfg: BuildConfig, tar: wds.TarWriter, detector=None, scorer=None):
        self.spec, self.cfg, self.tar = spec, cfg, tar
        self.detector, self.scorer = detector, scorer
        self.rows: list[dict] = []
        # face.speaker_names: a dialogue's clips wait here (in order, rejections too) until it ends
        self.pending: list[tuple] = []
        self.dialogue: tuple | None = None

    def finish(self, row: dict, probe: ProbeResult, decoded: Decoded, dets: list) -> None:
        if not (self.cfg.face.speaker_names and row.get("dialogue_id") is not None and row.get("speaker")):
            self.flush()
            return self.write(row, probe, decoded, dets)
        key = (row.get("split"), row.get("dialogue_id"))
        if key != self.dialogue or len(self.pending) >= self.cfg.face.names_max_clips:
            self.flush()
            self.dialogue = key
        self.pending.append(("write", row, probe, decoded, dets))

    def flush(self) -> None:
        """Link the waiting dialogue's speaker names to its faces (pipeline/names.py), then write its clips."""
        if not self.pending:
            return
        pending, self.pending, self.dialogue = self.pending, [], None
        clips = [p for p in pending if p[0] == "write"]
        named: dict[int, tuple] = {}
        try:
            named = self.link(clips)
        except Exception as exc:   # noqa: BLE001  the clips are still written, with face.speaker's choice
            print(f"build-shards: {self.spec.name}: speaker names not linked for dialogue "
                  f"{clips[0][1].get('dialogue_id') if clips else '?'} ({type(exc).__name__}: {exc}); "
                  "face.speaker's choice stands", file=sys.stderr)
        for p in pending:
            if p[0] == "write":
                _, row, probe, decoded, dets = p
                self.write(row, probe, decoded, dets, named=named.get(id(p)))
            else:
                self._reject(*p[1:])

    def link(self, clips: list[tuple]) -> dict[int, tuple]:
        """id(entry) -> (per-frame choice or None, lift) for a dialogue's waiting clips."""
        embs = [[np.zeros((0, 0)) if e is None else e       # a frame without faces: no rows
                 for e in identity_embeddings(decoded.frames, dets, self.scorer.identities, self.cfg.face, every=1)]
                for _, _, _, decoded, dets in clips]
        scores = [[np.asarray(d.scores) for d in p[4]] for p in clips]
        choices = named_choices(embs, [p[1]["speaker"] for p in clips], self.cfg.face.names_min_sim,
                                self.cfg.face.names_min_lift, scores)
        return {id(p): c for p, c in zip(clips, choices)}

    def speaking(self, row: dict, probe: ProbeResult, decoded: Decoded) -> tuple[TrackSpeech, tuple[int, int]] | None:
        """face.speaker=asd: the clip's most speaking face track (Light-ASD on every track of its 25 fps frames,
        with its audio) and the size of those frames; None when it cannot tell (no audio, no face, too long)."""
        cfg = self.cfg
        start, length = _decode_window(row, probe)
        if not self.scorable(row, probe, decoded):
            return None
        plan = dataclasses.replace(plan_decode(probe, dataclasses.replace(
            cfg.decode, fps=ASD_FPS, max_frames=int(np.ceil(ASD_FPS * cfg.face.asd_max_s)) + 1), start, length),
            audio=False)
        clip = decode_file(row["source"], probe.reader, plan, cfg.decode.timeout_s)
        if len(clip.frames) < 2:
            return None
        # faces detected on every n-th frame only (the detector is most of the pass's cost): tracks are followed
        # over those frames, and their boxes between them are linear (Track.boxes_at), as Light-ASD's crops are
        idx = every_nth(len(clip.frames), cfg.face.asd_detect_every)
        sampled = clip.frames[idx]
        dets = self.detector.detect(list(sampled))
        embed = getattr(self.scorer, "identities", None)       # people told apart across cuts when it can
        embs = (identity_embeddings(sampled, dets, embed, cfg.face,
                                    every=max(1, round(5 / cfg.face.asd_detect_every))) if embed else None)
        tracks = at_frames(follow_faces(dets, embs), idx)
        speech = score_tracks(clip.frames, clip.times, tracks, decoded.audio, self.scorer, cfg.decode.sample_rate,
                              sync_weight=cfg.face.asd_sync_weight)
        if not speech:
            return None
        return max(speech, key=lambda s: s.prob), (int(clip.frames.shape[2]), int(clip.frames.shape[1]))

    def one_person(self, decoded: Decoded, dets: list) -> bool:
        """face.asd_one_face=skip and the sampled frames show one person only (pipeline.speaker.one_person):
        the strip is that face whoever speaks, so Light-ASD has nothing to choose between."""
        return self.cfg.face.asd_one_face == "skip" and one_person(
            decoded.frames, dets, getattr(self.scorer, "identities", None), self.cfg.face)

    def scorable(self, row: dict, probe: ProbeResult, decoded: Decoded) -> bool:
        """Light-ASD can score the clip: a video with audio, not longer than face.asd_max_s."""
        length = _decode_window(row, probe)[1]
        return (self.scorer is not None and probe.kind == "video" and decoded.audio is not None
                and (length or probe.duration_s) <= self.cfg.face.asd_max_s)

    def choose(self, row: dict, probe: ProbeResult, decoded: Decoded, dets: list) -> tuple[list | None, float | None]:
        """(per frame the speaker's detection, or None for today's choice; the speaking probability (Light-ASD
        and lip sync, pipeline/speaker.py) of the clip's most speaking face, None when it did not run)."""
        if not self.scorable(row, probe, decoded) or self.one_person(decoded, dets):
            return None, None
        try:
            found = self.speaking(row, probe, decoded)
        except (DecodeError, DataError):       # e.g. the 25 fps pass failed: the clip keeps today's choice
            return None, None
        if found is None:
            return None, None
        speech, size = found
        if speech.prob < self.cfg.face.speaking_min:
            return None, speech.prob
        frame_size = (int(decoded.frames.shape[2]), int(decoded.frames.shape[1]))
        choice = follow_speaker(speech, size, decoded.times, dets, frame_size, self.cfg.face.track_iou)
        # the speaker found at 25 fps but on none of the sampled frames' detections: today's choice stands
        return (choice if any(c is not None for c in choice) else None), speech.prob

    def reject(self, row: dict, reason: str, detail: str, duration: float | None = None) -> None:
        if self.pending:                       # keep the order of a waiting dialogue's clips
            self.pending.append(("reject", row, reason, detail, duration))
        else:
            self._reject(row, reason, detail, duration)

    def _reject(self, row: dict, reason: str, detail: str, duration: float | None = None) -> None:
        self.rows.append(manifest_row(row, status="rejected", reason=reason, detail=detail, duration_s=duration))
        clip_done(self.spec.name)

    def write(self, row: dict, probe: ProbeResult, decoded: Decoded, dets: list, named: tuple | None = None) -> None:
        """One clip into the tar; `named`: face.speaker_names' (per-frame choice, lift) for it, when it linked."""
        cfg = self.cfg
        try:
            choice, conf = self.choose(row, probe, decoded, dets) if cfg.face.speaker == "asd" else (None, None)
            if named is not None and named[0] is not None:   # the name's face where it is on screen, else asd/score
                choice = [n if n is not None else (choice[t] if choice else None) for t, n in enumerate(named[0])]
                conf = named[1]
            track = speaker_faces(decoded.frames, dets, cfg.face, choice)
            # an image without a face holds nothing to learn from (it has no audio either): always rejected
            if track.mask.sum() == 0 and probe.kind == "image":
                return self._reject(row, "no_face", "the detector found no face in the image")
            if track.mask.sum() == 0 and cfg.face.missing == "reject" and probe.kind != "audio":
                return self._reject(row, "no_face", "no face in any sampled frame", probe.duration_s)
            face_mode = "" if track.mask.sum() == 0 else "whole" if dets and dets[0].whole else "detect"
            mel = None if decoded.audio is None else log_mel(decoded.audio, cfg.decode.sample_rate, cfg.audio)
            problem = non_finite_audio(decoded.audio, mel)
            if problem:
                return self._reject(row, "non_finite_audio", problem, probe.duration_s)
            pitch = (pitch_track(decoded.audio, cfg.decode.sample_rate, cfg.audio)
                     if cfg.audio.pitch and decoded.audio is not None else None)
            meta = {k: row.get(k) for k in META_FIELDS}
            meta.update(source=Path(row["source"]).name, duration_s=round(probe.duration_s, 3), kind=probe.kind,
                        frame_times=[round(float(t), 3) for t in decoded.times],
                        frame_size=[int(decoded.frames.shape[2]), int(decoded.frames.shape[1])],
                        sample_rate=cfg.decode.sample_rate, hop_length=cfg.audio.hop_length,
                        n_mels=cfg.audio.n_mels, crop=cfg.face.crop, face_mode=face_mode,
                        detector="none" if face_mode == "whole" else cfg.face.backend)
            if pitch is not None:
                meta["pitch"] = True                 # only then: default builds' records stay as they were
            sample = encode_sample(row["key"], meta, track.mask, track.boxes, track.crops, mel,
                                   cfg.face.jpeg_quality, pitch=pitch)
        except Exception as exc:  # one clip's failure is recorded, never fatal to the shard
            return self._reject(row, "processing_error", f"{type(exc).__name__}: {exc}", probe.duration_s)
        self.tar.write(sample)
        self.rows.append(manifest_row(
            row, status="ok", shard=self.spec.tar_name, duration_s=probe.duration_s,
            n_frames=int(track.mask.shape[0]), n_faces=int(track.mask.sum()), has_audio=mel is not None,
            face_mode=face_mode, speaker_box=speaker_box(track), speaker_conf=conf,
            sample_bytes=sum(len(v) for k, v in sample.items() if not k.startswith("__"))))
        clip_done(self.spec.name)


def speaker_box(track) -> list[float] | None:
    """The median box of a clip's face strip, [x0, y0, x1, y1] in fractions of the frame; None without a face."""
    shown = track.mask > 0
    return [round(float(v), 4) for v in np.median(track.boxes[shown, :4], axis=0)] if shown.any() else None


PROGRESS_TOPIC = "avemo-build-clip"   # Dask event topic: one event per finished clip (build-shards' bar)


def clip_done(shard: str) -> None:
    """Tell the client a clip of `shard` is finished (Dask's worker -> client pub-sub, `log_event`); a no-op
    outside a Dask worker."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except ValueError:
        return
    worker.log_event(PROGRESS_TOPIC, shard)


def _run_clips(spec: ShardSpec, cfg: BuildConfig, probes: list[ProbeResult], detector, writer) -> None:
    """Decode clips on a thread pool (bounded read-ahead) while the detector eats full cross-clip
    batches; clips are finished strictly in CSV order, so the shard's bytes are deterministic."""
    queue: deque = deque()   # [row, probe, decoded | None, dets, reject (reason, detail) | None]
    frames: list = []        # frames of queued clips not yet detected, in order
    owners: list = []        # the queue entry of each of those frames

    def drain() -> None:
        while queue and (queue[0][4] is not None or len(queue[0][3]) == len(queue[0][2].frames)):
            row, probe, decoded, dets, reject = queue.popleft()
            if reject is not None:
                writer.reject(row, *reject, probe.duration_s or None)
            else:
                writer.finish(row, probe, decoded, dets)

    def detect(all_frames: bool) -> None:
        """Detect the waiting frames in whole detector batches (FaceDetector.detect cuts them), the rest too
        when all_frames: the same batches, in the same order, whenever it is called."""
        n = len(frames) if all_frames else len(frames) // detector.batch_frames * detector.batch_frames
        if n:
            for entry, det in zip(owners[:n], detector.detect(frames[:n])):
                entry[3].append(det)
            del frames[:n], owners[:n]

    with ThreadPoolExecutor(cfg.dask.decode_threads) as pool:
        jobs: deque = deque()
        todo = iter(zip(spec.rows, probes))

        def submit_next() -> None:
            for row, probe in todo:
                jobs.append((row, probe, pool.submit(_decode_one, row, probe, cfg) if probe.ok else None))
                if probe.ok:
                    return

        for _ in range(2 * cfg.dask.decode_threads):  # bounded read-ahead of decoded clips
            submit_next()
        while jobs:
            row, probe, job = jobs.popleft()
            if probe.ok:
                row = {**row, "kind": probe.kind}   # what the file turned out to be (a list's rows: by ffprobe)
            submit_next()
            result = job.result() if job is not None else None
            if job is None:
                queue.append([row, probe, None, [], (probe.reason, probe.detail)])
            elif isinstance(result, str):
                queue.append([row, probe, None, [], ("decode_error", result)])
            elif isinstance(result[1], str):      # face.image_mode=whole: an image that cannot be a face
                queue.append([row, probe, None, [], ("no_face", result[1])])
            elif result[1] is not None:           # face.image_mode=whole: its face is known, no detector run
                queue.append([row, probe, result[0], [result[1]], None])
            else:
                decoded = result[0]
                entry = [row, probe, decoded, [], None]
                queue.append(entry)
                frames.extend(decoded.frames)
                owners.extend([entry] * len(decoded.frames))
            detect(all_frames=False)
            drain()
        detect(all_frames=True)
        drain()


def check_scorer(cfg: BuildConfig, scorer) -> None:
    """The networks face.speaker=asd and face.speaker_names need, handed in by the command or the API."""
    if cfg.face.speaker == "asd" and scorer is None:
        raise ConfigError("face.speaker=asd needs the Light-ASD scorer: build through `avemo build-shards` or "
                          "avemo.api.build_shards")
    if cfg.face.speaker_names and not hasattr(scorer, "identities"):
        raise ConfigError("face.speaker_names needs a face identity network: build through `avemo build-shards` "
                          "or avemo.api.build_shards")


def build_shard(spec: ShardSpec, probes: list[dict], scorer: Scorer | None = None) -> list[dict]:
    """Write one shard and its part parquet; return its manifest rows. `scorer`: the active-speaker network
    (face.speaker=asd; model.asd.LightASDScorer) or, for face.speaker_names alone, model.asd.FaceIdentities:
    handed in by the command (the pipeline does not import models)."""
    cfg = config_from_dict(BuildConfig, spec.config)
    check_scorer(cfg, scorer)
    if cfg.face.speaker == "asd" or cfg.face.speaker_names:
        load = getattr(scorer, "load", None)
        if load is not None:       # unusable weights on this worker fail the task (retried), not each clip
            load()
    torch.set_num_threads(max(1, cfg.dask.torch_threads))
    options = cfg.storage_options
    detector = get_detector(cfg.face)
    probes_ = [ProbeResult(**p) for p in probes]

    # a temp file renamed (local) or uploaded whole (bucket) at the end: never a partial tar; hashed as written
    tar_path = storage.join(spec.out_dir, spec.tar_name)
    digest = hashlib.sha256()
    with storage.atomic_open(tar_path, options) as fh:
        tar = wds.TarWriter(_Hashing(fh, digest), encoder=False, mtime=TAR_MTIME)
        try:
            writer = _ShardWriter(spec, cfg, tar, detector, scorer)
            _run_clips(spec, cfg, probes_, detector, writer)
            writer.flush()                     # the shard's last dialogue (face.speaker_names)
        except BaseException:
            # close now (its own write may fail too, e.g. ENOSPC): else the tar stream's __del__ retries at
            # garbage collection and prints a traceback beside the one-line error
            with contextlib.suppress(Exception):
                tar.close()
            raise
        tar.close()
        n_ok = sum(r["status"] == "ok" for r in writer.rows)
    if n_ok == 0:
        storage.remove(tar_path, options)
    for r in writer.rows:
        if r["status"] == "ok":
            r["shard_sha256"] = digest.hexdigest()
    storage.makedirs(storage.join(spec.out_dir, "parts"))
    table = make_table(writer.rows).replace_schema_metadata({"fingerprint": spec.fingerprint})
    write_table(storage.join(spec.out_dir, "parts", f"{spec.name}.parquet"), table, options)   # the commit record
    return writer.rows


class _Hashing:
    """A write-only file that hashes what passes through (the shard's sha256 without reading it back)."""

    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()
