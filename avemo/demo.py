"""`avemo demo`: the main job end to end on an embedded default dataset, CPU only, in minutes.

generate mini-MELD (real face photo + emotion-dependent speech) -> build-shards -> train -> evaluate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from avemo.config import load_config, read_yaml_section
from pipeline.build import run_build
from pipeline.config import BuildConfig
from pipeline.synth import SynthSpec, make_mini_meld
from train.config import EvalConfig, TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@dataclass
class DemoConfig:
    per_class: dict = field(default_factory=lambda: {"train": 20, "dev": 5, "test": 10})
    seed: int = 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="working folder (default: ./demo)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML with demo/build/train/evaluate sections")
    ns = parser.parse_args(argv)
    out = Path(ns.out)
    t0 = time.perf_counter()
    demo = DemoConfig(**read_yaml_section(ns.config, "demo"))
    data = out / "meld"
    if not (data / "test_sent_emo.csv").is_file():
        print(f"[1/4] generating the embedded dataset in {data} ...", flush=True)
        make_mini_meld(data, SynthSpec(per_class=demo.per_class, seed=demo.seed))
    else:
        print(f"[1/4] using the dataset already in {data}")
    print("[2/4] build-shards", flush=True)
    build = load_config(BuildConfig, "build", ns.config, extra={"root": str(data), "out": str(out / "shards")})
    print("\n".join(run_build(build).lines()), flush=True)
    print("[3/4] train", flush=True)
    from train.loop import run_train
    train = load_config(TrainConfig, "train", ns.config, extra={"shards": str(out / "shards"), "run": str(out / "run")})
    run_train(train, resume=True)
    print("[4/4] evaluate on the test split", flush=True)
    from train.evaluate import run_evaluate
    evaluate = load_config(EvalConfig, "evaluate", ns.config, extra={
        "shards": str(out / "shards"), "checkpoint": str(out / "run" / "best.pt"), "split": "test",
        "out": str(out / "eval")})
    metrics = run_evaluate(evaluate)
    summary = {k: round(metrics[k], 4) for k in ("accuracy", "weighted_f1", "macro_f1")}
    print(f"\ntest metrics: {json.dumps(summary)}  ({time.perf_counter() - t0:.0f} s in all)")
    for mode, m in metrics.get("ablation", {}).items():
        print(f"  {mode:<10} weighted_f1={m['weighted_f1']:.4f}")
    print(f"metrics: {out / 'eval' / 'metrics.json'}\nconfusion matrix: {out / 'eval' / 'confusion.png'}\n"
          f"predictions: {out / 'eval' / 'predictions.parquet'}\ncheckpoints: {out / 'run'}/best.pt, last.pt\n"
          f"training curves: tensorboard --logdir {out / 'run' / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
