"""Where the training process's memory goes: glibc's heap accounting (mallinfo2) inside `avemo train`.

Runs the training loop in this process and, every --every steps, prints after the step: RSS, glibc's arena
size, the bytes live in it (`used`), free in it (`free`; `top` = the part at its top, which a trim can give
back) and mmapped blocks; a 2 ms sampler thread also records the largest live heap inside each step. One
JSON line each, on stdout. How bench/results/train_memory_trim.md found glibc's fragmentation (~0.5 GB
live at the peak of a step, a 1.2-1.6 GB arena):

    .venv/bin/python bench/heap_probe.py --shards S/paired --shards S/ravdess --shards S/fer --run /tmp/probe \\
        optim.epochs=1 data.epoch_samples=1600 report_to=jsonl

Only meaningful on glibc (under an LD_PRELOADed malloc, mallinfo2 reports glibc's unused heap). Other arguments are
`avemo train` overrides; --config defaults to real.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import threading
import time

G = 1 << 30


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", action="append", required=True)
    p.add_argument("--run", required=True, help="a scratch run folder (overwritten)")
    p.add_argument("--config", default="real")
    p.add_argument("--every", type=int, default=10, help="steps between lines")
    args, overrides = p.parse_known_args(argv)
    import avemo.train.loop as loop
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")
    peak, step_no = {"used": 0.0}, [0]

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / G

    def sampler() -> None:
        while True:
            peak["used"] = max(peak["used"], libc.mallinfo2().uordblks / G)
            time.sleep(0.002)

    train_step = loop.train_step

    def probed(*a, **k):
        step_no[0] += 1
        peak["used"] = 0.0
        out = train_step(*a, **k)
        if step_no[0] % args.every == 0:
            m = libc.mallinfo2()
            print(json.dumps({"step": step_no[0], "rss": round(rss(), 3), "arena": round(m.arena / G, 3),
                              "used": round(m.uordblks / G, 3), "free": round(m.fordblks / G, 3),
                              "top": round(m.keepcost / G, 3), "mmapped": round(m.hblkhd / G, 3),
                              "peak_used_in_step": round(peak["used"], 3)}), flush=True)
        return out

    loop.train_step = probed
    threading.Thread(target=sampler, daemon=True).start()
    cfg = load_config(TrainConfig, "train", args.config, overrides, {"shards": args.shards, "run": args.run})
    loop.run_train(cfg, overwrite=True, log=lambda *a, **k: print(*a, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
