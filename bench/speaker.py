"""Issue 17: is the speaking face chosen? Real talking faces composed side by side, the same frames twice, each
time with one person's voice, run through `avemo predict --speakers` (windows and whole clips).

Scenes (composed here with ffmpeg into bench/out/speaker/media, never committed: CREMA-D's licence):
- take pairs: two CREMA-D clips side by side (../shared/media/crema-d: the same actor saying the same sentence
  in two takes, six emotions; only lip sync tells the speaker apart, the hardest case: a method that ignores
  the sound scores 50 %), once with the left take's voice and once with the right take's: 15 pairs x 2 voices.
- the same pairs with the right take played backwards, or started 0.5 s later (its sound with it): two
  people saying different things, or the same thing at other times, as two TV clips side by side are.
- speaker and listener: a CREMA-D take next to single_face.mp4 (a man moving his lips, no audible voice of his
  own), the take's voice, the speaker on either side: 6 takes x 2 sides.

Per window (predict's sliding windows, --window/--hop) and per clip (--per-clip): chosen = the face with the
highest speaking probability is the voice's own face (its box on the voice's side); with lip sync (the
default, sync_weight=2) and with Light-ASD alone (sync_weight=0), the same frames and audio. Also the share of
windows whose line names a speaker (speaking >= predict.speaking_min) and names the right one, and the CPU
cost: the real-time factor of predict with and without --speakers on the same scenes. Then build-shards
--list over the scenes with face.speaker=score (default), =asd, and =asd with Light-ASD alone: the share of
clips whose manifest speaker_box is the voice's face, and the build throughput ratio.

    .venv/bin/python bench/speaker.py --checkpoint bench/out/real_emotion/run/best.pt   # ~25 min on 2 cores
    .venv/bin/python bench/speaker.py --checkpoint ... --quick                          # 2 pairs, 2 listeners
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, loadavg, new_record, table, write_results  # noqa: E402

SHARED = REPO.parent / "shared"
HALF = 480            # each face's half of the composed frame (input pixels)


FX = {"reversed": ("reverse", "areverse"), "0.5 s later": ("tpad=start_duration=0.5:start_mode=clone",
                                                        "adelay=500:all=1")}


def compose(out: Path, left: Path, right: Path, voice: int | None, right_fx: str | None = None) -> Path:
    """left | right, 480x360 each at 25 fps, cut to the shorter; audio: input `voice`'s (0 left, 1 right).
    right_fx (a key of FX) plays the right input backwards or starts it 0.5 s later (frozen first frame,
    silence), its sound with it: the right face then says another utterance than the left one."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    vfx, afx = FX[right_fx] if right_fx else ("null", "anull")
    graph = (f"[0:v]scale=-2:360,crop={HALF}:360,fps=25,setsar=1[a];[1:v]{vfx},scale=-2:360,crop={HALF}:360,"
             "fps=25,setsar=1[b];[a][b]hstack=shortest=1[v]")
    if voice is not None:                  # only the voice's chain: ffmpeg refuses an unconnected output
        graph += f";[{voice}:a]{'anull' if voice == 0 else afx}[s]"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(left), "-i", str(right), "-filter_complex",
           graph, "-map", "[v]"]
    cmd += [] if voice is None else ["-map", "[s]", "-shortest"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp)]
    subprocess.run(cmd, check=True)
    tmp.replace(out)
    return out


def scenes(quick: bool) -> list[dict]:
    media = SHARED / "media"
    takes = sorted((media / "crema-d").glob("*.flv"))
    if len(takes) < 2:
        raise SystemExit(f"bench/speaker.py: needs the CREMA-D clips in {media / 'crema-d'}")
    folder = OUT / "speaker" / "media"
    out = []
    pairs = list(itertools.combinations(takes, 2))
    for fx in (None, *FX):
        for a, b in pairs[:2] if quick else pairs:
            for voice in (0, 1):
                name = f"{a.stem}+{b.stem}{'_' + fx.replace(' ', '') if fx else ''}_voice{'LR'[voice]}"
                out.append({"kind": f"take pair{', right take ' + fx if fx else ''}", "side": "LR"[voice],
                            "path": compose(folder / f"{name}.mp4", a, b, voice, fx)})
    listener = media / "single_face.mp4"
    for take in takes[:2] if quick else takes:
        for side in "LR":
            left, right, voice = (take, listener, 0) if side == "L" else (listener, take, 1)
            name = f"{take.stem}_listener_{side}"
            out.append({"kind": "speaker and listener", "path": compose(folder / f"{name}.mp4", left, right, voice),
                        "side": side})
    return out


def side_of(face: dict) -> str:
    return "L" if (face["box"][0] + face["box"][2]) / 2 < HALF else "R"


def run(paths: list[Path], checkpoint: str, overrides: list[str]) -> tuple[list[dict], float]:
    """predict over `paths` in this process -> (lines, wall seconds)."""
    from avemo.inference.predict import load_predict_config, run_predict
    from avemo.inference.runtime import read_model
    model = read_model(checkpoint)
    cfg = load_predict_config(model.meta, None, {}, overrides)
    lines: list[dict] = []
    t0 = time.perf_counter()
    failed = run_predict([str(p) for p in paths], model, cfg, lines.append)
    wall = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"bench/speaker.py: predict failed on {failed} input(s)")
    return lines, wall


def score(scenes_: list[dict], lines: list[dict]) -> dict:
    by_source: dict[str, list[dict]] = {}
    for line in lines:
        by_source.setdefault(line["source"], []).append(line)
    out: dict = {}
    for kind in dict.fromkeys(s["kind"] for s in scenes_):
        n = chosen = named = named_right = no_faces = 0
        for s in (s for s in scenes_ if s["kind"] == kind):
            for line in by_source.get(str(s["path"]), []):
                n += 1
                faces = [f for f in line["faces"] if f["speaking"] is not None]
                if not faces:
                    no_faces += 1
                    continue
                chosen += side_of(max(faces, key=lambda f: f["speaking"])) == s["side"]
                if line["speaker"] is not None:
                    named += 1
                    named_right += side_of(next(f for f in line["faces"] if f["track"] == line["speaker"])) == s["side"]
        out[kind] = {"n": n, "chosen": chosen, "named": named, "named_right": named_right, "no_faces": no_faces}
    return out


BUILDS = {"score": ["face.speaker=score"], "asd": ["face.speaker=asd"],
          "asd, Light-ASD alone": ["face.speaker=asd", "face.asd_sync_weight=0"]}
SCORING = {"lip sync": ["sync_weight=2"], "Light-ASD alone": ["sync_weight=0"]}   # predict --speakers


def build(scenes_: list[dict], mode: str, scheduler: str) -> tuple[dict, float]:
    """build-shards --list over the scenes with the overrides BUILDS[mode], in a fresh OUT, on the running Dask
    cluster at `scheduler` (its start-up is not timed) -> (per scene kind: {n, chosen, no_face}, wall seconds)."""
    import shutil

    import pyarrow.parquet as pq

    from avemo.api import build_shards
    folder = OUT / "speaker" / f"build_{mode.replace(' ', '_').replace(',', '')}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    listing = folder / "list.csv"
    listing.write_text("path,label,split,key\n" + "".join(f"{s['path']},anger,train,scene{i:03d}\n"
                                                          for i, s in enumerate(scenes_)))
    t0 = time.perf_counter()
    build_shards(None, folder / "shards", overrides=[*BUILDS[mode], f"scheduler={scheduler}"],
                 media_list=listing)
    wall = time.perf_counter() - t0
    rows = {r["key"]: r for r in pq.read_table(folder / "shards" / "manifest.parquet").to_pylist()}
    out: dict = {}
    for i, s in enumerate(scenes_):
        r = out.setdefault(s["kind"], {"n": 0, "chosen": 0, "no_face": 0})
        row = rows[f"scene{i:03d}"]
        r["n"] += 1
        if row.get("speaker_box") is None:
            r["no_face"] += 1
            continue
        r["chosen"] += side_of({"box": [v * 2 * HALF for v in row["speaker_box"]]}) == s["side"]
    return out, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(OUT / "real_emotion" / "run" / "best.pt"),
                    help="any emotion model (best.pt or .onnx): the speaker choice does not depend on it")
    ap.add_argument("--window", type=float, default=1.0, help="predict's window (s); the clips are ~2.5 s")
    ap.add_argument("--hop", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"bench/speaker.py: no checkpoint at {args.checkpoint} (--checkpoint)")
    import torch
    torch.set_num_threads(1)
    record = new_record(args)
    todo = scenes(args.quick)
    paths = [s["path"] for s in todo]
    base = [f"window_s={args.window}", f"hop_s={args.hop}"]
    duration = sum(float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                         str(p)], capture_output=True, text=True, check=True).stdout) for p in paths)
    windows, clips, wall = {}, {}, 0.0
    for mode, extra in SCORING.items():
        windows[mode], spent = run(paths, args.checkpoint, [*base, "speakers=true", *extra])
        wall = wall or spent
        clips[mode], _ = run(paths, args.checkpoint, [*base, "speakers=true", "per_clip=true", *extra])
    _, wall_plain = run(paths, args.checkpoint, base)
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        build(todo[:2], "asd", cluster.scheduler_address)     # warm-up: each worker loads its networks once
        built = {mode: build(todo, mode, cluster.scheduler_address) for mode in BUILDS}
    record["results"] = {"windows": {m: score(todo, w) for m, w in windows.items()},
                         "clips": {m: score(todo, c) for m, c in clips.items()},
                         "rtf": {"speakers": wall / duration, "plain": wall_plain / duration},
                         "build": {mode: {"chosen": b[0], "wall_s": b[1], "clips_per_s": len(todo) / b[1]}
                                   for mode, b in built.items()},
                         "scenes": len(todo), "duration_s": duration}
    record["load"]["after"] = loadavg()
    (OUT / "speaker").mkdir(parents=True, exist_ok=True)
    (OUT / "speaker" / "lines.jsonl").write_text("".join(json.dumps(dict(x, scoring=m)) + "\n" for lines in
                                                         (windows, clips) for m in lines for x in lines[m]))
    res = record["results"]
    rows = []
    for unit in ("windows", "clips"):
        for kind in res[unit]["lip sync"]:
            for mode in SCORING:
                r = res[unit][mode][kind]
                rows.append([unit, kind, mode, r["n"], f"{r['chosen']}/{r['n']} = {r['chosen'] / max(r['n'], 1):.1%}",
                             f"{r['named']}/{r['n']}", f"{r['named_right']}/{r['named']}" if r["named"] else "-"])
    build_rows = [[mode, kind, f"{r['chosen']}/{r['n']} = {r['chosen'] / max(r['n'], 1):.1%}",
                   f"{res['build'][mode]['clips_per_s']:.2f}"]
                  for mode in BUILDS for kind, r in res["build"][mode]["chosen"].items()]
    ratio = {mode: res["build"][mode]["clips_per_s"] / res["build"]["score"]["clips_per_s"] for mode in BUILDS}
    body = "\n".join([
        "Two real faces side by side, one voice on the track; chosen = the face with the highest speaking",
        "probability is the voice's own. Take pairs: the same CREMA-D actor and sentence in two takes, the same",
        "frames scored once with each take's voice (ignoring the sound scores 50 %); the same pairs with the right",
        "take played backwards or started 0.5 s later (its sound with it: another utterance, or the same one at",
        "another time). Speaker and listener: a take next to single_face.mp4 (lips moving, no voice of his own),",
        "the speaker on either side. Scoring: `lip sync` = the default (Light-ASD's probability moved by the",
        "correlation of lip motion with the voice's loudness, sync_weight=2, pipeline/speaker.py); `Light-ASD",
        "alone` = sync_weight=0, as before.",
        f"predict --speakers, window {args.window} s, hop {args.hop} s; clips: --per-clip (the whole scene).", "",
        table(["unit", "scenes", "scoring", "n", "speaking face chosen", "line names a speaker",
               "named speaker right"], rows),
        "",
        f"Cost: predict's real-time factor over the {len(todo)} scenes ({duration:.1f} s of video, 1 torch thread): "
        f"{res['rtf']['speakers']:.2f} with --speakers (lip sync; frames at 25 fps, every face tracked and scored "
        "by Light-ASD) "
        f"vs {res['rtf']['plain']:.2f} without (the checkpoint's decode rate).",
        "",
        "build-shards --list over the same scenes (a fresh OUT each, the default build settings, one warm local",
        "Dask cluster of 2 worker processes: its start and the networks' loading are not timed):",
        "`face.speaker=score` (the default: the most prominent face) vs `asd` (the face that speaks by",
        "Light-ASD and lip sync; faces detected on every 5th of the 25 fps frames, face.asd_detect_every=5) and",
        "`asd` with Light-ASD alone (face.asd_sync_weight=0); chosen = the manifest's speaker_box lies on the",
        "voice's side.", "",
        table(["face.speaker", "scenes", "speaking face chosen", "clips/s"], build_rows), "",
        f"Build throughput with face.speaker=asd: {ratio['asd']:.2f}x the default's on these two-face scenes "
        f"({ratio['asd, Light-ASD alone']:.2f}x with Light-ASD alone): every clip is decoded again "
        "at 25 fps and every face track scored. A clip whose sampled frames show one person only skips that "
        "(face.asd_one_face=skip): bench/build_shards.py --try face.speaker=asd measures such clips. The default "
        "build does no more work than before (only the median box of the strip is added)."])
    out = write_results("speaker_quick" if args.quick else "speaker", "Who is speaking: the speaking face chosen "
                        "(issue 17)", record, body)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
