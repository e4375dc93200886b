"""Training memory: what `avemo train` holds per epoch, in its main process and in its loader workers.

Each variant runs `avemo train` as a child process for a few epochs on the same shard sets (default: the
real recipe's three sets that bench/real_data.py builds in bench/out/real/shards, trained with
configs/real.yaml; --quick: the real_data --quick sets and 2 short epochs) while this process samples the
child's process tree every --interval seconds with psutil:

- main RSS / USS: the training process (USS = pages only it holds);
- workers USS: the loader workers' own pages, summed (their RSS counts the parent's pages they share after
  fork, copy-on-write, so it says little);
- tree PSS: the whole run's memory with shared pages counted once = what the machine gives it. The goal
  (issue 19) is tree PSS <= 4 GB.

At every epoch end (the JSON line in RUN/train.log) it also records how the main process's memory is
split (/proc/PID/smaps: glibc heap, other anonymous memory, file-backed pages). Variants run in turn and
alternate over --repeats (A B A B), so background load hits them alike:

    .venv/bin/python bench/train_memory.py                                         # this checkout's defaults
    .venv/bin/python bench/train_memory.py --variant before="python=/work/main/.venv/bin/python" --variant now=""
    .venv/bin/python bench/train_memory.py --variant buf100="data.shuffle_buffer=100" --variant arena="MALLOC_ARENA_MAX=2"

A variant is NAME=SPEC; SPEC is space-separated KEY=VALUE: `python=PATH` runs another checkout's
interpreter (its own avemo), UPPER_CASE keys are environment variables of the child, the rest are
`avemo train` overrides. Results: bench/results/train_memory.{md,json} (--quick: train_memory_quick.*).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, loadavg, machine, new_record, table, write_results  # noqa: E402

GB = 1 << 30
REAL_SETS = ("paired", "ravdess", "fer")   # bench/real_emotion.py's order (the first picks best.pt)
QUICK_TRAIN = ["optim.epochs=2", "data.batch_size=8", "data.shuffle_buffer=32", "log_every=5"]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    variant: dict = {"python": sys.executable, "env": {}, "overrides": []}
    for token in shlex.split(spec):
        key, _, value = token.partition("=")
        if key == "python":
            variant["python"] = value
        elif key.isupper():
            variant["env"][key] = value
        else:
            variant["overrides"].append(token)
    return name, variant


def smaps_split(pid: int) -> dict[str, float]:
    """GB of the process's resident memory by kind: glibc's main heap, other anonymous mappings (thread
    arenas, mmap'd tensors), file-backed pages (libraries, mapped files)."""
    out = {"heap": 0.0, "anon": 0.0, "file": 0.0}
    kind = "anon"
    try:
        with open(f"/proc/{pid}/smaps") as fh:
            for line in fh:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):          # a mapping's header line
                    fields = line.split()
                    path = fields[5] if len(fields) > 5 else ""
                    kind = "heap" if path == "[heap]" else "file" if path.startswith("/") else "anon"
                elif first == "Rss:":
                    out[kind] += int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return {k: round(v, 3) for k, v in out.items()}


class Sampler(threading.Thread):
    """Samples a process tree until stopped; marks the epochs as RUN/train.log reports them (log_path)."""

    def __init__(self, pid: int, log_path: Path | None, interval: float):
        super().__init__(daemon=True)
        import psutil
        self.root, self.log_path, self.interval = psutil.Process(pid), log_path, interval
        self.samples: list[dict] = []
        self.epochs: list[dict] = []          # {"epoch", "t", "record", "smaps"}
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        # a resumed run's log already holds its earlier epochs: only what is written from now on marks them
        self.log_offset = log_path.stat().st_size if log_path is not None and log_path.is_file() else 0

    def _sample(self) -> dict:
        import psutil
        row = {"t": round(time.perf_counter() - self.t0, 1), "main_rss": 0.0, "main_uss": 0.0,
               "workers_uss": 0.0, "workers_rss_max": 0.0, "tree_pss": 0.0, "n_procs": 0,
               "largest_rss": 0.0, "children_pss": 0.0}
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return row
        for p in procs:
            try:
                m = p.memory_full_info()
            except psutil.Error:
                continue
            row["n_procs"] += 1
            row["tree_pss"] += m.pss / GB
            row["largest_rss"] = max(row["largest_rss"], m.rss / GB)
            if p.pid != self.root.pid:
                row["children_pss"] += m.pss / GB
            if p.pid == self.root.pid:
                row["main_rss"], row["main_uss"] = m.rss / GB, m.uss / GB
            else:
                row["workers_uss"] += m.uss / GB
                row["workers_rss_max"] = max(row["workers_rss_max"], m.rss / GB)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}

    def _epoch_lines(self) -> list[dict]:
        if self.log_path is None:
            return []
        try:
            text = self.log_path.read_bytes()[self.log_offset:].decode(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            if '{"epoch"' in line:                     # after the log's time stamp
                try:
                    out.append(json.loads(line[line.index('{"epoch"'):]))
                except json.JSONDecodeError:
                    pass
        return out

    def _mark_epochs(self) -> None:
        for record in self._epoch_lines()[len(self.epochs):]:
            self.epochs.append({"epoch": record["epoch"], "t": self.samples[-1]["t"], "record": record,
                                "smaps": smaps_split(self.root.pid)})

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self._sample())
            self._mark_epochs()
            self.stop.wait(self.interval)
        if self.samples:     # the last epoch's line, written after the last sample: its epoch, not "end"
            self._mark_epochs()

    def peak(self) -> dict[str, float]:
        """GB: the most the tree held (PSS), its root process (RSS) and its largest process (RSS: with the
        work in a child, e.g. `avemo train` started by a benchmark, that child) over the samples."""
        return {"tree_pss_gb": max((r["tree_pss"] for r in self.samples), default=0.0),
                "main_rss_gb": max((r["main_rss"] for r in self.samples), default=0.0),
                "largest_rss_gb": max((r["largest_rss"] for r in self.samples), default=0.0),
                "children_pss_gb": max((r["children_pss"] for r in self.samples), default=0.0)}


def per_epoch(sampler: Sampler) -> list[dict]:
    """Peaks of each epoch (training and its dev evaluation: up to the epoch's JSON line)."""
    rows, start = [], 0.0
    ends = [(e["epoch"], e["t"], e) for e in sampler.epochs]
    ends.append(("end", float("inf"), None))
    for epoch, end, info in ends:
        window = [s for s in sampler.samples if start < s["t"] <= end] or [{}]
        if not window[0] and epoch == "end":
            break
        row = {"epoch": epoch, **{k: max((s.get(k, 0.0) for s in window), default=0.0)
                                  for k in ("main_rss", "main_uss", "workers_uss", "workers_rss_max", "tree_pss",
                                            "n_procs")}}
        if info is not None:
            row["main_smaps"] = info["smaps"]
            row["samples_per_s"] = round(info["record"].get("samples_per_s", 0.0), 2)
            row["dev"] = {k: v for k, v in info["record"].items() if k.startswith("dev_") and k.endswith("accuracy")}
        rows.append(row)
        start = end
    return rows


def run_variant(name: str, variant: dict, shards: list[Path], config: str, overrides: list[str], work: Path,
                interval: float) -> dict:
    run = work / name / "run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [variant["python"], "-m", "avemo", "train", *[a for s in shards for a in ("--shards", str(s))],
           "--run", str(run), "--config", config, *overrides, *variant["overrides"]]
    env = dict(os.environ, **variant["env"])
    log_file = work / name / "stdout.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"[train_memory] {name}: {shlex.join(cmd)}" + (f" (env {variant['env']})" if variant["env"] else ""),
          flush=True)
    t0 = time.perf_counter()
    with open(log_file, "wb") as out:
        # cwd outside any checkout: `python -m avemo` imports from sys.path[0] = cwd first, which would mix
        # this checkout's package into another interpreter's
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work / name)
        sampler = Sampler(child.pid, run / "train.log", interval)
        sampler.start()
        rc = child.wait()
        sampler.stop.set()
        sampler.join()
    if rc != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"variant {name}: avemo train exited {rc}: " + " | ".join(tail))
    epochs = per_epoch(sampler)
    peak = {k: max(r[k] for r in epochs) for k in ("main_rss", "main_uss", "workers_uss", "tree_pss")}
    print(f"[train_memory] {name}: peak tree PSS {peak['tree_pss']:.2f} GB, main RSS {peak['main_rss']:.2f} GB "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"command": cmd, "env": variant["env"], "wall_s": round(time.perf_counter() - t0, 1), "peak": peak,
            "epochs": epochs, "timeline": sampler.samples}


def subset_set(src: Path, dst: Path, shards: int, clips: int) -> Path:
    """A smaller copy of a shard set, made once: per split its first `shards` shards, each cut to its first
    `clips` samples, and a manifest that lists just those (with the new shards' sha256). Same clips, same
    format: the same work per step, fewer steps per epoch."""
    import hashlib
    import io
    import tarfile
    import pyarrow as pa
    import pyarrow.parquet as pq
    done = dst / f".subset-{shards}x{clips}"
    if done.is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    table = pq.read_table(src / "manifest.parquet")
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    keep: dict[tuple[str, str], str] = {}                   # (shard, key) -> new sha256
    for split in sorted({r["split"] for r in rows}):
        for name in sorted({r["shard"] for r in rows if r["split"] == split})[:shards]:
            buf, keys = io.BytesIO(), []
            with tarfile.open(src / name) as tin, tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tout:
                for member in tin:
                    key = member.name.split(".", 1)[0]
                    if key not in keys:
                        if len(keys) == clips:
                            break
                        keys.append(key)
                    tout.addfile(member, tin.extractfile(member))
            (dst / name).write_bytes(buf.getvalue())
            sha = hashlib.sha256(buf.getvalue()).hexdigest()
            keep.update({(name, key): sha for key in keys})
    kept = [dict(r, shard_sha256=keep[(r["shard"], r["key"])]) for r in rows if (r["shard"], r["key"]) in keep]
    pq.write_table(pa.Table.from_pylist(kept, schema=table.schema), dst / "manifest.parquet")
    shutil.copy(src / "build_config.json", dst / "build_config.json")
    done.write_text("")
    return dst


def recipe_batches(n: int, batch: int = 32, seed: int = 0):
    """n batches shaped like the real recipe's (configs/real.yaml): per clip a set drawn 2:1:1 (paired: 4
    face frames and 2.8-4 s of audio; RAVDESS: audio only; FER: one face, no audio), mels padded as
    collate pads them. Random content: the cost of a step depends on the shapes only."""
    import random
    import torch
    rng = random.Random(seed)
    for _ in range(n):
        kinds = rng.choices(["paired", "ravdess", "fer"], weights=[2, 1, 1], k=batch)
        lengths = [rng.randint(280, 400) if k != "fer" else 0 for k in kinds]
        width = max(64, -(-max(lengths) // 64) * 64)
        face_mask = torch.zeros(batch, 4, dtype=torch.bool)
        mel_mask = torch.zeros(batch, width, dtype=torch.bool)
        for i, (kind, n_mel) in enumerate(zip(kinds, lengths)):
            face_mask[i, : {"paired": 4, "fer": 1}.get(kind, 0)] = True
            mel_mask[i, :n_mel] = True
        yield {"faces": torch.randint(0, 256, (batch, 4, 3, 112, 112), dtype=torch.uint8), "face_mask": face_mask,
               "mel": torch.randn(batch, 64, width) * mel_mask[:, None], "mel_mask": mel_mask,
               "label": torch.randint(0, 7, (batch,))}


def step_cost(malloc: str, steps: int, threads: int) -> dict:
    """In this process: `steps` training steps of the real recipe's model on recipe_batches, with glibc's
    heap kept (what `avemo train` does on CPU) or glibc's defaults; CPU seconds, page faults and RSS."""
    import resource
    import psutil
    import torch
    from avemo.core.config import load_config
    from avemo.core.memory import keep_heap, release_free_memory
    from avemo.model.net import build_model
    from avemo.train.config import TrainConfig
    from avemo.train.loop import make_optimizer, train_step
    if malloc.startswith("heap"):       # heap, or heapN: kept, and its free pages handed back every N steps
        keep_heap()
    trim_every = int(malloc[4:] or 0) if malloc.startswith("heap") else 0
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, "train", "real", [], {"shards": ["a", "b", "c"]})   # the recipe: 3 sets
    model = build_model(cfg.model, log=lambda *a: None).train()
    optimizer = make_optimizer(model, cfg)
    rows = []
    for i, batch in enumerate(recipe_batches(steps)):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train_step(model, optimizer, None, batch, cfg.optim)
        if trim_every and (i + 1) % trim_every == 0:
            release_free_memory()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        rows.append({"cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                     "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
                     "wall_s": time.perf_counter() - t0, "rss_gb": psutil.Process().memory_info().rss / GB})
    return {"malloc": malloc, "steps": rows, "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)}


def default_shards(quick: bool) -> list[Path]:
    root = OUT / ("real_quick" if quick else "real") / "shards"
    return [root / name for name in REAL_SETS]


def report(record: dict, name: str, quick: bool) -> Path:
    rows, epoch_rows = [], []
    for variant, runs in record["runs"].items():
        for i, r in enumerate(runs):
            label = f"{variant}" + (f" #{i + 1}" if len(runs) > 1 else "")
            rows.append([label, r["peak"]["tree_pss"], r["peak"]["main_rss"], r["peak"]["main_uss"],
                         r["peak"]["workers_uss"], r["wall_s"]])
            for e in r["epochs"]:
                s = e.get("main_smaps", {})
                epoch_rows.append([label, e["epoch"], e["tree_pss"], e["main_rss"], e["workers_uss"],
                                   e["workers_rss_max"], e["n_procs"], s.get("heap", ""), s.get("anon", ""),
                                   e.get("samples_per_s", "")])
    spec = "; ".join(f"`{k}`: {v or '(this checkout)'}" for k, v in record["variants"].items())
    body = [f"Shards: {', '.join(record['shards'])}; `--config {record['config']}` "
            f"{' '.join(record['overrides'])}. Variants: {spec}.", "",
            "GB (2^30 bytes). Tree PSS = the run's memory with pages shared after fork counted once (goal: <= 4 "
            "GB for the full-data recipe); main = the training process; workers USS = the loader workers' own "
            "pages, summed.", "",
            table(["variant", "peak tree PSS", "peak main RSS", "peak main USS", "peak workers USS", "wall s"], rows),
            "", "Per epoch (peaks up to the epoch's end, its dev evaluation included; main's split from "
            "/proc/PID/smaps at the epoch's end; samples/s: training throughput of the epoch):", "",
            table(["variant", "epoch", "tree PSS", "main RSS", "workers USS", "max worker RSS", "processes",
                   "main heap", "main other anon", "samples/s"], epoch_rows)]
    if quick:
        body.insert(0, "**Quick mode** (CI-sized sets, 2 epochs): keeps the code path alive; the numbers say "
                       "little.\n")
    return write_results(name, "Training memory per epoch" + (" (quick)" if quick else ""), record, "\n".join(body))


def malloc_report(args) -> int:
    record = new_record(args)
    runs: dict[str, list] = {m: [] for m in args.variants.split(",")}
    for _ in range(args.repeats):
        for malloc in runs:
            out = subprocess.run([sys.executable, __file__, "--step-cost", malloc, "--malloc", str(args.malloc),
                                  "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            runs[malloc].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[train_memory] malloc {malloc}: max RSS {runs[malloc][-1]['maxrss_gb']:.2f} GB", flush=True)
    record["load"]["after"] = loadavg()
    record["malloc_runs"] = runs
    rows = []
    for malloc, rs in runs.items():
        steps = [s for r in rs for s in r["steps"][1:]]          # the first step of a run warms up
        mean = {k: sum(s[k] for s in steps) / len(steps) for k in ("cpu_s", "sys_s", "minflt", "wall_s")}
        rows.append([malloc, len(steps), round(mean["cpu_s"], 2), round(mean["sys_s"], 2), int(mean["minflt"]),
                     round(mean["wall_s"], 2), round(max(r["maxrss_gb"] for r in rs), 2),
                     round(max(s["rss_gb"] for r in rs for s in r["steps"][-3:]), 2)])
    body = [f"Training steps of configs/real.yaml's model on batches shaped like the recipe's (bench/train_memory.py "
            f"recipe_batches), {args.threads} torch thread(s), {args.malloc} steps per run, runs interleaved "
            f"{args.repeats}x. `heap`: glibc keeps big blocks on its heap (avemo.core.memory.keep_heap, mmap threshold "
            "256 MB, trim threshold 512 MB); `default`: glibc's own thresholds (blocks over <= 32 MB are mmap'd and "
            "returned on free). CPU s per step counts user + system time of all the process's threads (stable under "
            "load, unlike wall time); page faults = minor faults per step.", "",
            table(["malloc", "steps", "CPU s/step", "of which system", "page faults/step", "wall s/step",
                   "max RSS GB", "RSS GB at the end"], rows)]
    path = write_results(args.name or "train_memory_malloc", "Training step: glibc heap kept vs defaults", record,
                         "\n".join(body))
    print(f"[train_memory] results in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Other arguments are train key=value "
                                "overrides for every variant (e.g. optim.epochs=3).")
    p.add_argument("--shards", action="append", default=None, help="shard sets (repeatable; default: the real "
                                                                    "recipe's sets in bench/out/real/shards)")
    p.add_argument("--config", default="real", help="training recipe (default real)")
    p.add_argument("--variant", action="append", default=None, help="NAME=SPEC (see above); default: one, "
                                                                     "this checkout as it is")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved (default 1)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--subset", default="2x64", help="SHARDSxCLIPS: train on a copy of each set cut to its first "
                   "SHARDS shards per split, CLIPS clips each (default 2x64: the recipe's 2 loader workers, short "
                   "epochs); 0 = the whole sets")
    p.add_argument("--quick", action="store_true", help="real_data.py --quick sets, 2 small epochs")
    p.add_argument("--name", default=None, help="results name (default train_memory[_quick])")
    p.add_argument("--step-cost", default=None, metavar="MALLOC", help=argparse.SUPPRESS)  # one run of the below
    p.add_argument("--malloc", type=int, default=0, metavar="STEPS",
                   help="instead of training runs: CPU seconds, page faults and RSS per training step of the recipe's "
                        "model, glibc heap kept vs glibc defaults, STEPS steps per run, interleaved --repeats")
    p.add_argument("--variants", default="heap,default", help="--malloc variants: heap, default, heapN (heap kept, "
                                                             "free pages handed back every N steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for --malloc (1: CPU time without "
                                                          "OpenMP spinning)")
    args, overrides = p.parse_known_args(argv)
    if args.step_cost:
        print(json.dumps(step_cost(args.step_cost, args.malloc, args.threads)))
        return 0
    if args.malloc:
        return malloc_report(args)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unknown argument {bad[0]!r} (train overrides are key=value)")
    shards = [Path(s) for s in args.shards] if args.shards else default_shards(args.quick)
    if args.quick and not args.shards and not all((s / "manifest.parquet").is_file() for s in shards):
        import real_data
        real_data.prepare(Path(os.environ.get("AVEMO_SHARED") or REPO.parent / "shared"), OUT / "real_quick",
                          quick=True)
    missing = [str(s) for s in shards if not (s / "manifest.parquet").is_file()]
    if missing:
        print(f"train_memory: no shards in {', '.join(missing)}: build them first (.venv/bin/python "
              f"bench/real_data.py), or pass --shards", file=sys.stderr)
        return 2
    if args.subset != "0" and not args.quick:
        n_shards, n_clips = (int(v) for v in args.subset.split("x"))
        shards = [subset_set(s, OUT / "train_memory" / "sets" / f"{s.name}-{args.subset}", n_shards, n_clips)
                  for s in shards]
    overrides = [*(QUICK_TRAIN if args.quick else [f"optim.epochs={args.epochs}"]), "report_to=jsonl", *overrides]
    variants = dict(parse_variant(v) for v in (args.variant or ["now="]))
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, shards=[str(s) for s in shards], config=args.config,
                  overrides=overrides, runs={name: [] for name in variants},
                  variants={v.partition("=")[0]: v.partition("=")[2] for v in (args.variant or ["now="])})
    work = OUT / "train_memory"
    for _ in range(args.repeats):
        for name, variant in variants.items():
            record["runs"][name].append(run_variant(name, variant, shards, args.config, overrides, work,
                                                    args.interval))
    record["load"]["after"] = loadavg()
    path = report(record, args.name or ("train_memory_quick" if args.quick else "train_memory"), args.quick)
    print(f"[train_memory] results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
