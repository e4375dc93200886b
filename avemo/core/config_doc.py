"""Configs that explain themselves: one-line help per key, read from the comment beside each dataclass
field (`fps: float = 4.0   # frames sampled per second`), so the code stays the one place they are written.

`dump_config` prints a resolved config as YAML with that help as comments (`--print-config`, RUN/config.yaml);
`config_table` gives the Markdown rows of docs/config.md (`python -m avemo.cli.docs`).
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing
from typing import Any

import yaml

from avemo.core.config import _type_name


_HELP: dict[type, dict[str, str]] = {}


def field_help(cls: type) -> dict[str, str]:
    """field name -> its comment: the comment on the field's line, plus comment-only lines right below it
    that start in the same column (a comment wrapped over two lines)."""
    if cls not in _HELP:
        _HELP[cls] = _read_help(cls)
    return _HELP[cls]


def _read_help(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[int, tuple[int, str]] = {}      # line -> (column, text)
    first: dict[int, list] = {}                    # line -> its first two tokens
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
            first.setdefault(tok.start[0], []).append(tok)
    out: dict[str, str] = {}
    for line, toks in first.items():
        if (len(toks) >= 2 and toks[0].type == tokenize.NAME and toks[0].string in names
                and toks[1].string == ":" and toks[0].start[1] == 4 and line in comments):
            col, text = comments[line]
            nxt = line + 1
            while nxt in comments and nxt not in code_lines and comments[nxt][0] == col:
                text += " " + comments[nxt][1]
                nxt += 1
            out[toks[0].string] = text
    return out


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _lines(obj: Any, indent: int, with_help: bool) -> list[str]:
    helps = field_help(type(obj)) if with_help else {}
    out = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        pad = "  " * indent
        if dataclasses.is_dataclass(value):
            head = f"{pad}{f.name}:"
            out.append(f"{head}  # {helps[f.name]}" if helps.get(f.name) else head)
            out.extend(_lines(value, indent + 1, with_help))
            continue
        line = f"{pad}{f.name}: {_scalar(list(value) if isinstance(value, tuple) else value)}"
        out.append(f"{line}  # {helps[f.name]}" if helps.get(f.name) else line)
    return out


def dump_config(cfg: Any, section: str, with_help: bool = True) -> str:
    """A resolved config as the YAML `--config` reads back: `section:` then every key, defaults included,
    each with its one-line help as a comment."""
    return "\n".join([f"{section}:", *_lines(cfg, 1, with_help)]) + "\n"


def config_table(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key of a config class, nested sections flattened (`optim.lr`)."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    default = cls()
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(config_table(type(value), f"{prefix}{f.name}."))
            continue
        shown = list(value) if isinstance(value, tuple) else value
        rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), _scalar(shown), helps.get(f.name, "")))
    return rows
