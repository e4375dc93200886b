"""Issue 17, take pairs: does audio-visual sync tell two takes of the same sentence apart?

bench/speaker.py's hardest scenes are take pairs: the same CREMA-D actor saying the same sentence in two
takes side by side, one take's voice on the track. Light-ASD picks the voice's own face in ~63 % of them
(ignoring the sound: 50 %). Both faces move their lips to the same words, so a rule that asks *when* the lips
and the voice agree might do better than one that asks *whether* a face speaks: the face whose own voice is
on the track should score highest with the audio where it is (offset 0) and lower with the audio shifted,
while the other take, whose timing differs, should peak elsewhere or nowhere.

For every take-pair scene of bench/speaker.py (composed there; reused) and each face track, Light-ASD's
per-frame log-odds with the track's audio shifted by -0.8 .. +0.8 s (the candidates share one visual pass);
then the share of scenes where each rule picks the voice's own face:
- p0: the mean speaking probability at offset 0 (what build-shards and predict use today);
- contrast: p at 0 minus its mean over the shifted offsets;
- peak: the mean log-odds at 0 minus its best over the shifted offsets;
- near: p at 0 minus the larger of its two neighbours (+-0.2 s).

    .venv/bin/python bench/speaker.py --checkpoint RUN/best.pt      # composes the scenes (once)
    .venv/bin/python bench/speaker_sync.py                          # resumes: scored scenes are kept
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, loadavg, machine, new_record, table, write_results  # noqa: E402

OFFSETS = [-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8]    # seconds the audio is moved (+ later)
RATE, FPS, WIDTH, HEIGHT, HALF = 16000, 25, 960, 360, 480       # bench/speaker.py's composed scenes


def _ffmpeg(path: Path, *args: str) -> bytes:
    return subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), *args, "-"],
                          capture_output=True, check=True).stdout


def shifted(wave: np.ndarray, seconds: float) -> np.ndarray:
    k = int(round(seconds * RATE))
    if k >= 0:
        return np.concatenate([np.zeros(k, np.float32), wave])[: len(wave)]
    return np.concatenate([wave[-k:], np.zeros(-k, np.float32)])


def score_scene(path: Path, finder) -> list[dict]:
    from avemo.pipeline.speaker import crop_squares, grey_crops, track_samples
    from avemo.pipeline.tracks import follow_faces
    frames = np.frombuffer(_ffmpeg(path, "-f", "rawvideo", "-pix_fmt", "rgb24"), np.uint8).reshape(-1, HEIGHT, WIDTH, 3)
    wave = np.frombuffer(_ffmpeg(path, "-f", "f32le", "-ac", "1", "-ar", str(RATE)), np.float32)
    times = np.arange(len(frames)) / FPS
    dets = finder.detector.detect(list(frames))
    out = []
    for track in follow_faces(dets, finder.embed(frames, dets), finder.cfg.track):
        at, ids, boxes = track_samples(track, times)
        faces = grey_crops(frames, ids, crop_squares(boxes))
        start = int(round(at[0] * RATE))
        logodds = finder.asd.speaking_logodds(faces, [shifted(wave, s)[start:] for s in OFFSETS], (1, 2, 3, 4, 5, 6),
                                              True)
        out.append({"track": track.id, "side": "L" if np.median((boxes[:, 0] + boxes[:, 2]) / 2) < HALF else "R",
                    "logodds": np.round(np.asarray(logodds), 4).tolist()})
    return out


def rules(tracks: list[dict]) -> dict[str, str]:
    """Rule -> the side it picks."""
    i0 = OFFSETS.index(0.0)
    feats = []
    for t in tracks:
        lo = np.asarray(t["logodds"])                       # (offsets, frames)
        p = (1 / (1 + np.exp(-lo))).mean(1)
        m = lo.mean(1)
        feats.append({"side": t["side"], "p0": p[i0], "contrast": p[i0] - np.delete(p, i0).mean(),
                      "peak": m[i0] - np.delete(m, i0).max(), "near": p[i0] - max(p[i0 - 1], p[i0 + 1])})
    return {k: max(feats, key=lambda f: f[k])["side"] for k in ("p0", "contrast", "peak", "near")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--media", default=str(OUT / "speaker" / "media"), help="bench/speaker.py's composed scenes")
    p.add_argument("--out", default=str(OUT / "speaker_sync"))
    args = p.parse_args(argv)
    scenes = sorted(Path(args.media).glob("*+*_voice[LR].mp4"))
    if not scenes:
        print(f"speaker_sync: no take-pair scenes in {args.media}: run bench/speaker.py first", file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(1)
    from avemo.inference.speaker import SpeakerFinder
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, offsets=OFFSETS)
    cache = Path(args.out) / "scores.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["scene"]: json.loads(line) for line in cache.read_text().splitlines()} \
        if cache.is_file() else {}
    finder = None
    for path in scenes:
        if path.name not in done:
            finder = finder or SpeakerFinder()
            done[path.name] = {"scene": path.name, "tracks": score_scene(path, finder)}
            with cache.open("a") as fh:
                fh.write(json.dumps(done[path.name]) + "\n")
            print(path.name, flush=True)
    picks = {name: rules(done[name]["tracks"]) for name in (s.name for s in scenes) if len(done[name]["tracks"]) >= 2}
    truth = {name: name.rsplit("_voice", 1)[1][0] for name in picks}
    names = {"p0": "mean speaking probability at offset 0 (today)", "contrast": "offset 0 minus the shifted mean",
             "peak": "log-odds at 0 minus the best shifted", "near": "offset 0 minus its +-0.2 s neighbours"}
    rows = [[names[k], f"{sum(picks[s][k] == truth[s] for s in picks)}/{len(picks)}"] for k in names]
    curves = {}
    for name in picks:
        for t in done[name]["tracks"]:
            p_ = (1 / (1 + np.exp(-np.asarray(t["logodds"])))).mean(1)
            curves.setdefault("voice's own face" if t["side"] == truth[name] else "other take", []).append(p_)
    record.update(picks=picks, load={**record["load"], "after": loadavg()})
    body = "\n".join([
        f"{len(picks)} take-pair scenes (two faces each), Light-ASD (ava weights, encoders once, passes of 1-6 s) "
        f"with the audio moved by {OFFSETS[0]} .. +{OFFSETS[-1]} s. Share of scenes where the rule picks the "
        "voice's own face (ignoring the sound: 50 %):", "",
        table(["rule", "voice's own face picked"], rows), "",
        "Mean speaking probability by offset (s), averaged over scenes:", "",
        table(["face", *[f"{o:+.1f}" for o in OFFSETS]],
              [[k, *[f"{v:.2f}" for v in np.mean(c, axis=0)]] for k, c in curves.items()]), "",
        "Measured (2026-12-05, 30 scenes): the two faces' curves lie within ~0.02 of each other at every offset "
        "and are flat within +-0.2 s: Light-ASD's score (does this face speak with this sound, over 1-6 s "
        "passes) is too coarse in time to tell two takes of one sentence apart, so no offset rule beats "
        "today's (17-19/30 vs 18/30). Not kept; what the 90 % goal needs on such scenes is finer lip-audio "
        "correspondence than an active-speaker model trained on AVA gives."])
    write_results("speaker_sync", "Take pairs: audio-visual sync offsets (issue 17)", record, body)
    print("\n".join(f"{r[0]}: {r[1]}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
