"""Does our Light-ASD port behave as published? Real talking faces, scored with their own voice and without it.

Faces: the CREMA-D clips in ../shared/media/crema-d (actor 1001 saying "Don't forget a jacket", six
emotions; real faces with their own voice) and ../shared/media/single_face.mp4 (a man moving his lips;
its audio track holds no audible speech, peak -33.5 dBFS, so its own track is a "muted" case). Each clip
is decoded at 25 fps by the pipeline's decode, faces detected in every frame (RetinaFace, build defaults),
followed as tracks (pipeline.tracks, MobileFaceNet identities); the longest track is cropped as Light-ASD
expects (pipeline.speaker) and scored (model.asd) with these audio tracks:

- own: the clip's own audio (the positive);
- shifted 1 s: the same audio rotated by 1 s (speech present, lips out of sync);
- other voice: another person's speech (RAVDESS actors, ../shared/data/ravdess) from its start, cut to the
  clip's length (--voices per clip, each scored; the mean is shown);
- other voice, aligned: the same with its speech onset moved to the clip's own (the hard case: someone
  else's speech exactly while the lips move);
- muted: faint noise (-80 dBFS) instead of the audio.

And side by side: two faces on screen, one voice (a CREMA-D take's); is the voice's own face chosen over
another take's face (same actor, same sentence, other timing) and over single_face.mp4?

Numbers: the mean speaking probability of the track (mean over its frames of sigmoid(log-odds), log-odds
averaged over the original's 1..6 s passes), for both published weights; and the same with
`encoders_once` (encoders over the whole track, only the GRU per pass: ~6x cheaper). CPU time per face
frame of each mode. Media made here stay in memory (nothing is written but the results).

    .venv/bin/python bench/asd_check.py            # 7 clips, 2 weights, 3 voices per clip (~10 min on 2 cores)
    .venv/bin/python bench/asd_check.py --quick    # 2 clips, ava weights, 1 voice
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, loadavg, new_record, table, write_results  # noqa: E402

SHARED = REPO.parent / "shared"
RATE = 16000
NEGATIVES = ("shifted 1 s", "other voice", "other voice, aligned", "muted")


def decode(path: Path, fps: float = 25.0):
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig, DecodeConfig
    from avemo.pipeline.decode import decode_clip, plan_decode
    from avemo.pipeline.probe import ffmpeg_source, probe_clip
    cfg = load_config(BuildConfig, "build", None, [], {})
    probe = probe_clip(path, cfg.probe, cfg.audio, any_kind=True)
    if not probe.ok:
        raise SystemExit(f"{path}: {probe.reason} {probe.detail}")
    return decode_clip(ffmpeg_source(path), plan_decode(probe, DecodeConfig(fps=fps, max_frames=1024)))


def onset(audio: np.ndarray) -> int:
    """First sample of speech: the first 20 ms frame above 10 % of the loudest frame's RMS."""
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    return int(np.argmax(rms > 0.1 * rms.max())) * 320 if len(rms) else 0


def place(voice: np.ndarray, at: int, n: int) -> np.ndarray:
    """voice with its speech onset moved to sample `at`, cut or padded with silence to n samples."""
    shift = at - onset(voice)
    out = np.zeros(n, dtype=np.float32)
    src = voice[max(0, -shift):]
    dst = max(0, shift)
    k = min(len(src), n - dst)
    if k > 0:
        out[dst: dst + k] = src[:k]
    return out


def ravdess_voices(k: int, seed: int) -> list[tuple[str, np.ndarray]]:
    root = SHARED / "data" / "ravdess"
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["emotion"] in ("neutral", "happy", "angry", "sad")]
    rows = random.Random(seed).sample(sorted(rows, key=lambda r: r["path"]), k)
    return [(f"RAVDESS actor {r['speaker']}", decode(root / r["path"]).audio) for r in rows]


def longest_track(finder, frames):
    from avemo.pipeline.tracks import follow_faces
    dets = finder.detector.detect(list(frames))
    tracks = follow_faces(dets, finder.embed(frames, dets), finder.cfg.track)
    if not tracks:
        raise SystemExit("no face found")
    return max(tracks, key=lambda t: len(t.frames))


def score(net, crops, audios: list[np.ndarray], once: bool) -> tuple[np.ndarray, float]:
    """(K, T) probabilities; CPU seconds of scoring the first audio alone (one track, one audio: the cost
    of real use), the others in a second call that shares its visual pass."""
    t0 = time.process_time()
    first = net.speaking_logodds(crops, audios[0], encoders_once=once)            # (T,)
    spent = time.process_time() - t0
    rest = net.speaking_logodds(crops, audios[1:], encoders_once=once)            # (K-1, T)
    logodds = np.concatenate([first[None], rest]).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logodds)), spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 clips, ava weights, 1 voice")
    ap.add_argument("--voices", type=int, default=3, help="other people's voices per clip")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    from avemo.inference.speaker import SpeakerConfig, SpeakerFinder
    from avemo.model.asd import load_light_asd
    from avemo.pipeline.speaker import crop_squares, grey_crops, track_samples
    torch.set_num_threads(1)
    record = new_record(args)
    variants = ("ava",) if args.quick else ("ava", "talkset")
    nets = {v: load_light_asd(variant=v) for v in variants}
    finder = SpeakerFinder(SpeakerConfig())
    crema = sorted((SHARED / "media" / "crema-d").glob("*.flv"))
    clips = crema[:2] if args.quick else [*crema, SHARED / "media" / "single_face.mp4"]
    voices = ravdess_voices(1 if args.quick else args.voices, args.seed)
    takes = {p: decode(p).audio for p in crema}
    rng = np.random.default_rng(args.seed)
    results, cpu = [], {v: {"exact": 0.0, "once": 0.0, "frames": 0} for v in variants}
    frame_probs: dict[tuple[str, str], dict[str, np.ndarray]] = {}   # (face clip, weights) -> voice -> (T,)
    for path in clips:
        clip = decode(path)
        own = clip.audio[: len(clip.frames) * RATE // 25 + 240]
        n, at = len(own), onset(own)
        track = longest_track(finder, clip.frames)
        times, ids, boxes = track_samples(track, clip.times)
        crops = grey_crops(clip.frames, ids, crop_squares(boxes))
        start = int(round(times[0] * RATE))
        conds: dict[str, list[np.ndarray]] = {
            "own": [own], "shifted 1 s": [np.roll(own, RATE)],
            "other voice": [np.pad(v[:n], (0, max(0, n - len(v)))) for _, v in voices],
            "other voice, aligned": [place(v, at, n) for _, v in voices],
            "muted": [(1e-4 * rng.standard_normal(n)).astype(np.float32)]}
        for other, voice in takes.items():    # every CREMA-D voice from t=0, as a side-by-side clip plays it
            conds[f"take {other.name}"] = [np.pad(voice[:n], (0, max(0, n - len(voice))))]
        flat = [a[start:] for c in conds.values() for a in c]
        owner = [name for name, c in conds.items() for _ in c]
        entry = {"clip": path.name, "frames": len(crops), "speech_onset_s": at / RATE,
                 "own_peak_dbfs": float(20 * np.log10(max(float(np.abs(own).max()), 1e-9))),
                 "voices": [name for name, _ in voices], "probs": {}}
        for v, net in nets.items():
            for once in (False, True):
                probs, spent = score(net, crops, flat, once)
                cpu[v]["once" if once else "exact"] += spent
                key = f"{v}{' (encoders once)' if once else ''}"
                entry["probs"][key] = {c: float(np.mean([probs[i].mean() for i, o in enumerate(owner) if o == c]))
                                       for c in conds if not c.startswith("take ")}
                frame_probs[(path.name, key)] = {c[5:]: probs[owner.index(c)] for c in conds if c.startswith("take ")}
                entry["probs"][key + " per voice"] = [float(probs[i].mean()) for i, o in enumerate(owner)
                                                      if o.startswith("other voice")]
            cpu[v]["frames"] += len(crops)
        results.append(entry)
        print(path.name, {k: {c: round(p, 3) for c, p in d.items()} for k, d in entry["probs"].items()
                          if "per voice" not in k}, flush=True)
    record["results"] = results
    record["side_by_side"] = side_by_side(frame_probs, [p.name for p in crema], [p.name for p in clips])
    record["cpu_ms_per_frame"] = {v: {m: 1e3 * c[m] / max(c["frames"], 1) for m in ("exact", "once")}
                                  for v, c in cpu.items()}
    record["load"]["after"] = loadavg()
    body = report(results, variants, record["cpu_ms_per_frame"], record["side_by_side"], args)
    out = write_results("asd_check_quick" if args.quick else "asd_check",
                        "Light-ASD port on real talking faces (issue 17)", record, body)
    print(f"wrote {out}")
    return 0


def side_by_side(frame_probs: dict, speakers: list[str], faces: list[str]) -> dict:
    """Two faces on screen, one voice (speaker i's, from t=0): is face i chosen over face j? Mean speaking
    probability of each over their common frames. Pairs of CREMA-D takes (the same actor saying the same
    sentence with other timing: only lip sync tells them apart), and a CREMA-D speaker next to
    single_face.mp4 (lips moving, no voice of his own)."""
    out: dict = {}
    for key in sorted({k for _, k in frame_probs}):
        pairs = []
        for i in speakers:
            for j in faces:
                if j == i or (i, key) not in frame_probs or (j, key) not in frame_probs:
                    continue
                a, b = frame_probs[(i, key)][i], frame_probs[(j, key)][i]
                t = min(len(a), len(b))
                pairs.append({"voice": i, "speaker": float(a[:t].mean()), "other_face": j,
                              "other": float(b[:t].mean()), "chosen": bool(a[:t].mean() > b[:t].mean())})
        takes = [p for p in pairs if p["other_face"] in speakers]
        listener = [p for p in pairs if p["other_face"] not in speakers]
        out[key] = {"pairs": pairs,
                    "takes_correct": sum(p["chosen"] for p in takes), "takes_n": len(takes),
                    "listener_correct": sum(p["chosen"] for p in listener), "listener_n": len(listener)}
    return out


def report(results: list[dict], variants, cpu: dict, side: dict, args) -> str:
    conds = ["own", *NEGATIVES]
    lines = ["", "Mean speaking probability of the face track (0-1), per clip and audio condition. Faces: real",
             "talking faces (CREMA-D actor 1001; single_face.mp4, whose own track has no audible speech).",
             f"Other voices: {', '.join(results[0]['voices'])} (mean over them). The own voice sounds in about",
             "half of each CREMA-D clip (silence before and after the sentence): ~0.5 is a track that speaks",
             "exactly while the voice sounds.", ""]
    for key in [f"{v}{s}" for v in variants for s in ("", " (encoders once)")]:
        lines += [f"### weights: {key}", ""]
        rows = [[r["clip"], *[r["probs"][key][c] for c in conds]] for r in results]
        talking = [r for r in results if r["clip"].endswith(".flv")]
        rows.append(["**mean, CREMA-D clips**", *[float(np.mean([r["probs"][key][c] for r in talking])) for c in conds]])
        rows.append(["**own > this, CREMA-D clips**", "",
                     *[f"{sum(r['probs'][key]['own'] > r['probs'][key][c] for r in talking)}/{len(talking)}"
                       for c in NEGATIVES]])
        lines += [table(["clip", *conds], rows), ""]
    lines += ["### Side by side: which of two faces speaks (one voice on the track, both faces from t=0)", "",
              "Chosen = the voice's own face has the higher mean speaking probability. CREMA-D takes: the same",
              "actor saying the same sentence in two takes (only lip sync separates them; ignoring the sound",
              "scores 50 %). Listener: single_face.mp4, lips moving without a voice, next to the speaker.", "",
              table(["weights", "CREMA-D take pairs chosen", "speaker vs single_face chosen"],
                    [[k, f"{v['takes_correct']}/{v['takes_n']}", f"{v['listener_correct']}/{v['listener_n']}"]
                     for k, v in side.items()]), ""]
    lines += ["CPU time per face frame, one track scored with one audio track (1 thread):",
              "", table(["weights", "original passes (ms/frame)", "encoders once (ms/frame)"],
                        [[v, c["exact"], c["once"]] for v, c in cpu.items()]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
