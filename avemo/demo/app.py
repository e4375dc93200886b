"""`avemo demo`: the main job end to end on an embedded default dataset, CPU only, in minutes.

generate mini-MELD (real face photo + emotion-dependent speech) -> build-shards -> train -> evaluate.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from avemo.core.atomic import atomic_write_bytes
from avemo.core.config import ConfigError, bundled_config, load_config
from avemo.pipeline.config import BuildConfig
from avemo.demo.synth import SynthSpec, make_mini_meld
from avemo.train.config import EvalConfig, TrainConfig

DEFAULT_CONFIG = bundled_config("demo.yaml")
SECTIONS = ("demo", "build", "train", "evaluate")


@dataclass
class DemoSplits:                 # generated clips per emotion, per split
    train: int = 20                # clips per emotion in the train split
    dev: int = 5                   # ... in dev
    test: int = 10                 # ... in test

    def __post_init__(self):
        if min(self.train, self.dev, self.test) < 1:
            raise ConfigError("demo.per_class: every split needs at least 1 clip per emotion")


@dataclass
class DemoConfig:
    per_class: DemoSplits = field(default_factory=DemoSplits)
    seed: int = 0                  # the generated dataset (speech, faces, motion)


def section_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """["train.optim.epochs=5", "demo.seed=1"] -> {"train": ["optim.epochs=5"], "demo": ["seed=1"], ...}"""
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    for pair in overrides:
        section, dot, rest = pair.partition(".")
        if not dot or section not in out or "=" in section:
            raise ConfigError(f"override '{pair}' must start with its section, one of {', '.join(SECTIONS)} "
                              "(e.g. train.optim.epochs=5)")
        out[section].append(rest)
    return out


@dataclass
class DemoRun:
    """Every command's config of one demo run, all read and checked before any work starts."""
    out: Path
    demo: DemoConfig
    build: BuildConfig
    train: TrainConfig
    evaluate: EvalConfig


def demo_configs(out: str | Path, config: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> DemoRun:
    out = Path(out)
    over = section_overrides(list(overrides))
    return DemoRun(
        out=out,
        demo=load_config(DemoConfig, "demo", config, over["demo"]),
        build=load_config(BuildConfig, "build", config, over["build"],
                          {"root": str(out / "meld"), "out": str(out / "shards")}),
        train=load_config(TrainConfig, "train", config, over["train"],
                          {"shards": str(out / "shards"), "run": str(out / "run")}),
        evaluate=load_config(EvalConfig, "evaluate", config, over["evaluate"], {
            "shards": str(out / "shards"), "checkpoint": str(out / "run" / "best.pt"), "split": "test",
            "out": str(out / "eval")}))


DEMO_STATE = "demo_settings.json"   # the demo.* settings the dataset in OUT/meld was generated with


def dataset_changes(out: Path, demo: DemoConfig) -> list[str]:
    """`demo.key old -> new` for each demo.* setting that differs from the generated dataset's."""
    path = out / DEMO_STATE
    if not path.is_file():
        return []
    saved = json.loads(path.read_text(encoding="utf-8"))["demo"]
    now = asdict(demo)
    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for key, val in d.items():
            out.update(flat(val, f"{prefix}{key}.") if isinstance(val, dict) else {f"{prefix}{key}": val})
        return out
    old, new = flat(saved), flat(now)
    return [f"demo.{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def training_changes(train: TrainConfig) -> list[str]:
    """Why the demo's last run cannot simply be resumed: other train.* settings, or other shards."""
    last = Path(train.run) / "last.pt"
    if not last.is_file():
        return []
    from avemo.model.checkpoint import load_checkpoint
    from avemo.train.checkpoint import resume_mismatches
    from avemo.train.runs import manifest_sha256
    saved = load_checkpoint(last)["config"]
    changed = [f"train.{c}" for c in resume_mismatches(saved, train)]
    if saved.get("shards_sha256") != manifest_sha256(train.shards[0]):
        changed.append("the shards were rebuilt")
    return changed


def run_demo(run: DemoRun) -> dict:
    """generate -> build-shards -> train -> evaluate; returns the test metrics."""
    t0 = time.perf_counter()
    out, demo, build, train, evaluate = run.out, run.demo, run.build, run.train, run.evaluate
    data = Path(build.root)
    changed = dataset_changes(out, demo)
    if changed and data.is_dir():
        print(f"[1/4] demo settings changed since {data} was generated ({', '.join(changed)}): regenerating it",
              flush=True)
        shutil.rmtree(data)
    if not (data / "test_sent_emo.csv").is_file():
        print(f"[1/4] generating the embedded dataset in {data} ...", flush=True)
        make_mini_meld(data, SynthSpec(per_class=asdict(demo.per_class), seed=demo.seed))
        atomic_write_bytes(out / DEMO_STATE, json.dumps({"demo": asdict(demo)}).encode())
    else:
        print(f"[1/4] using the dataset already in {data}")
    print("[2/4] build-shards (shards whose clips or settings changed are rebuilt)", flush=True)
    from avemo.pipeline.build import run_build     # dask and torch: after every setting was checked
    print("\n".join(run_build(build).lines()), flush=True)
    from avemo.train.loop import run_train
    retrain = training_changes(train)
    if retrain:
        print(f"[3/4] train: starting over, the last run was made with other settings or data "
              f"({', '.join(retrain)})", flush=True)
    else:
        print("[3/4] train (resumes the last run if there is one)", flush=True)
    run_train(train, resume=not retrain, overwrite=bool(retrain))
    print("[4/4] evaluate on the test split", flush=True)
    from avemo.train.evaluate import run_evaluate
    metrics = run_evaluate(evaluate)
    summary = {k: round(metrics[k], 4) for k in ("accuracy", "weighted_f1", "macro_f1")}
    print(f"\ntest metrics: {json.dumps(summary)}  ({time.perf_counter() - t0:.0f} s in all)")
    for mode, m in metrics.get("ablation", {}).items():
        print(f"  {mode:<10} weighted_f1={m['weighted_f1']:.4f}")
    print(f"metrics: {out / 'eval' / 'metrics.json'}\nconfusion matrix: {out / 'eval' / 'confusion.png'}\n"
          f"predictions: {out / 'eval' / 'predictions.parquet'}\ncheckpoints: {out / 'run'}/best.pt, last.pt\n"
          f"training curves: tensorboard --logdir {out / 'run' / 'tb'}")
    return metrics

