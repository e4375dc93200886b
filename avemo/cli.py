"""The `avemo` command: one registry of subcommands, each `main(argv) -> exit code`."""
from __future__ import annotations

import argparse
import importlib
import sys

from avemo.config import ConfigError

DESCRIPTION = """\
avemo: audio-visual emotion recognition on MELD (face + voice, 7 classes).

typical use:
  avemo demo                                   # generate a small dataset, build, train, evaluate (CPU, minutes)
  avemo build-shards --root MELD --out shards  # MELD videos + CSVs -> WebDataset shards, once
  avemo train --shards shards --run runs/a     # train from shards
  avemo evaluate --shards shards --checkpoint runs/a/best.pt --split test --out runs/a/test
  avemo predict clip.mp4 --checkpoint runs/a/best.pt

Every command but export (flags only) takes --config FILE (a configs/*.yaml) and key=value overrides,
e.g. decode.fps=4; demo's overrides name their section first, e.g. train.optim.epochs=5.
"""


# command -> (module whose main(argv) runs it, imported only when chosen; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-shards": ("pipeline.main", "MELD CSVs + videos -> WebDataset shards + manifest (Dask)"),
    "train": ("train.loop", "train the model from shards"),
    "evaluate": ("train.evaluate", "metrics, predictions and plots of a checkpoint on a split"),
    "demo": ("avemo.demo", "end to end on a generated dataset: build-shards -> train -> evaluate"),
    "predict": ("avemo.predict", "emotion over sliding windows of videos or a live stream"),
    "export": ("avemo.export", "export a checkpoint to ONNX or TorchScript"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="avemo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments (see COMMAND --help)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    ns = parser.parse_args(argv[:1])
    module, _ = COMMANDS[ns.command]
    try:
        return importlib.import_module(module).main(argv[1:])
    except ConfigError as exc:
        print(f"avemo {ns.command}: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avemo {ns.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
