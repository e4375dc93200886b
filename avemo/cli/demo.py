"""`avemo demo`: argument parsing around avemo.demo.app (generate -> build-shards -> train -> evaluate)."""
from __future__ import annotations

import argparse

from avemo.cli.common import split_overrides

DESCRIPTION = """`avemo demo`: the main job end to end on an embedded default dataset, CPU only, in minutes.

generate mini-MELD (real face photo + emotion-dependent speech) -> build-shards -> train -> evaluate."""
EPILOG = """overrides name their section first: demo.per_class.train=10 demo.seed=1 build.decode.fps=2
train.optim.epochs=5 evaluate.batch_size=16 (sections: demo, build, train, evaluate).
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo demo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="working folder (default: ./demo)")
    parser.add_argument("--config", default="demo",
                        help="YAML with demo/build/train/evaluate sections (default: the bundled demo.yaml)")
    ns, overrides = split_overrides(parser, argv, "section.key=value, e.g. train.optim.epochs=5")
    from avemo.demo.app import demo_configs, run_demo
    run = demo_configs(ns.out, ns.config, overrides)       # every section is checked before any work starts
    if ns.print_config:
        from avemo.core.config_doc import dump_config
        print("".join(dump_config(getattr(run, name), name) for name in ("demo", "build", "train", "evaluate")),
              end="")
        return 0
    run_demo(run)
    return 0
