"""`avemo predict`: emotion over sliding windows of video files, folders or live streams.

Per input, ONE ffmpeg process decodes frames + audio incrementally (pipeline/stream.py, the command of
build-shards); per window the frames go through the same detector and speaker-face crops
(pipeline.faces) and the audio through the same log-mel (pipeline.audio) as build-shards, then the model.
Detections and face embeddings are cached per frame, so overlapping windows never redo them.
One JSON line per window:

    {"source", "start", "end", "label", "probs": {emotion: p}, "face": fraction of frames with a face,
     "modalities": ["face", "audio"], "frames": model frames}        (+ "ms": {...} with --timings;
                                                       for live sources "ms.lag": result time - window end)

Windows whose data a live source dropped (processing slower than real time) come out as one line per run
of them, {"source", "start", "end", "dropped_windows": n, "reason"}, and are counted on stderr.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from avemo.core.config import check, load_config, merge, read_yaml_section
from avemo.core.errors import ConfigError
from avemo.pipeline.config import SYNC_WEIGHT, AudioConfig, DecodeConfig, FaceConfig

@dataclass
class PredictConfig:
    window_s: float = 2.0             # seconds of media per prediction (--window)
    hop_s: float = 0.5                # seconds between window starts (--hop)
    buffer_s: float = 10.0            # decoded media held at most (bounded memory; live sources drop beyond)
    threads: int = 1                  # intra-op threads of the detector and the model
    runtime: Literal["auto", "torch", "onnx"] = "auto"   # auto: onnxruntime for .onnx, PyTorch for .pt
    realtime: bool = False            # read inputs at their native rate, as a live source (ffmpeg -re)
    timings: bool = False             # add per-stage milliseconds to each line
    per_clip: bool = False            # one line per input file (the whole clip, decoded as build-shards does)
    speakers: bool = False            # --speakers: every face tracked, who speaks (Light-ASD), an emotion per person
    speaker_fps: float = 25.0         # frames per second decoded with speakers on (Light-ASD reads lip motion)
    speaking_min: float = 0.3         # a window's speaker must reach this speaking probability; else
                                      # the line's label reads the face build-shards would crop, as without speakers
    asd_variant: str = "ava"          # Light-ASD weights: ava (AVA-ActiveSpeaker) or talkset
    asd_weights: str = ""             # an explicit Light-ASD file; else $AVEMO_WEIGHTS_DIR, the cache, a download
    sync_weight: float = SYNC_WEIGHT  # log-odds a window's speaking probability gains per unit of lip-voice correlation (0: Light-ASD alone)
    #                                   unless set: the model's build face.asd_sync_weight (its shards' choice)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def __post_init__(self):
        check((0.25 <= self.window_s <= 60, "window must be in [0.25, 60] seconds"),
              (0.05 <= self.hop_s <= self.window_s, "hop must be in [0.05 s, window]"),
              (self.buffer_s <= 600, "buffer_s must be <= 600 seconds"),
              (self.threads <= 256, "threads must be <= 256"),
              (self.buffer_s >= self.window_s + self.hop_s,
               f"buffer_s={self.buffer_s} must hold a window plus a hop (>= {self.window_s + self.hop_s})"),
              (self.threads >= 1, "threads must be >= 1"),
              (15 <= self.speaker_fps <= 60, "speaker_fps must be in [15, 60] (Light-ASD reads lip motion)"),
              (0 <= self.speaking_min <= 1, "speaking_min must be in [0, 1]"),
              (self.asd_variant in ("ava", "talkset"), "asd_variant must be ava or talkset"),
              (0 <= self.sync_weight <= 20, "sync_weight must be in [0, 20]"))


def load_predict_config(meta: dict, path: str | None, flags: dict, overrides: list[str]) -> PredictConfig:
    """defaults < checkpoint's build config < --config `build:` < --config `predict:` < flags < key=value."""
    media_keys = ("decode", "face", "audio")
    base: dict = {k: v for k, v in (meta.get("build") or {}).items() if k in media_keys}
    if path is not None:
        base = merge(base, {k: v for k, v in read_yaml_section(path, "build").items() if k in media_keys})
        base = merge(base, read_yaml_section(path, "predict"))
    given = merge(base, flags)
    cfg = load_config(PredictConfig, "predict", None, overrides, given)
    if "sync_weight" not in given and not any(o.partition("=")[0].strip() == "sync_weight" for o in overrides):
        # speakers picked as the model's shards picked them (build-shards' face.asd_sync_weight), not predict's
        # own default; an asd build from before the setting existed used none (as build.check_kept_settings)
        built = ((meta.get("build") or {}).get("face") or {})
        legacy = (built.get("speaker") == "asd" and "asd_sync_weight" not in built
                  and "asd_sync_weight" not in (given.get("face") or {})
                  and not any(o.partition("=")[0].strip() == "face.asd_sync_weight" for o in overrides))
        cfg = dataclasses.replace(cfg, sync_weight=0.0 if legacy else cfg.face.asd_sync_weight)
    if "n_mels" in meta and cfg.audio.n_mels != meta["n_mels"]:
        raise ConfigError(f"audio.n_mels={cfg.audio.n_mels} but the model was trained on {meta['n_mels']} mel bins")
    if cfg.speakers and cfg.decode.fps < cfg.speaker_fps:     # the emotion model still reads max_frames of them
        cfg.decode = dataclasses.replace(cfg.decode, fps=cfg.speaker_fps)
    return cfg


class WindowPredictor:
    """One input's windows -> records; caches detections per frame and embeddings per face crop."""

    def __init__(self, runner, cfg: PredictConfig, source: str, sample_rate: int, fps: float = 0.0,
                 scale: tuple[float, float] = (1.0, 1.0)):
        """fps: the decoded frames' rate (frame id / fps = seconds); scale: input pixels per decoded pixel (x, y)."""
        from avemo.pipeline.faces import get_detector
        self.runner, self.cfg, self.source, self.rate = runner, cfg, source, sample_rate
        self.fps, self.scale = fps or cfg.decode.fps, scale
        self.labels = runner.meta["labels"]
        self.max_frames, self.max_mel = runner.meta["max_frames"], runner.meta["max_mel_frames"]
        # model.pitch: the model reads each mel frame's F0 and periodicity after the mel bins (PITCH_ROWS)
        self.pitch = bool(((runner.meta.get("train") or {}).get("model") or {}).get("pitch", False))
        self.detector = get_detector(cfg.face)
        self.dets: dict[int, object] = {}                 # frame id -> FrameDets
        self.embs: dict[tuple[int, bytes], np.ndarray] = {}  # (frame id, face box) -> (128,)
        self.people = None
        if cfg.speakers:
            from avemo.inference.people import PeopleTracker
            from avemo.inference.speaker import SpeakerConfig
            # encoders once over the track, the GRU per 1..6 s chunk: ~6x cheaper, the same choices (bench/asd_check)
            self.people = PeopleTracker(SpeakerConfig(face=cfg.face, asd_variant=cfg.asd_variant,
                                                      asd_weights=cfg.asd_weights, encoders_once=True,
                                                      sync_weight=cfg.sync_weight),
                                        detector=self.detector)

    def _embed(self, ids: np.ndarray, boxes: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """(n, 128) model embeddings of face crops, each cached by (frame id, its box): overlapping windows
        run the face CNN on new crops only."""
        keys = [(int(f), b.tobytes()) for f, b in zip(ids, boxes)]
        new = [j for j, key in enumerate(keys) if key not in self.embs]
        if new:
            for j, e in zip(new, self.runner.embed(crops[new])):
                self.embs[keys[j]] = e
        return np.stack([self.embs[k] for k in keys]) if keys else np.zeros((0, 128), dtype=np.float32)

    def _detect(self, ids: np.ndarray, frames: np.ndarray) -> list:
        new = [i for i, fid in enumerate(ids) if int(fid) not in self.dets]
        if new:
            for i, det in zip(new, self.detector.detect([frames[i] for i in new])):
                self.dets[int(ids[i])] = det
        first = int(ids[0]) if len(ids) else 0
        for fid in [f for f in self.dets if f < first]:     # frames before this window never come back
            del self.dets[fid]
        return [self.dets[int(fid)] for fid in ids]

    def _faces(self, ids: np.ndarray, frames: np.ndarray, lap) -> tuple[np.ndarray, np.ndarray]:
        """Speaker-face mask (T,) bool and embeddings (T, 128), cached per (frame, speaker box): the face
        CNN runs on the new crops only. lap(stage) closes each stage's timing."""
        from avemo.pipeline.faces import speaker_faces
        emb = np.zeros((len(ids), 128), dtype=np.float32)
        if not len(ids):                 # no frame in this window (e.g. the video ended before the audio)
            return np.zeros(0, dtype=bool), emb
        dets = self._detect(ids, frames)
        lap("detect")
        track = speaker_faces(frames, dets, self.cfg.face)
        lap("crop")
        rows = np.flatnonzero(track.mask)
        if len(rows):
            emb[rows] = self._embed(ids[rows], track.boxes[rows], track.crops)
        return track.mask.astype(bool), emb

    def _mel(self, audio: np.ndarray | None):
        import torch
        from avemo.pipeline.audio import audio_input
        from avemo.model.config import PITCH_ROWS
        from avemo.model.inputs import crop_mel
        if audio is None or not len(audio):
            return torch.zeros((self.cfg.audio.n_mels + (PITCH_ROWS if self.pitch else 0), 0))
        # as the shards: the mel bins, then (model.pitch) the pitch track's rows
        mel = torch.from_numpy(audio_input(audio, self.rate, self.cfg.audio, self.pitch).astype(np.float32))
        return crop_mel(mel, self.max_mel)                     # (rows, F), cropped from the start as in eval

    def _people(self, window, mel, lap) -> tuple[list[dict], dict | None]:
        """Every face of the window as a person -> (the line's `faces`, the speaker's {mask, emb, probs, id}
        or None when nobody clearly speaks)."""
        import torch
        from avemo.inference.people import person_crops
        ids, frames = window.frame_ids, window.frames
        dets = self._detect(ids, frames)
        lap("detect")
        times = ids / self.fps - window.start                # the window's audio starts at window.start
        people = self.people(ids, frames, dets, times, window.audio, self.rate)   # type: ignore[misc]
        lap("speakers")
        talking = [p for p in people if p.speaking is not None]
        speaker = max(talking, key=lambda p: p.speaking or 0.0, default=None)
        if speaker is not None and speaker.speaking < self.cfg.speaking_min:
            speaker = None
        no_mel = torch.zeros((mel.shape[0], 0))
        faces, chosen = [], None
        for p in people:
            sel, crops = person_crops(frames, dets, p.track, self.max_frames, self.cfg.face)
            emb = self._embed(ids[p.track.frames[sel]], p.track.boxes[sel], crops)
            mask = np.ones(len(sel), dtype=bool)
            probs = self._probs(mask, emb, mel if p is speaker else no_mel)   # the voice is the speaker's
            sx, sy = self.scale
            faces.append({"track": p.id, "box": [round(float(v), 1) for v in p.box * [sx, sy, sx, sy]],
                          "speaking": None if p.speaking is None else round(float(p.speaking), 4),
                          "label": self.labels[int(probs.argmax())],
                          "probs": {name: round(float(q), 5) for name, q in zip(self.labels, probs)}})
            if p is speaker:
                chosen = {"mask": mask, "emb": emb, "probs": probs, "id": p.id}
        lap("people")
        return faces, chosen

    def _probs(self, mask: np.ndarray, emb: np.ndarray, mel) -> np.ndarray:
        import torch
        from avemo.model.inputs import collate
        t = max(1, len(mask))    # the model needs one time step; an all-False mask means "no face"
        # collate pads the mel exactly as training and evaluation batches are padded; faces are not used
        batch = collate([{"key": "", "label": -1, "faces": torch.zeros((t, 3, 1, 1), dtype=torch.uint8),
                          "face_mask": torch.from_numpy(np.pad(mask, (0, t - len(mask)))), "mel": mel}])
        emb = np.pad(emb, ((0, t - len(emb)), (0, 0)))[None]            # (1, T, 128)
        logits = self.runner.logits(emb, batch["face_mask"].numpy(), batch["mel"].numpy(),
                                    batch["mel_mask"].numpy())[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    def __call__(self, window) -> dict:
        ms: dict[str, float] = {"wait": window.wait_s * 1e3}
        tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            ms[name] = (now - tick) * 1e3
            tick = now

        ids, frames = window.frame_ids, window.frames
        mel = self._mel(window.audio)
        lap("mel")
        faces, speaker = self._people(window, mel, lap) if self.people is not None else ([], None)
        if len(ids) > self.max_frames:   # as in training (avemo.model.inputs.to_tensors): frames spread over the window
            from avemo.model.inputs import frame_indices
            keep = frame_indices(len(ids), self.max_frames)
            ids, frames = ids[keep], frames[keep]
        if speaker is not None:          # the person speaking: their face and the voice
            mask, emb, probs = speaker["mask"], speaker["emb"], speaker["probs"]
        else:                            # as build-shards crops the speaker's face (detector score x size)
            mask, emb = self._faces(ids, frames, lap)
            lap("embed")
            probs = self._probs(mask, emb, mel)
            lap("model")
        if len(window.frame_ids):        # embeddings of frames before this window never come back
            self.embs = {k: v for k, v in self.embs.items() if k[0] >= int(window.frame_ids[0])}
        seen = mask.any() or mel.shape[1] > 0     # neither a face nor audio: the model has nothing to go on
        record = {"source": self.source, "start": round(window.start, 3), "end": round(window.end, 3),
                  "label": self.labels[int(probs.argmax())] if seen else None,
                  "probs": {name: round(float(p), 5) for name, p in zip(self.labels, probs)} if seen else None,
                  "face": round(float(mask.mean()) if len(mask) else 0.0, 3),
                  "modalities": (["face"] if mask.any() else []) + (["audio"] if mel.shape[1] else []),
                  "frames": int(len(ids))}
        if self.people is not None:
            record["speaker"] = None if speaker is None else speaker["id"]
            record["faces"] = faces
        if self.cfg.timings:
            record["ms"] = {k: round(v, 2) for k, v in ms.items()}
        return record


def open_input(inp, cfg: PredictConfig):
    """ffprobe the input and start its ffmpeg process -> a running StreamDecoder."""
    from avemo.inference.stream import InputError, StreamDecoder, probe_input, stream_plan
    probe, head = probe_input(inp, cfg.decode.timeout_s)
    if not probe.ok:
        raise InputError(f"{probe.reason}: {probe.detail}")
    return StreamDecoder(inp, stream_plan(probe, cfg.decode), cfg.buffer_s, head,
                         source_size=(probe.width, probe.height)).start()


def predict_input(inp, decoder, runner, cfg: PredictConfig, emit) -> dict:
    """Run one input's windows through the model; `emit(record)` each line. Returns a summary;
    raises InputError / DecodeError."""
    windows = dropped = 0
    run: list = []          # the current run of dropped windows

    def flush_dropped() -> None:
        if run:
            emit({"source": inp.name, "start": round(run[0].start, 3), "end": round(run[-1].end, 3),
                  "dropped_windows": len(run), "reason": "processing slower than the live source: "
                  "its bounded buffer dropped these windows' frames or audio"})
            run.clear()

    t0 = time.perf_counter()
    with decoder:
        plan = decoder.plan
        predictor = WindowPredictor(runner, cfg, inp.name, plan.sample_rate, plan.fps,
                                    _scale(decoder.source_size, (plan.width, plan.height)))
        for window in decoder.windows(cfg.window_s, cfg.hop_s):
            if window.lost:
                run.append(window)
                dropped += 1
                continue
            flush_dropped()
            record = predictor(window)
            if cfg.timings and inp.live:   # how long after the window's last sample arrived its line is out
                record["ms"]["lag"] = round((time.perf_counter() - decoder.started - window.end) * 1e3, 1)
            emit(record)
            windows += 1
        flush_dropped()
        decoder.finish()
        stats = decoder.stats()
        duration = decoder.duration()
    wall = time.perf_counter() - t0
    return {"source": inp.name, "windows": windows, "dropped_windows": dropped, "duration_s": round(duration, 3),
            "wall_s": round(wall, 3), **stats}


def predict_clip(inp, runner, cfg: PredictConfig) -> dict:
    """The whole file as one sample, decoded exactly as build-shards decodes a clip (decode.max_frames
    frames spread over it, its audio up to decode.max_audio_s): how MELD's utterances are labelled."""
    from avemo.inference.stream import InputError, Window
    from avemo.pipeline.config import ProbeConfig
    from avemo.pipeline.decode import decode_clip, plan_decode
    from avemo.pipeline.probe import probe_clip
    if inp.kind != "file":
        raise InputError("per_clip needs a file or a folder of files (a stream has no end to wait for)")
    probe = probe_clip(Path(inp.name), ProbeConfig(max_duration_s=1e9), cfg.audio)
    if not probe.ok:
        raise InputError(f"{probe.reason}: {probe.detail}")
    decode = cfg.decode
    if cfg.speakers:          # every frame at speaker_fps (Light-ASD); the model still reads max_frames of them
        decode = dataclasses.replace(decode, fps=cfg.speaker_fps, max_frames=1024)
    plan = plan_decode(probe, decode)
    decoded = decode_clip(inp.url, plan, cfg.decode.timeout_s)
    window = Window(index=0, start=0.0, end=probe.duration_s, frame_ids=np.arange(len(decoded.frames)),
                    frames=decoded.frames, audio=decoded.audio)
    return WindowPredictor(runner, cfg, inp.name, cfg.decode.sample_rate, plan.fps,
                           _scale((probe.width, probe.height), (plan.width, plan.height)))(window)


def _scale(source: tuple[int, int], decoded: tuple[int, int]) -> tuple[float, float]:
    """Input pixels per decoded pixel (x, y); 1 where a size is unknown."""
    return tuple(s / d if s and d else 1.0 for s, d in zip(source, decoded))  # type: ignore[return-value]


def run_predict(texts: list[str], model, cfg: PredictConfig, emit: Callable[[dict], None],
                report: Callable[[str], None] = lambda line: None) -> int:
    """Predict every input in `texts` (files, folders, pipe:0, URLs, devices) with `model` (read_model's):
    `emit(record)` each window's line, `report(line)` one summary or error line per input.
    -> how many inputs failed (unreadable or undecodable; each reported, the others still run)."""
    from concurrent.futures import ThreadPoolExecutor

    from avemo.inference.runtime import make_runner
    from avemo.inference.stream import InputError, resolve_inputs
    from avemo.pipeline.decode import DecodeError
    inputs = resolve_inputs(texts, cfg.realtime)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # ffmpeg decodes the first input ahead while torch, torchvision and the networks load
        opener = (lambda inp, cfg: None) if cfg.per_clip else open_input     # per_clip decodes whole files
        first = pool.submit(opener, inputs[0], cfg)
        try:
            runner = make_runner(model, cfg.runtime, cfg.threads)
        except BaseException:
            with contextlib.suppress(InputError, DecodeError, AttributeError):
                first.result().close()
            raise
    failed = 0
    for i, inp in enumerate(inputs):
        if cfg.per_clip:
            try:
                emit(predict_clip(inp, runner, cfg))
            except (InputError, DecodeError) as exc:
                failed += 1
                report(f"avemo predict: {inp.name}: {exc}")
            continue
        try:
            decoder = first.result() if i == 0 else open_input(inp, cfg)
            s = predict_input(inp, decoder, runner, cfg, emit)
        except (InputError, DecodeError) as exc:
            failed += 1
            report(f"avemo predict: {inp.name}: {exc}")
            continue
        rtf = s["wall_s"] / s["duration_s"] if s["duration_s"] else float("nan")
        report(f"{inp.name}: {s['windows']} windows, {s['dropped_windows']} dropped, {s['duration_s']:.1f} s "
               f"in {s['wall_s']:.1f} s (real-time factor {rtf:.2f}, runtime {runner.name})")
    return failed
