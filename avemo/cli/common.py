"""What every command's parser shares: `key=value` overrides anywhere among the flags."""
from __future__ import annotations

import argparse
import re

OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def split_overrides(parser: argparse.ArgumentParser, argv: list[str],
                    help_text: str = "config overrides") -> tuple[argparse.Namespace, list[str]]:
    """Parse flags; every `key=value` word, wherever it stands, is a config override (Hydra's habit)."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help_text)
    ns = parser.parse_intermixed_args(argv)
    return ns, list(ns.overrides)


def looks_like_override(word: str) -> bool:
    return bool(OVERRIDE_RE.match(word))
