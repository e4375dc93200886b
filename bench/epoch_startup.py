"""Epoch start-up of the training loader (issue 10): a new DataLoader per epoch (its workers spawned and
their pipelines built again each epoch, as train/loop.py did) vs the loader built once with persistent
workers that read the epoch from a SharedEpoch (what it does now). No model: time from asking for an
epoch to its first batch, for epochs 2.. of each run, and the whole short epoch; interleaved repeats.

    .venv/bin/python bench/epoch_startup.py            # -> bench/results/epoch_startup.md
    .venv/bin/python bench/epoch_startup.py --quick    # smoke run -> epoch_startup_quick.md
"""
from __future__ import annotations

import argparse
import statistics
import time

import common
import torch


def run(split, data_cfg, epochs: int, persistent: bool) -> dict:
    from avemo.train.config import AugmentConfig
    from avemo.train.data import SharedEpoch, train_loader
    t0 = time.perf_counter()
    shared = SharedEpoch(0)
    loader = train_loader(split, data_cfg, AugmentConfig(), shared, 0)[0] if persistent else None
    starts, items = [], 0
    for epoch in range(epochs):
        asked = time.perf_counter()
        if persistent:
            shared.set_value(epoch)
            it = iter(loader)
        else:
            it = iter(train_loader(split, data_cfg, AugmentConfig(), epoch, 0)[0])
        first = next(it)
        starts.append(time.perf_counter() - asked)
        items += first["label"].shape[0] + sum(b["label"].shape[0] for b in it)
    return {"seconds": time.perf_counter() - t0, "items": items, "first_epoch_start_s": starts[0],
            "epoch_start_s": statistics.median(starts[1:])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    name = "epoch_startup_quick" if args.quick else "epoch_startup"
    torch.set_num_threads(1)
    record = common.new_record(args)
    root = common.clip_set({"train": 6, "dev": 1, "test": 2})     # bench/build_shards.py's clip set
    shards = common.bench_shards(root)
    from avemo.train.config import DataConfig
    data_cfg = DataConfig(batch_size=args.batch, workers=args.workers, max_frames=16, pin_memory=False)
    split = common.train_split(shards, 4 * args.batch * args.workers, args.batch, args.workers)
    variants = {"fresh_per_epoch": lambda: run(split, data_cfg, args.epochs, False),
                "persistent": lambda: run(split, data_cfg, args.epochs, True)}
    runs = common.interleave(variants, args.repeats)
    record["load"]["after"] = common.loadavg()
    start = common.summarize(runs, "epoch_start_s")
    total = common.summarize(runs, "seconds")
    record |= {"runs": runs, "epoch_start_s": start, "seconds": total,
               "ratio_epoch_start": common.ratio(start["fresh_per_epoch"], start["persistent"])}
    rows = [[n, start[n]["min"], start[n]["median"], total[n]["median"], runs[n][0]["items"]] for n in variants]
    r = record["ratio_epoch_start"]
    body = "\n".join([
        f"{args.workers} workers, batch {args.batch}, {args.epochs} epochs of {split.n_samples} samples per run "
        f"(shards `{shards.relative_to(common.REPO)}`), no model; {args.repeats} interleaved repeats.", "",
        common.table(["loader", "epoch start-up s (min)", "median", "run s (median)", "samples per run"], rows), "",
        f"Epoch start-up (epochs 2..{args.epochs}: time to the first batch), fresh loader / persistent: "
        f"**{r['median']:.1f}x** (worst {r['worst']:.1f}x, best {r['best']:.1f}x).", ""])
    path = common.write_results(name, "Epoch start-up: a loader per epoch vs one with persistent workers", record,
                                body)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
