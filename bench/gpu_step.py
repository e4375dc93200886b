"""Benchmark (issue 3c): does the shard loader keep an accelerator busy? Step time of AVEmotionNet fed by
the real train_loader (pinned memory, non_blocking copies) vs the same steps on a synthetic batch of the
same shape that already sits on the device, interleaved per repeat (real, synthetic, real, ...).
bf16 autocast on CUDA (--amp), optional torch.compile (--compile). Goal: real/synthetic >= 0.9.

    .venv/bin/python bench/gpu_step.py                       # on a GPU box -> bench/results/gpu_step.md
    .venv/bin/python bench/gpu_step.py --compile --workers 8
    .venv/bin/python bench/gpu_step.py --device cpu --quick  # smoke run anywhere -> gpu_step_cpu_quick.md
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import common
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict, device: torch.device) -> dict:
    # as train/evaluate.py's to_device: the loader pinned the batch, so these copies overlap compute
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def timed_steps(step, batches, warmup: int, steps: int, device) -> dict:
    """Run warmup + steps steps over `batches` (an iterator); time only the last `steps`."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        n += step(next(batches))
    sync(device)
    return {"seconds": time.perf_counter() - t0, "items": n}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, 2 steps, 1 repeat")
    p.add_argument("--shards", default="", help="shard folder (default: build the bench clip set's shards once)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32 as configs/meld.yaml)")
    p.add_argument("--max-frames", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: CPU cores - 1, at most 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first in each repeat (default 5)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"], help="auto = bf16 on CUDA only")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--face", default="all", choices=["all", "none"], help="model.face_trainable")
    p.add_argument("--name", default=None, help="results file name (default gpu_step[_cpu][_quick])")
    a = p.parse_args(argv)
    q = a.quick
    a.batch = a.batch or (4 if q else 32)
    a.steps = a.steps or (2 if q else 30)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 5)
    a.repeats = a.repeats or (1 if q else 3)
    a.workers = a.workers if a.workers is not None else max(1, min(8, (common.machine()["nproc"] or 2) - 1))
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_step: --device cuda but no CUDA device is visible (use --device cpu for a smoke run)")
    args.name = args.name or "gpu_step" + ("_cpu" if device.type == "cpu" else "") + ("_quick" if args.quick else "")
    record = common.new_record(args)
    from avemo.train.config import AugmentConfig, DataConfig
    from avemo.train.data import train_loader
    shards = Path(args.shards) if args.shards else common.bench_shards(common.clip_set({"train": 6, "dev": 1, "test": 2}))
    per_repeat = (args.warmup + args.steps) * args.batch
    split = common.train_split(shards, per_repeat, args.batch, args.workers)
    data = DataConfig(batch_size=args.batch, workers=args.workers, max_frames=args.max_frames, pin_memory=True)

    model, opt = common.make_model(args.face, str(device))
    net = torch.compile(model) if args.compile else model
    use_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    def step(batch: dict) -> int:
        # .item(): wait for the step; the loop syncs only every log_every steps, so this is a little
        # pessimistic, alike for both variants
        common.train_step(net, opt, batch, autocast()).item()
        return batch["label"].shape[0]

    def real() -> dict:
        # a fresh loader per repeat (as per epoch in train/loop.py); its start-up falls in the warm-up steps
        loader, _ = train_loader(split, data, AugmentConfig(), epoch=0, seed=0)
        return timed_steps(step, (to_device(b, device) for b in loader), args.warmup, args.steps, device)

    first = next(iter(train_loader(split, DataConfig(batch_size=args.batch, workers=0, max_frames=args.max_frames),
                                   AugmentConfig(), 0, 0)[0]))
    resident = to_device(first, device)                   # the synthetic batch: same shapes, on the device

    def synthetic() -> dict:
        return timed_steps(step, iter(lambda: resident, None), args.warmup, args.steps, device)

    shapes = {k: list(v.shape) for k, v in first.items() if torch.is_tensor(v)}
    print(f"{device} bf16={use_bf16} compile={args.compile} workers={args.workers} shapes {shapes}", flush=True)
    runs = common.interleave({"real_loader": real, "synthetic": synthetic}, args.repeats)
    record["load"]["after"] = common.loadavg()
    rates = common.summarize(runs)
    r = common.ratio(rates["real_loader"], rates["synthetic"])
    record |= {"device": str(device), "bf16": use_bf16, "shapes": shapes, "runs": runs, "samples_per_s": rates,
               "ratio_real/synthetic": r, "goal_met": r["median"] >= 0.9}
    rows = [[n, s["min"], s["median"], s["max"], s["n"], 1000 * args.batch / s["median"]] for n, s in rates.items()]
    body = [
        f"Device **{device}**" + ("" if device.type == "cuda" else
                                  " — NOT a GPU run: no GPU was lent to this session, so this only smoke-tests "
                                  "the script on the CPU; the goal applies to a GPU run") + ".",
        f"Shards `{os.path.relpath(shards, common.REPO)}`; batch {args.batch}, shapes {shapes}; {args.workers} loader workers, pinned memory, "
        f"non_blocking copies; bf16 autocast: {use_bf16}; torch.compile: {args.compile}; "
        f"model.face_trainable={args.face}; {args.warmup} warm-up + {args.steps} timed steps per repeat.", "",
        common.table(["variant", "samples/s min", "median", "max", "repeats", "ms/step (median)"], rows), "",
        f"real loader / synthetic resident batch: **{r['median']:.3f}** (worst {r['worst']:.3f}, best "
        f"{r['best']:.3f}); goal >= 0.9: **{'met' if r['median'] >= 0.9 else 'missed'}**.", ""]
    path = common.write_results(args.name, "Step time: real shard loader vs device-resident batches (issue 3c)",
                                record, "\n".join(body))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
