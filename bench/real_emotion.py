"""Real-data benchmark: does the model learn real faces and voices? Uses only ../shared/data.

1. bench/real_data.py: lists for RAVDESS (actors 01-18 train, 19-21 dev, calm dropped) and FER2013
   PublicTest (two seeded halves: A train, B dev), a paired audio-visual set in MELD's layout (each RAVDESS
   utterance with a FER face of the same class; train faces from the Training set, dev faces from half B), and the
   three shard sets (build-shards, the build: section of --config).
2. Training with the documented recipe (--config, default configs/real.yaml) on the three sets at once
   (paired first: its dev split picks best.pt), into OUT/run (resumed if it is there).
3. Evaluation of OUT/run/best.pt on held-out speakers and faces: the paired dev set with both modalities,
   face only and voice only (the other one masked), FER half B (faces alone) and RAVDESS actors 19-21 (voices
   alone).
4. OUT/results.json and bench/results/real_emotion.md + .json (quick: real_emotion_quick.*).

    .venv/bin/python bench/real_emotion.py --out bench/out/real_emotion            # the recipe (< 60 min, 2 CPUs)
    .venv/bin/python bench/real_emotion.py --out /tmp/re --quick                   # CI-sized, same code paths
    .venv/bin/python bench/real_emotion.py --out DIR optim.epochs=8 model.face_train_blocks=6   # a variant
    .venv/bin/python bench/real_emotion.py --out DIR --build audio.pitch=true model.pitch=true  # + its build
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, loadavg, machine, new_record, table, write_results  # noqa: E402

# the recipe before issue 19 (main 4afa95f: 1,793 FER PublicTest faces, 936 RAVDESS utterances), same dev sets
BEFORE = {"both": 0.583, "audio_only": 0.474, "face_only": 0.474}
GOALS = {"both": 0.80, "audio_only": 0.62, "face_only": 0.65}
ANCHORS = ["chance 14.3 %", "human raters, RAVDESS speech audio alone ~62 % (Livingstone & Russo 2018)",
           "FER2013 human ~65 %; best single CNNs trained on all 28k FER2013 training images 73-76 %"]
# CI-sized training: a couple of epochs over the quick sets
QUICK_TRAIN = ["optim.epochs=2", "data.batch_size=8", "data.shuffle_buffer=32", "data.epoch_samples=0", "log_every=5"]


def default_shared() -> Path:
    return Path(os.environ.get("AVEMO_SHARED") or REPO.parent / "shared")


def cpu_now() -> float:
    """CPU seconds of this process and its reaped children (Dask workers, ffmpeg, loader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Stages:
    """Wall and CPU seconds per stage, and the peak memory of this process tree during it (PSS: pages
    shared by the loader or Dask workers counted once; bench/train_memory.py). `log`: a train.log whose epoch
    lines mark the memory per epoch.

    `path` (OUT/stages.json): every stage is saved there as it finishes, beside the stages of earlier
    invocations on the same folder. A rerun after a crash or a kill resumes their work (the data are checked,
    a finished or interrupted training continues), so its own stage times are not the work's: the earlier
    invocations' are kept (`earlier`) and reported, never overwritten."""

    def __init__(self, path: Path | None = None):
        self.times: dict[str, dict] = {}
        self.path = path
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.earlier: list[dict] = []
        if path is not None and path.is_file():
            try:
                self.earlier = list(json.loads(path.read_text())["invocations"])
            except (ValueError, KeyError, TypeError) as exc:
                print(f"[real_emotion] note: {path} unreadable ({type(exc).__name__}): earlier stage times not kept",
                      flush=True)

    def save(self) -> None:
        from avemo.core.atomic import atomic_write_bytes
        if self.path is not None:
            mine = {"date": self.started, "stages": self.times}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, (json.dumps({"invocations": [*self.earlier, mine]}, indent=1) + "\n").encode())

    def run(self, name: str, fn, *args, log: Path | None = None, **kwargs):
        from train_memory import Sampler, per_epoch
        wall, cpu = time.perf_counter(), cpu_now()
        sampler = Sampler(os.getpid(), log, 5.0)   # smaps of every process: ~0.1 s CPU a sample
        sampler.start()
        finished = False
        try:
            result = fn(*args, **kwargs)
            finished = True
        finally:   # a stage stopped by an error is saved too, marked unfinished (a kill -9 saves nothing)
            sampler.stop.set()
            sampler.join()
            self.times[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_now() - cpu, 1),
                                **sampler.peak(), **({} if finished else {"finished": False})}
            if log is not None:
                self.times[name]["per_epoch"] = [{"epoch": row["epoch"], "tree_pss": row["tree_pss"],
                                                  "n_procs": row["n_procs"]} for row in per_epoch(sampler)]
            print(f"[real_emotion] {name}: {self.times[name]['wall_s']} s wall, {self.times[name]['cpu_s']} s CPU, "
                  f"peak {self.times[name]['tree_pss_gb']:.2f} GB" + ("" if finished else " (stopped by an error)"),
                  flush=True)
            self.save()
        return result


def build_overrides(config: str) -> list[str]:
    """The recipe's build: section as key=value settings for the three builds."""
    import yaml
    from avemo.core.config import config_path
    section = (yaml.safe_load(config_path(config).read_text()) or {}).get("build") or {}
    return [f"{group}.{key}={value}" for group, values in section.items() for key, value in values.items()]


def avemo(*args: str, in_process: bool = False) -> None:
    """One `avemo` command in its own process, as a user runs the recipe: its memory is its own (the stage
    tables' "the command's processes" column), not this benchmark's, and `avemo train` picks its malloc itself
    (train.allocator). A failure raises CalledProcessError (one line from run()). `in_process`: in this
    process (a benchmark that patches the code it measures, bench/masked_audio_dev.py)."""
    import subprocess
    if in_process:
        from avemo.cli import main as cli_main
        code = cli_main(list(args))
        if code:
            raise subprocess.CalledProcessError(code, ["avemo", *args])
        return
    subprocess.run([sys.executable, "-m", "avemo", *args], check=True)


def train(shards: dict[str, Path], run: Path, config: str, overrides: list[str], in_process: bool = False) -> dict:
    """`avemo train` on the three sets -> RUN/last.pt's progress (epoch, step, best)."""
    from avemo.model.checkpoint import load_checkpoint
    resume = (run / "last.pt").is_file()       # a finished or interrupted run is continued, not redone
    avemo("train", "--shards", str(shards["paired"]), "--shards", str(shards["ravdess"]), "--shards",
          str(shards["fer"]), "--run", str(run), "--config", config, "--resume" if resume else "--overwrite",
          *overrides, in_process=in_process)
    ckpt = load_checkpoint(run / "last.pt")
    return {k: ckpt[k] for k in ("epoch", "step", "best")}


def evaluate(shards: Path, checkpoint: Path, out: Path, config: str, ablation: bool, in_process: bool = False) -> dict:
    """`avemo evaluate` on the dev split -> its OUT/metrics.json."""
    avemo("evaluate", "--shards", str(shards), "--checkpoint", str(checkpoint), "--split", "dev", "--out", str(out),
          "--config", config, f"ablation={str(ablation).lower()}", in_process=in_process)
    return json.loads((out / "metrics.json").read_text())


def malloc_of(run: Path) -> str:
    """The malloc `avemo train` ran on, from its log line ("...; malloc: jemalloc")."""
    import re
    found = re.findall(r"; malloc: (\w+)", (run / "train.log").read_text(errors="replace"))
    return found[-1] if found else "unknown"


def summarise(paired: dict, fer: dict, rav: dict) -> dict:
    def pick(m: dict) -> dict:
        return {"accuracy": m["accuracy"], "weighted_f1": m["weighted_f1"], "macro_f1": m["macro_f1"],
                "n": int(sum(map(sum, m["confusion"]))) if "confusion" in m else None}
    n_paired = pick(paired)["n"]
    rows = {f"paired dev, {mode.replace('_', '-')}": dict(paired["ablation"][mode], n=n_paired)
            for mode in ("both", "face_only", "audio_only")}
    rows["FER half B, faces alone"] = pick(fer)
    rows["RAVDESS actors 19-21, voices alone"] = pick(rav)
    return rows


def score_dev_sets(data: Path, checkpoint: Path, out: Path, config: str) -> dict:
    """`avemo evaluate` of a checkpoint on DATA/shards' dev sets (paired in three modes, FER half B, RAVDESS
    19-21), evaluations under OUT -> summarise's rows."""
    shards = data / "shards"
    return summarise(evaluate(shards / "paired", checkpoint, out / "paired", config, True),
                     evaluate(shards / "fer", checkpoint, out / "fer", config, False),
                     evaluate(shards / "ravdess", checkpoint, out / "ravdess", config, False))


def score_with_model_settings(ckpt: dict, name: str, out: Path, data: Path, config: str, filename: str,
                              **model) -> tuple[dict, float]:
    """A copy of a loaded checkpoint (ckpt, the weights untouched) with these model: settings changed, saved as
    OUT/run_NAME/FILENAME (the checkpoint's own name, best.pt or last.pt), scored by score_dev_sets into
    OUT/eval_NAME -> (its rows, wall seconds). For the settings that act in use only (model.face_flip_tta,
    model.voice_warp_tta): bench/face_tta.py, bench/voice_tta.py."""
    from avemo.model.checkpoint import save_checkpoint
    copy = out / f"run_{name}" / filename
    copy.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(copy, **dict(ckpt, config=dict(ckpt["config"], model=dict(ckpt["config"]["model"], **model))))
    start = time.perf_counter()
    rows = score_dev_sets(data, copy, out / f"eval_{name}", config)
    return rows, round(time.perf_counter() - start, 1)


def comparison_rows(before: dict, after: dict) -> list[list]:
    """Two score_dev_sets results of the same sets -> table rows: set, clips, accuracy before / after /
    change, weighted F1 before / after."""
    return [[name, m["n"], round(m["accuracy"], 3), round(after[name]["accuracy"], 3),
             f"{after[name]['accuracy'] - m['accuracy']:+.3f}", round(m["weighted_f1"], 3),
             round(after[name]["weighted_f1"], 3)] for name, m in before.items()]


def report(record: dict, name: str, quick: bool) -> Path:
    rows = record["results"]
    epochs = record["stages"].get("train", {}).get("per_epoch", [])
    body = ["Held-out speakers (RAVDESS actors 19-21) and faces (FER2013 PublicTest half B); trained on actors "
            "01-18 and the FER2013 Training set only. Paired dev = every dev utterance with a FER face of its class.", "",
            table(["dev set, modality", "clips", "accuracy", "weighted F1", "macro F1"],
                  [[k, v["n"], v["accuracy"], v["weighted_f1"], v["macro_f1"]] for k, v in rows.items()]), "",
            "Against the issue's goals and the figures before this work (paired set, same protocol):", "",
            table(["modality", "before", "now", "goal"],
                  [[m, BEFORE[m], rows[f"paired dev, {m.replace('_', '-')}"]["accuracy"], GOALS[m]]
                   for m in ("both", "audio_only", "face_only")]), "",
            "Anchors: " + "; ".join(ANCHORS) + ".", "",
            table(["stage", "wall s", "CPU s", "peak memory GB (PSS, all processes)",
                   "peak GB (PSS) of the command's processes", "peak RSS of its largest process GB"],
                  [[k, v["wall_s"], v["cpu_s"], v.get("tree_pss_gb", ""), v.get("children_pss_gb", ""),
                    v.get("largest_rss_gb", v.get("main_rss_gb", ""))] for k, v in record["stages"].items()]),
            "", "`avemo train` and `avemo evaluate` run in their own processes, as a user runs the recipe (\"the "
            "command's processes\": the command and its loader workers); the lists, paired clips and builds run in "
            "this benchmark's process (bench/real_data.py), whose memory the first PSS column adds to every stage. "
            + ("Training, PSS of all processes per epoch (GB): " + ", ".join(
                f"{r['epoch']}: {r['tree_pss']:.2f}" for r in epochs) + "." if epochs else
             "No training epoch ran in this invocation (a finished run, resumed)."),
            "", f"Training: `--config {record['config']}` {' '.join(record['overrides'])}; best.pt from epoch "
            f"{record['best_epoch']} of {record['epochs']}; {record['parameters'] / 1e6:.2f} M parameters; malloc: {record.get('malloc', 'glibc')}.",
            f"Samples per set (ok train / dev): {json.dumps(record['sets'])}."]
    for run in record.get("earlier_invocations", []):
        body += ["", f"**An earlier invocation on this folder** ({run['date']}), its stages as measured then. A "
                 "rerun checks the data and continues a finished or interrupted training, so where this "
                 "invocation only checked or resumed, these are the work's times:", "",
                 table(["stage", "wall s", "CPU s", "peak memory GB (PSS, all processes)"],
                       [[k + ("" if v.get("finished", True) else " (stopped by an error)"), v["wall_s"], v["cpu_s"],
                         v.get("tree_pss_gb", "")] for k, v in run["stages"].items()])]
    if quick:
        body.insert(0, "**Quick mode** (CI): a few clips and 2 epochs, to keep the code path alive; these "
                       "numbers say nothing about accuracy.\n")
    title = "Real emotion: RAVDESS voices + FER2013 faces" + (" (quick)" if quick else "")
    return write_results(name, title, record, "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Other arguments are train key=value overrides (e.g. optim.epochs=4).")
    p.add_argument("--out", default=str(OUT / "real_emotion"), help="work folder (data, shards, run, results)")
    p.add_argument("--shared", default=str(default_shared()), help="the ../shared folder (its data/ is read)")
    p.add_argument("--config", default="real", help="recipe: a YAML file or bundled name (default real)")
    p.add_argument("--quick", action="store_true", help="a few clips and 2 epochs (CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the FER halves and the pairing")
    p.add_argument("--data", default=None, help="where the lists, paired clips and shards go (default OUT/data); "
                                                "reused when they are there")
    p.add_argument("--name", default=None, help="results name in bench/results (default real_emotion[_quick])")
    p.add_argument("--build", action="append", default=[], metavar="KEY=VALUE",
                   help="a build-shards setting on top of the recipe's build: section (repeatable), e.g. "
                        "--build audio.pitch=true")
    p.add_argument("--results-dir", default=None, help="write NAME.md/.json here instead of bench/results")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in [*overrides, *args.build] if "=" not in o]
    if bad:
        p.error(f"unknown argument {bad[0]!r} (train overrides and --build settings are key=value)")
    shared, out = Path(args.shared), Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if args.results_dir:
        import common
        common.RESULTS = Path(args.results_dir)
    if not (shared / "data" / "ravdess").is_dir() or not (shared / "data" / "fer2013").is_dir():
        print(f"real_emotion: {shared / 'data'} lacks ravdess/ or fer2013/ (the real emotion data of ../shared)",
              file=sys.stderr)
        return 2
    import real_data
    from avemo.core.atomic import atomic_write_bytes
    from avemo.model.net import count_parameters
    from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
    overrides = [*(QUICK_TRAIN if args.quick else []), *overrides]
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, config=args.config, overrides=overrides)
    stages = Stages(out / "stages.json")
    shards = stages.run("prepare (lists, paired clips, 3 shard builds)", real_data.prepare, shared, data,
                        quick=args.quick, seed=args.seed, overrides=[*build_overrides(args.config), *args.build],
                        timed=lambda name, fn, *a, **k: stages.run(f"  {name}", fn, *a, **k))
    state = stages.run("train", train, shards, out / "run", args.config, overrides, log=out / "run" / "train.log")
    record["malloc"] = malloc_of(out / "run")
    best = out / "run" / "best.pt"
    paired = stages.run("evaluate paired dev (3 modes)", evaluate, shards["paired"], best, out / "eval" / "paired",
                        args.config, True)
    fer = stages.run("evaluate FER half B", evaluate, shards["fer"], best, out / "eval" / "fer", args.config, False)
    rav = stages.run("evaluate RAVDESS dev", evaluate, shards["ravdess"], best, out / "eval" / "ravdess",
                     args.config, False)
    ckpt = load_checkpoint(best)
    record.update(results=summarise(paired, fer, rav), stages=stages.times, best_epoch=ckpt.get("epoch"),
                  epochs=state["epoch"], parameters=count_parameters(model_from_checkpoint(ckpt, best)),
                  checkpoint=str(best), sets={k: real_data.counts(v) for k, v in shards.items()})
    record["load"]["after"] = loadavg()
    if stages.earlier:
        record["earlier_invocations"] = stages.earlier
    atomic_write_bytes(out / "results.json", (json.dumps(record, indent=2, default=str) + "\n").encode())
    path = report(record, args.name or ("real_emotion_quick" if args.quick else "real_emotion"), args.quick)
    both = record["results"]["paired dev, both"]["accuracy"]
    print(f"[real_emotion] paired dev accuracy {both:.3f} (both); results in {out / 'results.json'} and {path}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main(), with a project error (bad data, a wrong setting, a failed clip) as one line and exit 2."""
    import subprocess
    from avemo.core.errors import AvemoError
    try:
        return main(argv)
    except (AvemoError, OSError, subprocess.CalledProcessError) as exc:
        text = str(exc).strip()
        print(f"real_emotion: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
