"""Helpers shared by the benchmarks: machine record, interleaved repeats, result files, the cached clip
set, and the seed-style per-clip processing that the baselines run.

Every benchmark measures its baseline in the same run, interleaves the repeats of its variants
(A B C A B C ...) so background load hits them alike, and writes bench/results/NAME.md + NAME.json.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"            # git-ignored: generated clips, shards, scratch
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
_shared_weights = REPO.parent / "shared" / "weights"
if _shared_weights.is_dir():  # the read-only weights beside a checkout (else the cache / a download)
    os.environ.setdefault("AVEMO_WEIGHTS_DIR", str(_shared_weights))

SEED_FPS = 15.0       # the seed decoded every frame at 15 fps, full size


# ---------------------------------------------------------------- machine and load

def machine() -> dict:
    import torch
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"nproc": os.cpu_count(), "cpu_model": model, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "ffmpeg": ffmpeg, "host": platform.node()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pids) -> float:
    """CPU time (user + system) of these processes and of their reaped children (ffmpeg): the work done,
    whatever else runs on the machine, unlike wall time."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


@contextlib.contextmanager
def environ(env: dict):
    """Variables for the processes started inside (Dask workers, pools); restored after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- timing

def interleave(variants: dict[str, Callable[[], dict]], repeats: int, log=print,
               alternate: bool = False) -> dict[str, list[dict]]:
    """Run A B C A B C ... `repeats` times (alternate: A B C C B A ..., so no variant always runs after the
    same one, e.g. into a page cache another warmed). Each variant returns {"seconds": s, "items": n, ...}."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants.items())
        for name, fn in (order[::-1] if alternate and r % 2 else order):
            result = fn()
            result["rate"] = result["items"] / result["seconds"]
            runs[name].append(result)
            log(f"  repeat {r + 1}/{repeats} {name}: {result['items']} in {result['seconds']:.2f} s "
                f"= {result['rate']:.3f}/s")
    return runs


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def summarize(runs: dict[str, list[dict]], key: str = "rate") -> dict[str, dict]:
    return {name: stats([r[key] for r in rs]) for name, rs in runs.items() if rs and key in rs[0]}


def ratio(a: dict, b: dict) -> dict:
    """a / b of two rate summaries: median/median, and the extremes (worst = a.min / b.max) to show spread."""
    return {"median": a["median"] / b["median"], "worst": a["min"] / b["max"], "best": a["max"] / b["min"]}


# ---------------------------------------------------------------- results

def epoch_records(run: Path) -> list[dict]:
    """RUN/metrics.jsonl's per-epoch records (train loss/accuracy, samples/s and the dev scores), in order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "samples_per_s" in row]


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def table(headers: list[str], rows: list[list]) -> str:
    # floats to 3 significant digits, but whole from 1,000 up (2010 s, not 2.01e+03)
    fmt = lambda v: (f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}") if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, record: dict, body: str) -> Path:
    """bench/results/NAME.md (for people) and NAME.json (the same numbers, for machines), atomically."""
    from avemo.core.atomic import atomic_write_bytes
    RESULTS.mkdir(parents=True, exist_ok=True)
    m, load = record["machine"], record["load"]
    head = [f"# {title}", "", f"Rerun: `{record['command']}`", "",
            f"- date: {record['date']}",
            f"- machine: {m['nproc']} CPU ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
            f"threads, GPU: {m['cuda'] or 'none'}; {m['ffmpeg']}",
            f"- load average (1/5/15 min) before: {load['before']} (other jobs), after: {load['after']} (this "
            "benchmark's own processes included)"
            + (" — the CPU was shared with other jobs: absolute figures are noisy; ratios come from interleaved "
               "repeats" if load["before"][0] > 0.5 else ""),
            ""]
    atomic_write_bytes(RESULTS / f"{name}.md", ("\n".join(head) + body.rstrip() + "\n").encode())
    atomic_write_bytes(RESULTS / f"{name}.json", (json.dumps(record, indent=2, default=float) + "\n").encode())
    return RESULTS / f"{name}.md"


def trained_run_arguments(p, name: str) -> None:
    """The arguments of a benchmark that scores copies of a finished bench/real_emotion.py run's checkpoint
    (bench/voice_stats.py, bench/face_tta.py); trained_run_paths resolves them."""
    p.add_argument("--run", required=True, help="a finished bench/real_emotion.py run folder (OUT/run)")
    p.add_argument("--data", required=True, help="its data folder (shards/{paired,fer,ravdess})")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--config", default="real")
    p.add_argument("--out", help=f"where the copies and the evaluations go (default RUN/../{name})")
    p.add_argument("--name", default=name, help="results name in bench/results")


def trained_run_paths(args, name: str) -> tuple[Path, Path, Path]:
    """-> (run, data, out) folders, absolute."""
    run, data = Path(args.run).resolve(), Path(args.data).resolve()
    return run, data, Path(args.out).resolve() if args.out else run.parent / name


def new_record(args) -> dict:
    return {"command": command_line(), "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(), "load": {"before": loadavg()}}


# ---------------------------------------------------------------- the clip set

def clip_set(per_class: dict, width: int = 1280, height: int = 720, fps: int = 24, min_s: float = 2.5,
             seed: int = 3, log=print) -> Path:
    """Generate a MELD-like clip set once into bench/out/clips/TAG (reused by later runs): MELD's
    1280x720 at ~24 fps, clips of min_s..~4 s (MELD averages ~3 s), a real face photo, espeak speech."""
    from avemo.demo.synth import SynthSpec, make_mini_meld
    tag = (f"{width}x{height}@{fps}-min{min_s:g}s-" + "-".join(f"{k}{v}" for k, v in per_class.items())
           + f"-s{seed}")
    root = OUT / "clips" / tag
    done = root / "DONE"
    if not done.is_file():
        log(f"generating clips into {root} (once) ...")
        t0 = time.perf_counter()
        make_mini_meld(root, SynthSpec(per_class=dict(per_class), seed=seed, width=width, height=height,
                                                 fps=fps, min_duration_s=min_s),
                       workers=os.cpu_count() or 2)
        done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return root


def clip_paths(root: Path, splits=("train", "dev", "test")) -> list[Path]:
    from avemo.pipeline.layout import VIDEO_DIRS
    return [p for s in splits for p in sorted((root / VIDEO_DIRS[s][0]).glob("*.mp4"))]


# ---------------------------------------------------------------- the seed's way, per clip

def _ffmpeg_bytes(args: list[str]) -> bytes:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *args], capture_output=True, check=True)
    return proc.stdout


def seed_face_config():
    """The seed's detector: every full-size frame as it is (no shrinking), one image per forward pass."""
    from avemo.pipeline.config import FaceConfig
    return FaceConfig(device="cpu", detect_size=1 << 16, batch_frames=1)


def seed_decode(path: Path):
    """Every frame at 15 fps, full size (one ffmpeg for video), and the audio (a second one), as the seed
    did. -> frames (T, H, W, 3) uint8, audio (N,) float32 16 kHz mono."""
    import numpy as np
    from avemo.pipeline.probe import ffmpeg_source, run_ffprobe
    info = run_ffprobe(ffmpeg_source(path), 60)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    w, h = int(video["width"]), int(video["height"])
    raw = _ffmpeg_bytes(["-i", ffmpeg_source(path), "-vf", f"fps={SEED_FPS:g}", "-f", "rawvideo",
                         "-pix_fmt", "rgb24", "pipe:1"])
    frames = np.frombuffer(bytearray(raw), np.uint8).reshape(-1, h, w, 3)   # writable, for torch
    audio = np.frombuffer(_ffmpeg_bytes(["-i", ffmpeg_source(path), "-vn", "-ac", "1", "-ar", "16000",
                                         "-f", "f32le", "pipe:1"]), np.float32)
    return frames, audio


def seed_process(path: Path, detector, max_frames: int = 0):
    """Decode, detect one image at a time, log-mel; with max_frames, also crop the speaker's face in
    max_frames evenly spaced frames (what a seed-style __getitem__ hands the model)."""
    import numpy as np
    from avemo.pipeline.audio import log_mel
    from avemo.pipeline.config import AudioConfig
    from avemo.pipeline.faces import speaker_faces
    frames, audio = seed_decode(path)
    dets = [detector.detect([f])[0] for f in frames]          # no batching: one forward per image
    mel = log_mel(audio, 16000, AudioConfig()) if audio.size else None
    if not max_frames:
        return len(frames), mel
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    track = speaker_faces(frames[idx], [dets[i] for i in idx], detector.cfg)
    return track, mel


# ---------------------------------------------------------------- shards and the model step (train benches)

def bench_shards(root: Path, shard_clips: int = 8, log=print) -> Path:
    """Shards of a clip set built once by the real pipeline (default config, 2 workers); a rerun resumes."""
    from avemo.core.config import load_config
    from avemo.pipeline.build import run_build
    from avemo.pipeline.config import BuildConfig
    out = OUT / "shards" / f"{root.name}-max{shard_clips}"
    if not (out / "manifest.parquet").is_file():
        log(f"building shards into {out} (once) ...")
        cfg = load_config(BuildConfig, "build", None, ["dask.workers=2", f"shards.max_clips={shard_clips}"],
                          {"root": str(root), "out": str(out)})
        summary = run_build(cfg, log=lambda *_: None)
        if summary.shards_failed:
            raise RuntimeError("\n".join(summary.lines()))
    return out


def train_split(shards: Path, n_samples: int | None = None, batch: int = 0, workers: int = 2):
    """The verified train shards. With n_samples, an epoch stretched to that many samples, the shard list
    repeated so that each worker reads >= 4 batches per pass over its shards, as from MELD's 200-clip
    shards (train_loader batches within one pass: a worker whose pass holds less than a batch yields
    nothing, see bench/README.md)."""
    from avemo.train.data import SplitShards, split_shards
    split = split_shards(shards, "train", log_fn=lambda *_: None)
    if not n_samples:
        return split
    copies = -(-4 * batch * workers // split.n_samples)
    return SplitShards(split.urls * copies, n_samples, split.label_counts)


def make_model(face_trainable: str, device: str = "cpu"):
    """AVEmotionNet with the pretrained MobileFaceNet and the training loop's AdamW param groups."""
    from avemo.model.net import ModelConfig, build_model
    from avemo.train.config import TrainConfig
    from avemo.train.loop import make_optimizer
    cfg = TrainConfig(model=ModelConfig(face_weights="auto", face_trainable=face_trainable))
    model = build_model(cfg.model, log=lambda *_: None).to(device).train()
    return model, make_optimizer(model, cfg)


def train_step(model, optimizer, batch: dict, autocast=None, weights=None):
    """One step of train/loop.py's train_step, the function the training loop runs (forward, class-weighted
    cross-entropy with the default label smoothing, backward, clip at the default grad_clip, AdamW, LR
    schedule step). weights: the class weights (default: uniform, so the weighted loss of the default
    imbalance=weighted_loss runs). -> the loss, a device tensor."""
    import torch
    from avemo.shards.labels import EMOTIONS
    from avemo.train.config import TrainConfig
    from avemo.train.loop import lr_lambda, train_step as loop_train_step
    scheduler = getattr(optimizer, "bench_scheduler", None)
    if scheduler is None:   # the loop's warm-up + cosine schedule over a long run: a bench stays near its start
        scheduler = optimizer.bench_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10**6, 10))
    if weights is None:
        weights = torch.ones(len(EMOTIONS), device=batch["label"].device)
    loss, _, _ = loop_train_step(model, optimizer, scheduler, batch, TrainConfig().optim, weights, autocast)
    return loss
