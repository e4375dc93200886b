"""The `avemo` command: one registry of subcommands (one module each, `main(argv) -> exit code`), and the one
place where expected errors become one line and an exit code.

Exit codes: 0 success; 1 finished with failures it reports (failed shard tasks, unreadable inputs);
2 an expected error (AvemoError: config, data, weights, checkpoint, cluster) or a full disk, one line;
130 interrupted. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from avemo import __version__
from avemo.core.errors import AvemoError

DESCRIPTION = """\
avemo: audio-visual emotion recognition on MELD (face + voice, 7 classes).

typical use:
  avemo demo                                      # generate a small dataset, build, train, evaluate (CPU, minutes)
  avemo build-shards --root MELD --out data/meld  # MELD videos + CSVs -> WebDataset shards, once
  avemo make-list ravdess RAVDESS --out r.csv && avemo build-shards --list r.csv --out data/r  # any media
  avemo train --shards data/meld --run runs/a     # train from shards
  avemo evaluate --shards data/meld --checkpoint runs/a/best.pt --split test --out runs/a/test
  avemo predict clip.mp4 --checkpoint runs/a/best.pt

Every command but export and make-list (flags only) takes --config FILE|NAME (a YAML file, or a bundled one: meld, demo)
and key=value overrides anywhere among its flags, e.g. decode.fps=4; demo's overrides name their section
first, e.g. train.optim.epochs=5. COMMAND --print-config prints every setting, resolved, with one line of
help each (docs/config.md lists them all).
"""

# command -> (module whose main(argv) runs it, imported only when chosen; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-shards": ("avemo.cli.build_shards", "MELD CSVs + videos, or a media list -> WebDataset shards + manifest (Dask)"),
    "make-list": ("avemo.cli.make_list", "a media list for build-shards --list from RAVDESS, CREMA-D or image folders"),
    "train": ("avemo.cli.train", "train the model from shards"),
    "evaluate": ("avemo.cli.evaluate", "metrics, predictions and plots of a checkpoint on a split"),
    "demo": ("avemo.cli.demo", "end to end on a generated dataset: build-shards -> train -> evaluate"),
    "predict": ("avemo.cli.predict", "emotion over sliding windows of videos or a live stream"),
    "export": ("avemo.cli.export", "export a checkpoint to ONNX or TorchScript"),
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def error_line(command: str, exc: BaseException) -> str | None:
    """The one line for an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, AvemoError):
        return f"avemo {command}: error: {exc}"
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"avemo {command}: error: no space left on device{where} ({exc.strerror}); finished work is "
                "kept: free some space and rerun the same command to resume")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="avemo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"avemo {__version__}")
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
    except KeyboardInterrupt as exc:
        # a command may say how to carry on (train: the --resume command); else the general promise
        advice = str(exc) or "finished work is kept"
        print(f"avemo {ns.command}: interrupted; {advice}", file=sys.stderr)
        return 130
    except (AvemoError, OSError) as exc:
        line = error_line(ns.command, exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
