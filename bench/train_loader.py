"""Benchmark the training data path (issue 3) on shards built by the pipeline from the build benchmark's
clip set (1280x720 MELD-like clips), interleaved per repeat:

  loader_w1, loader_w2   train.data.train_loader with 1 / 2 workers, no model: samples/s (an epoch
                         stretched to --loader-samples so worker start-up is amortised as on MELD)
  step_all, step_none    AVEmotionNet forward + backward + AdamW on batches of the loader's shape
                         (model.face_trainable=all / none): samples/s of the model alone on this CPU
  epoch_shards           one epoch of the train split as train/loop.py runs it: train_loader + step
  epoch_seed             the same epoch the seed's way: a DataLoader whose __getitem__ decodes every
                         frame at 15 fps (full size), runs the detector per image, crops, log-mel; + step
  data_seed              that seed DataLoader alone (no model): with loader_w2, the data-path ratio, i.e.
                         the epoch ratio on hardware whose model step is negligible (a GPU)

    .venv/bin/python bench/train_loader.py           # ~5 min on 2 cores -> bench/results/train_loader.md
    .venv/bin/python bench/train_loader.py --quick   # smoke run -> train_loader_quick.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import torch


def data_config(batch: int, workers: int, max_frames: int):
    from avemo.train.config import DataConfig
    return DataConfig(batch_size=batch, workers=workers, max_frames=max_frames, pin_memory=False)


def run_loader(split, data_cfg) -> dict:
    from avemo.train.config import AugmentConfig
    from avemo.train.data import train_loader
    t0 = time.perf_counter()
    loader, _ = train_loader(split, data_cfg, AugmentConfig(), epoch=0, seed=0)
    n, first = 0, None
    for batch in loader:
        n += batch["label"].shape[0]
        first = first or time.perf_counter()
    end = time.perf_counter()
    b = data_cfg.batch_size
    return {"seconds": end - t0, "items": n, "first_batch_s": first - t0,
            "steady_rate": (n - b) / (end - first) if n > b else None, "workers": data_cfg.workers}


def run_steps(model, opt, batch, steps: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(steps):
        common.train_step(model, opt, batch).item()   # .item(): wait for the step to finish (timing)
    return {"seconds": time.perf_counter() - t0, "items": steps * batch["label"].shape[0]}


def run_epoch(loader, model=None, opt=None) -> dict:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        if model is not None:
            common.train_step(model, opt, batch).item()
        n += batch["label"].shape[0]
    return {"seconds": time.perf_counter() - t0, "items": n}


def warm_shapes(model, opt, batch: dict, size: int, widths=range(64, 1025, 64)) -> None:
    """One untimed step per padded mel width a batch can have: the first step of each new shape builds
    oneDNN primitives (~0.1-2 s), paid once in a real 300-step epoch but not in a 3-step one."""
    b = {k: v[:size] for k, v in batch.items()}
    for w in widths:
        mel = torch.zeros((size, b["mel"].shape[1], w))
        common.train_step(model, opt, dict(b, mel=mel, mel_mask=torch.ones((size, w), dtype=torch.bool)))


class SeedClips(torch.utils.data.Dataset):
    """The seed's __getitem__: all the heavy work on every epoch (detector built once, inherited by fork)."""

    def __init__(self, items: list[tuple[str, int]], detector, max_frames: int, max_mel: int):
        self.items, self.detector, self.max_frames, self.max_mel = items, detector, max_frames, max_mel

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        track, mel = common.seed_process(Path(path), self.detector, self.max_frames)
        faces = torch.zeros((self.max_frames, 3, 112, 112), dtype=torch.uint8)
        mask = torch.zeros(self.max_frames, dtype=torch.bool)
        slots = torch.from_numpy(track.mask.astype(bool)).nonzero().flatten()
        faces[slots] = torch.from_numpy(track.crops).permute(0, 3, 1, 2)
        mask[slots] = True
        mel = torch.zeros((64, 0)) if mel is None else torch.from_numpy(mel[:, : self.max_mel].astype("float32"))
        return {"key": Path(path).stem, "label": label, "faces": faces, "face_mask": mask, "mel": mel}


def seed_loader(shards: Path, batch: int, workers: int, max_frames: int, n: int):
    from avemo.pipeline.faces import get_detector
    from avemo.shards.manifest import read_manifest
    from avemo.model.inputs import collate
    rows = [r for r in read_manifest(shards).select(["split", "status", "source", "label"]).to_pylist()
            if r["split"] == "train" and r["status"] == "ok"][:n]
    data = SeedClips([(r["source"], r["label"]) for r in rows], get_detector(common.seed_face_config()),
                     max_frames, 1000)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                                       collate_fn=collate, drop_last=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, small batches and epoch")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3, quick 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size of (a) (default 16 as configs/demo.yaml, "
                   "the CPU recipe; quick 8)")
    p.add_argument("--max-frames", type=int, default=16, help="face frames per clip (DataConfig.max_frames)")
    p.add_argument("--loader-samples", type=int, default=None, help="samples per loader run (default 640)")
    p.add_argument("--steps", type=int, default=1, help="timed model steps per repeat (after a warm-up step)")
    p.add_argument("--epoch-batch", type=int, default=8, help="batch size of the epoch comparison (b)")
    p.add_argument("--epoch-face", default="none", choices=["none", "all"], help="face_trainable in (b)")
    p.add_argument("--epoch-clips", type=int, default=None, help="train clips per epoch in (b) (default 24, quick 8)")
    p.add_argument("--only", default="", help="comma list of variants to run (default: all)")
    p.add_argument("--malloc", default="heap", choices=["default", "heap"],
                   help="heap (what `avemo train` does on CPU): keep large blocks on glibc's heap (mallopt); "
                        "default: glibc's own thresholds, for comparison")
    p.add_argument("--name", default=None, help="results file name (default train_loader[_quick])")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.batch = a.batch or (8 if a.quick else 16)
    a.loader_samples = a.loader_samples or (64 if a.quick else 640)
    a.epoch_clips = a.epoch_clips or (8 if a.quick else 24)
    a.name = a.name or ("train_loader_quick" if a.quick else "train_loader")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(common.machine()["nproc"])
    if args.malloc == "heap":
        from avemo.core.memory import keep_heap
        keep_heap()
    record = common.new_record(args)
    root = common.clip_set({"train": 6, "dev": 1, "test": 2})     # bench/build_shards.py's clip set
    shards = common.bench_shards(root)
    long_split = common.train_split(shards, args.loader_samples, args.batch)
    epoch_split = common.train_split(shards)
    epoch_split.n_samples = min(epoch_split.n_samples, args.epoch_clips)   # an epoch of this many clips
    # one real batch of (a)'s shape, reused as the model's input: (B, T, 3, 112, 112) uint8, (B, 64, F) ...
    from avemo.train.data import train_loader
    from avemo.train.config import AugmentConfig
    batch = next(iter(train_loader(long_split, data_config(args.batch, 0, args.max_frames), AugmentConfig(), 0, 0)[0]))
    shapes = {k: list(v.shape) for k, v in batch.items() if torch.is_tensor(v)}
    models = {f: common.make_model(f) for f in ("all", "none")}
    for model, opt in models.values():
        run_steps(model, opt, batch, 1)                              # warm-up, outside timing
    epoch_cfg = data_config(args.epoch_batch, 2, args.max_frames)
    epoch_model = common.make_model(args.epoch_face)
    warm_shapes(*epoch_model, batch, args.epoch_batch)
    n_epoch = (epoch_split.n_samples // args.epoch_batch) * args.epoch_batch
    variants = {
        "loader_w1": lambda: run_loader(long_split, data_config(args.batch, 1, args.max_frames)),
        "loader_w2": lambda: run_loader(long_split, data_config(args.batch, 2, args.max_frames)),
        "step_all": lambda: run_steps(*models["all"], batch, args.steps),
        "step_none": lambda: run_steps(*models["none"], batch, args.steps),
        "epoch_shards": lambda: run_epoch(train_loader(epoch_split, epoch_cfg, AugmentConfig(), 0, 0)[0],
                                          *epoch_model),
        "epoch_seed": lambda: run_epoch(seed_loader(shards, args.epoch_batch, 2, args.max_frames, n_epoch),
                                        *epoch_model),
        "data_seed": lambda: run_epoch(seed_loader(shards, args.epoch_batch, 2, args.max_frames, n_epoch)),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    print(f"{epoch_split.n_samples} train clips in {len(epoch_split.urls)} shards; batch shapes {shapes}; "
          f"{args.repeats} interleaved repeats of {list(variants)}", flush=True)
    runs = common.interleave(variants, args.repeats)
    record["load"]["after"] = common.loadavg()
    rates = common.summarize(runs)
    epoch_s = common.summarize(runs, "seconds")
    record |= {"shards": str(shards.relative_to(common.REPO)), "batch_shapes": shapes, "runs": runs,
               "samples_per_s": rates, "seconds": epoch_s,
               "ratios": {name: common.ratio(rates[a], rates[b]) for name, (a, b) in RATIOS.items()
                          if a in rates and b in rates}}
    path = common.write_results(args.name, "Training data path: shard loader vs model step vs the seed (issue 3)",
                                record, report(record, args))
    print(path.read_text())
    return 0


RATIOS = {"epoch_seed/epoch_shards (time)": ("epoch_shards", "epoch_seed"),
          "loader_w2/data_seed (data path)": ("loader_w2", "data_seed"),
          "loader_w1/step_all": ("loader_w1", "step_all"), "loader_w1/step_none": ("loader_w1", "step_none"),
          "loader_w2/loader_w1": ("loader_w2", "loader_w1")}


def report(rec: dict, args) -> str:
    rates, runs = rec["samples_per_s"], rec["runs"]
    rows = []
    for n, s in rates.items():
        extra = ""
        if n.startswith("loader"):
            steady = [r["steady_rate"] for r in runs[n] if r["steady_rate"]]
            first = common.stats([r["first_batch_s"] for r in runs[n]])
            extra = (f"per worker {s['median'] / runs[n][0]['workers']:.1f}/s; first batch after "
                     f"{first['median']:.2f} s; after it {max(steady) if steady else float('nan'):.1f}/s")
        elif n.startswith(("epoch", "data")):
            sec = rec["seconds"][n]
            extra = f"epoch of {runs[n][0]['items']} samples: {sec['min']:.2f} / {sec['median']:.2f} s (min / median)"
        rows.append([n, s["min"], s["median"], s["max"], s["n"], extra])
    r = rec["ratios"]
    goals = []
    for k, what in (("epoch_seed/epoch_shards (time)", "Epoch from shards vs the seed's on-the-fly decoding + "
                     "detection, on this CPU"),
                    ("loader_w2/data_seed (data path)", "Data path alone (shard loader vs the seed's DataLoader, "
                     "2 workers each, no model): the epoch ratio wherever the model step is cheap next to the "
                     "data path (a GPU); on a 2-core CPU the shared model step dilutes it")):
        if k in r:
            goals.append(f"- {what}: **{r[k]['median']:.1f}x** (goal >= 50x: "
                         f"**{'met' if r[k]['median'] >= 50 else 'missed'}**)")
    return "\n".join([
        f"Shards: `{rec['shards']}` (built by the pipeline with its default config, 2 workers, 8 clips per shard, "
        f"from the 1280x720 clip set of bench/build_shards.py). (a) batch {args.batch}, shapes "
        f"{rec['batch_shapes']}; the model steps reuse one real batch. (b) batch {args.epoch_batch}, "
        f"model.face_trainable={args.epoch_face}, 2 loader workers on both sides; torch threads in the main "
        f"process = {rec['machine']['torch_threads']}, 1 in each loader worker; glibc malloc: {args.malloc}.", "",
        "## Samples/s (min / median / max over interleaved repeats)", "",
        common.table(["variant", "min", "median", "max", "repeats", "notes"], rows), "",
        "## Ratios (median; worst/best from the extremes)", "",
        common.table(["ratio", "median", "worst", "best"], [[k, v["median"], v["worst"], v["best"]] for k, v in r.items()]),
        "", *goals, "", "A loader/step ratio above 1 means the loader keeps the model fed on this CPU with one worker.",
        ""])


if __name__ == "__main__":
    raise SystemExit(main())
