"""Scaling of build-shards with Dask worker processes (issue 5): clips/s with 1 and with 2 workers on this
machine, and the parallel efficiency clips/s(2) / (2 x clips/s(1)).

One generated clip set (make_mini_meld: --per-class clips per emotion, 640x360, real face photo + speech),
train split only, --shard-clips clips per shard so both worker counts get an even share of shards.
Both LocalClusters (1 worker, 2 workers; 1 thread each, as `avemo build-shards` starts them) are started
and warmed once (each worker loads its detector, as a long-lived cluster's workers have), then the runs
are interleaved per repeat (1, 2, 1, 2, ...), each run_build into a fresh folder. Cluster start is timed
apart. Every run must accept every clip, and all runs must produce byte-identical shards.

    .venv/bin/python bench/scaling.py              # ~8 min on 2 busy cores -> bench/results/scaling.md
    .venv/bin/python bench/scaling.py --quick      # smoke run -> bench/results/scaling_quick.md
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")   # run_build's progress bar would interleave with our log


def _warm(face: dict) -> int:
    """On a worker: build the detector the build will use (cached per process for its lifetime)."""
    from avemo.pipeline.config import FaceConfig
    from avemo.pipeline.faces import _cached_detector, get_detector
    get_detector(FaceConfig(**face))
    return _cached_detector.cache_info().misses


def _cpu_seconds() -> float:
    """On a worker: CPU seconds of the worker process and its finished children (the ffmpeg decoders)."""
    import psutil
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def start_cluster(n_workers: int, cfg):
    from distributed import Client, LocalCluster
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    loads = client.run(_warm, asdict(cfg.face))
    assert sorted(loads.values()) == [1] * n_workers, loads
    return cluster, client, time.perf_counter() - t0


def shard_digests(out: Path) -> dict:
    from avemo.shards.manifest import sha256_file
    return {p.name: sha256_file(p) for p in sorted(out.glob("*.tar"))}


def build_once(cfg, client, out: Path, n_clips: int) -> tuple[float, float]:
    """Wall seconds of one build, and the CPU seconds its workers spent (other jobs on the machine excluded)."""
    from avemo.pipeline.build import run_build
    shutil.rmtree(out, ignore_errors=True)
    cpu0 = sum(client.run(_cpu_seconds).values())
    t0 = time.perf_counter()
    summary = run_build(replace(cfg, out=str(out), scheduler=client.scheduler.address), log=lambda *_: None)
    seconds = time.perf_counter() - t0
    cpu = sum(client.run(_cpu_seconds).values()) - cpu0
    if summary.shards_failed or summary.ok != n_clips:
        raise RuntimeError(f"build did not accept every clip: {summary.lines()}")
    return seconds, cpu


def stats(seconds: list[float], cpu: list[float], n_clips: int) -> dict:
    best, median = min(seconds), statistics.median(seconds)
    return {"seconds": [round(s, 2) for s in seconds], "min_s": round(best, 2), "median_s": round(median, 2),
            "clips_per_s_best": round(n_clips / best, 3), "clips_per_s_median": round(n_clips / median, 3),
            "cpu_s_per_clip": round(statistics.median(cpu) / n_clips, 3),
            "cores_busy": round(statistics.median(c / s for c, s in zip(cpu, seconds)), 2)}


def contention_note(result: dict) -> str:
    busy = result["runs"]["2"]["cores_busy"]
    cores = os.cpu_count() or 1
    if busy >= 0.75 * min(2, cores):
        return f"The 2-worker runs kept {busy} of {cores} cores busy: the figures show the scaling."
    return (f"**The 2-worker runs kept only {busy} of {cores} cores busy** (load average above): other jobs held "
            "the cores, so this run measures contention, not scaling. Rerun on an idle machine for the scaling.")


def write_report(path: Path, result: dict) -> None:
    one, two = result["runs"]["1"], result["runs"]["2"]
    lines = [
        f"# build-shards scaling with Dask workers ({result['name']})", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']}; load average before / after: {result['load_before']} / "
        f"{result['load_after']} (the CPU is shared with other jobs: read the ratio, not the absolute rates)", "",
        f"Clips: {result['clips']} generated clips ({result['per_class']} per emotion, 640x360, 15 fps), "
        f"{result['shards']} shards of {result['shard_clips']}; config: decode.max_frames={result['max_frames']}, "
        f"dask.decode_threads={result['decode_threads']}, dask.torch_threads=1, 1 thread per worker; "
        f"{result['repeats']} repeats, interleaved.", "",
        "| workers | seconds per run | min s | median s | clips/s (best) | clips/s (median) | worker CPU s per clip "
        "| cores busy (CPU s / wall s) | cluster start + warm s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in result["runs"].items():
        lines.append(f"| {n} | {', '.join(map(str, r['seconds']))} | {r['min_s']} | {r['median_s']} | "
                     f"{r['clips_per_s_best']} | {r['clips_per_s_median']} | {r['cpu_s_per_clip']} | "
                     f"{r['cores_busy']} | {result['startup_s'][n]} |")
    lines += [
        "",
        f"Speed-up 2 vs 1 workers: {result['speedup_median']}x (median), {result['speedup_best']}x (best).",
        f"Efficiency clips/s(2) / (2 x clips/s(1)): **{result['efficiency_median']}** (median), "
        f"{result['efficiency_best']} (best).", "",
        f"Shards byte-identical across all {2 * result['repeats']} runs: {result['identical']}.", "",
        "Reading it: worker CPU s per clip is the work itself (CPU time of the worker processes and their "
        "ffmpeg children), whatever else runs on the machine; cores busy is how much of the machine the build "
        "got. Ideal efficiency is 1.0 only while 2 workers can keep 2 cores busy.", "",
        contention_note(result), "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=8, help="generated clips per emotion (x7 clips)")
    parser.add_argument("--shard-clips", type=int, default=7, help="shards.max_clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "bench" / "out" / "scaling"), help="scratch folder")
    parser.add_argument("--name", default="scaling", help="bench/results/NAME.md and .json")
    parser.add_argument("--quick", action="store_true", help="2 clips per emotion, 7 per shard, 2 repeats")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.per_class, ns.shard_clips, ns.repeats, ns.name = 2, 7, 2, ns.name + "_quick"
    os.environ.setdefault("AVEMO_WEIGHTS_DIR", str(REPO.parent / "shared" / "weights"))
    logging.getLogger("distributed").setLevel(logging.WARNING)   # the in-process scheduler's INFO lines

    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig
    from avemo.demo.synth import SynthSpec, make_mini_meld

    work = Path(ns.work)
    shutil.rmtree(work, ignore_errors=True)
    root = work / "meld"
    t0 = time.perf_counter()
    make_mini_meld(root, SynthSpec(per_class={"train": ns.per_class}, seed=5, width=640, height=360))
    n_clips = 7 * ns.per_class
    print(f"generated {n_clips} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = load_config(BuildConfig, "build", None, [f"shards.max_clips={ns.shard_clips}", "face.device=cpu"],
                      {"root": str(root), "out": "", "splits": ["train"]})

    load_before = [round(x, 2) for x in os.getloadavg()]
    clusters, startup = {}, {}
    try:
        for n in (1, 2):
            cluster, client, seconds = start_cluster(n, cfg)
            clusters[n], startup[str(n)] = (cluster, client), round(seconds, 1)
        seconds, cpu = {1: [], 2: []}, {1: [], 2: []}
        digests = []
        for rep in range(ns.repeats):
            for n in (1, 2):
                out = work / f"out-{n}w-{rep}"
                wall, used = build_once(cfg, clusters[n][1], out, n_clips)
                seconds[n].append(wall)
                cpu[n].append(used)
                digests.append(shard_digests(out))
                print(f"repeat {rep + 1}: {n} worker(s): {wall:.1f} s ({n_clips / wall:.2f} clips/s, "
                      f"{used / wall:.2f} cores busy)", flush=True)
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()

    runs = {str(n): stats(s, cpu[n], n_clips) for n, s in seconds.items()}
    speed_med = runs["2"]["clips_per_s_median"] / runs["1"]["clips_per_s_median"]
    speed_best = runs["2"]["clips_per_s_best"] / runs["1"]["clips_per_s_best"]
    result = {
        "name": ns.name,
        "command": " ".join(["AVEMO_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/scaling.py", *argv]),
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python "
                   f"{platform.python_version()}",
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "clips": n_clips, "per_class": ns.per_class, "shard_clips": ns.shard_clips,
        "shards": len(digests[0]), "repeats": ns.repeats, "max_frames": cfg.decode.max_frames,
        "decode_threads": cfg.dask.decode_threads, "startup_s": startup, "runs": runs,
        "speedup_median": round(speed_med, 3), "speedup_best": round(speed_best, 3),
        "efficiency_median": round(speed_med / 2, 3), "efficiency_best": round(speed_best / 2, 3),
        "identical": all(d == digests[0] for d in digests),
    }
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{ns.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(results / f"{ns.name}.md", result)
    print((results / f"{ns.name}.md").read_text())
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
