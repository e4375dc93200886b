"""Typed configuration: dataclasses filled from a YAML section and `key=value` overrides.

Every command owns one dataclass (nested dataclasses for its sections). A YAML file may hold several
commands' sections (`build:`, `train:`, ...); each command reads its own. Unknown keys and wrong types
stop with a one-line ConfigError that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from avemo.core.errors import ConfigError

T = TypeVar("T")




def check(*rules: tuple[bool, str]) -> None:
    """A config section's own validation, called from its __post_init__: each rule is (ok, message), the
    message naming the key relative to the section ("fps must be > 0"); whichever command nests the
    section reports it with its full path ("decode.fps must be > 0")."""
    for ok, message in rules:
        if not ok:
            exc = ConfigError(message)
            exc.relative = True          # type: ignore[attr-defined]
            raise exc


DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


MAX_CONFIG_BYTES = 1 << 20       # a config file is settings, not data
MAX_CONFIG_DEPTH = 16


def _shown(value: Any, limit: int = 80) -> str:
    """A value as echoed in a one-line error: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _SettingsLoader(yaml.SafeLoader):
    """safe_load without aliases: a 1 KB `&a [*a, *a, ...]` chain expands to gigabytes (billion laughs),
    and settings never need them."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in config files "
                                 f"(line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def _depth(node: Any, level: int = 0) -> int:
    if level > MAX_CONFIG_DEPTH:
        return level
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return max((_depth(c, level + 1) for c in children), default=level)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {_shown(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where} must be one of {_type_name(tp)}, got {_shown(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {_shown(value)}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is dict or origin is dict:   # free-form mappings (storage_options): passed on as given
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {_shown(value)}")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {_shown(value)}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):        # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {_shown(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {_shown(value)}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # a section's own check names its keys relative to the section: prefix where it sits
        if where and getattr(exc, "relative", False):
            exc = ConfigError(f"{where}.{exc}")
        raise exc from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict:
    """`["train.lr=3e-4", "face.device=cuda"]` -> nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override '{pair}' must look like key=value (e.g. decode.fps=4)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    return tree


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested mappings merged key by key (neither input is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def bundled_config(name: str) -> Path:
    """A configs/*.yaml shipped with avemo (the `avemo.configs` package: the checkout's configs/ folder in an
    editable install, site-packages in a wheel), found with importlib.resources."""
    from importlib.resources import files
    return Path(str(files("avemo.configs") / name))


def config_path(name: str | Path) -> Path:
    """`--config` value -> file: an existing path, else a bundled config by name (`meld`, `demo.yaml`)."""
    path = Path(name)
    if path.is_file() or path.parent != Path("."):
        return path
    bundled = bundled_config(path.name if path.suffix else f"{path.name}.yaml")
    return bundled if bundled.is_file() else path


def read_yaml_section(path: str | Path, section: str) -> dict:
    path = config_path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.name.removesuffix(".yaml") for p in bundled_config(".").glob("*.yaml")))
        raise ConfigError(f"config file not found: {path} (bundled configs: {known})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {path.stat().st_size} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES} bytes")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_SettingsLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    if _depth(doc) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"config file {path} nests deeper than {MAX_CONFIG_DEPTH} levels")
    data = doc.get(section, {})
    if not isinstance(data, dict):
        raise ConfigError(f"section '{section}' in {path} must be a mapping")
    return data


def load_config(cls: type[T], section: str, path: str | Path | None = None,
                overrides: list[str] | None = None, extra: dict | None = None) -> T:
    """Defaults < YAML file section < `extra` (from CLI flags) < key=value overrides."""
    data: dict = {}
    if path is not None:
        data = read_yaml_section(path, section)
    if extra:
        data = merge(data, extra)
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return _build(cls, data)


def config_from_dict(cls: type[T], data: dict) -> T:
    return _build(cls, data)


def resolve_device(name: str, key: str = "device"):
    """A device setting ("auto", "cpu", "cuda", "cuda:1") -> torch.device; `key` names the setting in the
    one-line ConfigError when it asks for CUDA on a machine without a visible CUDA device."""
    import torch
    if not DEVICE_RE.match(name):
        raise ConfigError(f"{key}={name} is not a device (use auto, cpu, cuda or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name} is not a device (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is visible (use {key}=cpu or {key}=auto)")
    return device
