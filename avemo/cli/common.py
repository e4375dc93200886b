"""What every command's parser shares: `key=value` overrides anywhere among the flags, `--print-config`,
and the message an interrupted command leaves."""
from __future__ import annotations

import argparse
import re

OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")
PRINT_CONFIG_HELP = ("print the resolved config (YAML: every key, defaults included, one-line help each; "
                     "a valid --config) and exit")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the command's own advice on how to carry on (avemo.cli.main prints it)."""


def split_overrides(parser: argparse.ArgumentParser, argv: list[str], help_text: str = "config overrides",
                    required: tuple[str, ...] = ()) -> tuple[argparse.Namespace, list[str]]:
    """Parse flags; every `key=value` word, wherever it stands, is a config override (Hydra's habit).
    `required` names flags (dest names) needed unless --print-config, which needs none."""
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help_text)
    ns = parser.parse_intermixed_args(argv)
    missing = [f"--{name.replace('_', '-')}" for name in required if getattr(ns, name) is None]
    if missing and not ns.print_config:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return ns, list(ns.overrides)


def print_config(cfg, section: str) -> int:
    from avemo.core.config_doc import dump_config
    print(dump_config(cfg, section), end="")
    return 0


def looks_like_override(word: str) -> bool:
    return bool(OVERRIDE_RE.match(word))
