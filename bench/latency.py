"""Benchmark `avemo predict` latency (issue 6) on a real clip: per-window latency by stage, batch-1 model
latency per runtime, and the real-time factor of the whole command.

  model   batch 1, one 2 s window (8 real face crops, the real log-mel), interleaved repeats:
            torch-full    AVEmotionNet.forward, all 8 faces through the face CNN (the baseline)
            torch-step    what predict does per 0.5 s hop: 2 new faces embedded + forward_from_embeddings
            onnx-full     the exported graph in onnxruntime
            onnx-step     onnxruntime, graph cut at face_embeddings, 2 new faces (predict model.onnx)
  stages  per window inside `avemo predict --timings` (wait for decode, detect, crop, mel, embed, model)
  decode  one ffmpeg pass of the clip through pipeline.stream (frames + audio, no processing), per window
  command wall time of `avemo predict CLIP --checkpoint ...` in a fresh process (imports, model and
          detector load included) / clip duration = the whole-command real-time factor, per
          RUNTIME:THREADS variant, interleaved
  live    one `--realtime` run on an mpegts copy of the clip: lag of each line behind the live source

    .venv/bin/python bench/latency.py --repeats 5            # ~6 min on 2 cores -> bench/results/latency.md
    .venv/bin/python bench/latency.py --checkpoint runs/a/best.pt --repeats 5
    .venv/bin/python bench/latency.py --quick                # smoke run -> bench/results/latency_quick.md

Without --checkpoint the model is untrained (pretrained MobileFaceNet, random rest): latency does not
depend on the weights' values, only on the shapes, which come from configs/meld.yaml's train section.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import common
import numpy as np

GOALS = {"model_ms": 20.0, "rtf": 0.5}
STAGES = ["wait", "detect", "crop", "mel", "embed", "model"]


def make_checkpoint(folder: Path) -> Path:
    from avemo.core.config import load_config
    from avemo.model.net import build_model
    from avemo.model.checkpoint import save_checkpoint
    from avemo.train.config import TrainConfig
    cfg = load_config(TrainConfig, "train", common.REPO / "configs" / "meld.yaml", ["model.face_weights=auto"])
    net = build_model(cfg.model, log=lambda *_: None)
    path = folder / "untrained.pt"
    save_checkpoint(path, model=net.state_dict(), config=asdict(cfg), epoch=0, step=0, best=-1.0)
    return path


def real_window(clip: Path, max_frames: int, pitch: bool = False) -> dict:
    """The first 2 s window of the clip exactly as predict builds it: crops (max_frames, 112, 112, 3), log-mel."""
    import torch
    from avemo.pipeline.audio import audio_input
    from avemo.pipeline.config import BuildConfig
    from avemo.pipeline.faces import get_detector, speaker_faces
    from avemo.inference.stream import StreamDecoder, probe_input, resolve_inputs, stream_plan
    from avemo.model.inputs import collate
    cfg = BuildConfig()
    inp = resolve_inputs([str(clip)])[0]
    probe, head = probe_input(inp)
    plan = stream_plan(probe, cfg.decode)
    with StreamDecoder(inp, plan, 10.0, head) as dec:
        window = next(iter(dec.windows(2.0, 0.5)))
    track = speaker_faces(window.frames, get_detector(cfg.face).detect(list(window.frames)), cfg.face)
    assert track.mask.all(), "the benchmark clip needs a face in every frame of its first window"
    mel = torch.from_numpy(audio_input(window.audio, plan.sample_rate, cfg.audio, pitch).astype(np.float32))
    faces = torch.from_numpy(track.crops).permute(0, 3, 1, 2)[:max_frames]
    batch = collate([{"key": "", "label": -1, "faces": faces, "face_mask": torch.ones(len(faces), dtype=torch.bool),
                      "mel": mel}])
    # the crops the model reads: a model trained on fewer frames (configs/real.yaml: 2) gets that many
    return {"crops": track.crops[:max_frames], **{k: batch[k] for k in ("faces", "face_mask", "mel", "mel_mask")}}


def model_latency(ckpt: Path, onnx_path: Path, w: dict, threads: int, repeats: int, inner: int) -> dict:
    import torch
    from avemo.inference.runtime import load_runner
    from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
    torch.set_num_threads(threads)
    net = model_from_checkpoint(load_checkpoint(ckpt))
    torch_runner, onnx_runner = load_runner(ckpt, "torch", threads), load_runner(onnx_path, "onnx", threads)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    full = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {k: w[k].numpy() for k in ("faces", "face_mask", "mel", "mel_mask")}
    emb = torch_runner.embed(w["crops"])[None]                      # (1, 8, 128): the cached embeddings
    new = w["crops"][:2]                                            # 0.5 s hop at 4 fps = 2 new frames
    args = (emb, feed["face_mask"], feed["mel"], feed["mel_mask"])

    def torch_full():
        with torch.inference_mode():
            net(w["faces"], w["face_mask"], w["mel"], w["mel_mask"])

    variants = {
        "torch-full": torch_full,
        "torch-step": lambda: (torch_runner.embed(new), torch_runner.logits(*args)),
        "onnx-full": lambda: full.run(["logits"], feed),
        "onnx-step": lambda: (onnx_runner.embed(new), onnx_runner.logits(*args)),
    }
    for fn in variants.values():                                    # warm up (allocators, oneDNN kernels)
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):                                        # interleaved: A B C D A B C D ...
        for name, fn in variants.items():
            for _ in range(inner):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: common.stats(v) for name, v in times.items()}


def decode_only(clip: Path) -> dict:
    from avemo.pipeline.config import DecodeConfig
    from avemo.inference.stream import StreamDecoder, probe_input, resolve_inputs, stream_plan
    inp = resolve_inputs([str(clip)])[0]
    t0 = time.perf_counter()
    probe, head = probe_input(inp)
    with StreamDecoder(inp, stream_plan(probe, DecodeConfig()), 10.0, head) as dec:
        n = sum(1 for _ in dec.windows(2.0, 0.5))
        dec.finish()
    return {"seconds": time.perf_counter() - t0, "windows": n, "duration_s": dec.duration()}


def predict_command(clip: Path, model: Path, threads: int, out: Path, realtime: bool = False) -> dict:
    """A fresh `avemo predict` process: wall time, its own stream time, and its per-window stage timings."""
    cmd = [sys.executable, "-m", "avemo", "predict", str(clip), "--checkpoint", str(model), "--timings",
           "--out", str(out), f"threads={threads}", *(["--realtime"] if realtime else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed: {proc.stderr.strip()[-500:]}")
    m = re.search(r"(\d+) dropped, ([\d.]+) s in ([\d.]+) s", proc.stderr)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {"wall_s": wall, "dropped": int(m.group(1)), "duration_s": float(m.group(2)),
            "stream_s": float(m.group(3)), "windows": sum("ms" in r for r in rows),
            "ms": [r["ms"] for r in rows if "ms" in r]}


def stage_table(runs: list[dict]) -> tuple[list[list], dict]:
    """Per stage: min and median over every window of every run (ms); and the per-window total."""
    rows, medians = [], {}
    for stage in STAGES + ["total"]:
        values = [sum(ms[s] for s in STAGES) if stage == "total" else ms[stage] for r in runs for ms in r["ms"]]
        medians[stage] = statistics.median(values)
        rows.append([stage, min(values), medians[stage], max(values)])
    return rows, medians


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default=str(common.REPO.parent / "shared" / "media" / "WolfgangLanger_Pexels.mp4"))
    parser.add_argument("--checkpoint", default=None, help="default: an untrained model (see above)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the model-latency part")
    parser.add_argument("--variants", nargs="+", default=["torch:1", "onnx:1", "onnx:2"],
                        help="whole-command runs as RUNTIME:THREADS (predict's threads=: detector + model)")
    parser.add_argument("--repeats", type=int, default=3, help="whole-command runs per variant")
    parser.add_argument("--live", default="onnx:1", help="RUNTIME:THREADS of one --realtime run (the clip "
                        "remuxed to mpegts, read at its native rate, as a camera delivers it); 'none' to skip")
    parser.add_argument("--model-repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=10, help="model calls per model repeat")
    parser.add_argument("--name", default="latency")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, torch:1 and onnx:1, no live "
                        "run -> latency_quick.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.model_repeats, args.inner = 1, 2, 3
        args.variants, args.live, args.name = ["torch:1", "onnx:1"], "none", args.name + "_quick"
    record = common.new_record(args)
    clip = Path(args.clip)
    with tempfile.TemporaryDirectory(prefix="avemo-latency-") as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(tmp)
        from avemo.inference.export import export
        onnx_path = export(ckpt, "onnx", tmp / "model.onnx")
        from avemo.model.checkpoint import load_checkpoint
        saved = load_checkpoint(ckpt)["config"]
        max_frames, pitch = saved["data"]["max_frames"], bool(saved["model"].get("pitch", False))
        print("model latency (batch 1, one 2 s window) ...")
        model = model_latency(ckpt, onnx_path, real_window(clip, max_frames, pitch), args.threads, args.model_repeats,
                              args.inner)
        print("decode only ...")
        decode = [decode_only(clip) for _ in range(args.repeats)]
        models = {"torch": ckpt, "onnx": onnx_path}
        runs: dict[str, list[dict]] = {v: [] for v in args.variants}
        for r in range(args.repeats):                                   # interleaved A B C A B C ...
            for variant in args.variants:
                runtime, threads = variant.split(":")
                x = predict_command(clip, models[runtime], int(threads), tmp / "p.jsonl")
                runs[variant].append(x)
                print(f"  repeat {r + 1}/{args.repeats} predict {variant}: {x['wall_s']:.2f} s wall "
                      f"({x['stream_s']:.2f} s streaming) for {x['duration_s']:.1f} s of video")
        live = None
        if args.live != "none":            # an mpegts copy: a live-like source (mp4 interleaves in 0.5 s chunks)
            ts = tmp / (clip.stem + ".ts")
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts",
                            str(ts)], check=True)
            runtime, threads = args.live.split(":")
            live = predict_command(ts, models[runtime], int(threads), tmp / "live.jsonl", realtime=True)
            live["variant"] = args.live
            print(f"  live ({live['variant']}): {live['stream_s']:.2f} s for {live['duration_s']:.1f} s of video")
    record["load"]["after"] = common.loadavg()
    record.update(model_ms=model, decode=decode, runs=runs, live=live)
    body = report(clip, args, model, decode, runs, live)
    path = common.write_results(args.name, "avemo predict latency (issue 6)", record, body)
    print(body)
    print(f"wrote {path}")
    return 0


def report(clip, args, model, decode, runs, live) -> str:
    first = next(iter(runs.values()))[0]
    duration, windows = first["duration_s"], first["windows"]
    out = [f"Clip: `{clip.name}` ({duration:.1f} s, {windows} windows of 2 s every 0.5 s; decode.fps=4 -> 8 "
           f"frames per window, 2 new per hop), MobileNet-0.25 RetinaFace on the CPU. Model: "
           f"{'`' + args.checkpoint + '`' if args.checkpoint else 'untrained, configs/meld.yaml shapes'}.", "",
           f"## Model latency, batch 1, one window, {args.threads} thread (ms; min / median / max over "
           f"{args.model_repeats} x {args.inner} interleaved calls)", "",
           common.table(["variant", "min", "median", "max", f"goal < {GOALS['model_ms']:g} ms (median)"],
                        [[k, v["min"], v["median"], v["max"],
                          "met" if v["median"] < GOALS["model_ms"] else "**missed**"] for k, v in model.items()]),
           "", "`*-full`: every face of the window through the face CNN (AVEmotionNet.forward / the exported "
           "graph); `*-step`: what predict runs per hop (2 new faces embedded, 6 cached, then the temporal "
           "model and the audio CNN). `avemo predict model.onnx` runs onnx-step, `avemo predict best.pt` torch-step.",
           ""]
    for variant, rs in runs.items():
        rows, _ = stage_table(rs)
        out += [f"## Per-window latency inside `avemo predict`, {variant} (runtime:threads; ms over {len(rs)} "
                f"runs x {windows} windows: min / median / max)", "", common.table(["stage", "min", "median", "max"],
                                                                                   rows), ""]
    dec = [d["seconds"] / d["windows"] * 1e3 for d in decode]
    out += ["`wait` = waiting for the decoder (ffmpeg decodes ahead in its own process, so ~0 after the first "
            "window; the first window also detects all 8 of its frames). Decode alone (one ffmpeg pass, frames + "
            f"audio, no processing): {min(d['seconds'] for d in decode):.2f} s min / "
            f"{statistics.median(d['seconds'] for d in decode):.2f} s median for the clip = {min(dec):.1f} / "
            f"{statistics.median(dec):.1f} ms per window.", "",
            "## Whole command: real-time factor (wall / clip duration; lower is faster)", "",
            common.table(["runtime:threads", "wall s min", "wall s median", "RTF min", "RTF median",
                          "streaming RTF median", f"goal RTF <= {GOALS['rtf']:g} (median)"],
                         [[v, min(r["wall_s"] for r in rs), statistics.median(r["wall_s"] for r in rs),
                           min(r["wall_s"] for r in rs) / duration,
                           statistics.median(r["wall_s"] for r in rs) / duration,
                           statistics.median(r["stream_s"] for r in rs) / duration,
                           "met" if statistics.median(r["wall_s"] for r in rs) / duration <= GOALS["rtf"]
                           else "**missed**"] for v, rs in runs.items()]),
            "", "Wall = a fresh process: Python start, imports (torch, torchvision), model + detector load, "
            "ffprobe, then the stream (ffmpeg starts before the imports and decodes ahead). Streaming RTF = the "
            "stream part only, what a long-running session sustains.", ""]
    if live:
        lags = [ms["lag"] for ms in live["ms"]]
        out += [f"## Live: `--realtime` on an mpegts copy of the clip ({live['variant']})", "",
                common.table(["windows", "dropped", "lag ms min", "lag ms median", "lag ms max"],
                             [[live["windows"], live["dropped"], min(lags), statistics.median(lags), max(lags)]]),
                "", "lag = when a window's line is written minus when its last sample would arrive from a live "
                "source (ffmpeg start + window end): includes ffmpeg's own start and probing and the H.264 "
                "decoder delay, so it is an upper bound of the processing latency.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
