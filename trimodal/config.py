"""The one configuration system: nested dataclasses from files, command-line flags and overrides.

Every job (``train``, the pipelines, ``sample``, ``eval``, ``demo``, …) is described by one
dataclass; each component owns the small dataclass of its own options and the job's config nests
them. A config is built in layers, later ones winning:

1. the dataclass defaults (stated once, in the dataclass);
2. ``--config FILE`` (JSON, YAML or TOML, by extension);
3. the command's own flags (``--text-tokenizer …``: the top-level scalar fields);
4. ``--set dotted.key=value`` overrides (the value is parsed as JSON when it parses).

Errors name the dotted key: an unknown key lists the known ones, a value of the wrong type says
what was expected (``optim.lr: expected a number, got 'fast'``); nothing falls back silently.
:func:`describe` lists every key with its type and default, which ``--help`` prints.

Field metadata understood here: ``help`` (one line), ``flag`` (the command-line name when it is
not the field name with dashes, e.g. ``input`` for ``inputs``), ``convert`` (applied to the flag's
value, e.g. MB → bytes) and ``cli=False`` (no flag; still settable by file or ``--set``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "ConfigError", "add_flags", "apply_overrides", "build", "describe", "from_dict", "load_file",
    "option", "parse_override", "to_dict",
]


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the dotted key."""


def option(default: Any = dataclasses.MISSING, *, help: str = "", flag: str | None = None,
           convert: Any = None, cli: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with the metadata above (a thin wrapper over ``dataclasses.field``)."""
    meta = {"help": help, "flag": flag, "convert": convert, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---- values ---------------------------------------------------------------------------------
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")  # scientific notation only


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (object), got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected an object, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2:
            return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e9 (no dot) as text: take the number it spells
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}{_quoted_hint(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}{_quoted_hint(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _quoted_hint(value: Any) -> str:
    """Why a number-looking value was refused: quotes make it text in JSON, YAML and TOML."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (text: the quotes make it a string; write {value.strip()} without quotes)"
    return ""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a section (object), got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


# ---- files and overrides ---------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value``; the value is JSON when it parses (numbers, true, lists), else a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def set_path(data: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """``data[path[0]][path[1]]… = value``, making sections on the way; a key on the way that
    holds a value, not a section, is a ConfigError naming ``where``."""
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a section")
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = json.loads(json.dumps(data, default=str))
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value, f"--set {text}")
    return data


CONFIG_FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}


def _yaml_loader():
    """PyYAML's safe loader without anchors and aliases: an alias bomb (``&a [*b, *b, ...]``)
    expands to gigabytes downstream, and config files have no need for them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.MarkedYAMLError(None, None, f"alias *{event.anchor} is not accepted in a config file "
                                           f"(anchors and aliases are refused; write the values out)",
                                           event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def _parse_error(e: Exception) -> str:
    """One line naming where a parser stopped: line and column for YAML, JSON and TOML."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:  # yaml.MarkedYAMLError
        return f"line {mark.line + 1}, column {mark.column + 1}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno}, column {e.colno}: {e.msg}"
    return str(e).splitlines()[0]  # tomllib names the line and column in its message


def load_file(path: str) -> dict[str, Any]:
    """A config file as a dict: ``.json``, ``.yaml``/``.yml`` or ``.toml`` (any fsspec URL),
    chosen by the extension; any other extension is refused, naming those accepted."""
    from trimodal import storage

    suffix = PurePath(path).suffix.lower()
    kind = CONFIG_FORMATS.get(suffix)
    if kind is None:
        raise ConfigError(f"{path}: unknown config format {suffix or '(no extension)'!r}; name the file "
                          f".json, .yaml/.yml or .toml (the extension picks the parser)")
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        if kind == "YAML":
            import yaml

            data = yaml.load(raw.decode("utf-8"), Loader=_yaml_loader()) or {}
        elif kind == "TOML":
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except Exception as e:  # each parser has its own error type; all mean "not this format"
        raise ConfigError(f"{path}: not valid {kind}: {_parse_error(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def build(cls: type[T], file: str | None = None, values: dict[str, Any] | None = None,
          overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults < ``file`` < ``values`` (flags, already typed) < ``overrides`` (``--set``)."""
    data = load_file(file) if file else {}
    for k, v in (values or {}).items():
        data[k] = v
    return from_dict(cls, apply_overrides(data, list(overrides)))


# ---- describing a config -----------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        return f"{inner} | null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin is dict:
        return "object"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """``(dotted key, type, default, help)`` of every leaf field, sections expanded."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            yield from walk(tp, f"{key}.")
        else:
            yield key, tp, _default(f), f.metadata.get("help", "") if f.metadata else ""


def describe(cls: type) -> str:
    """Every key of ``cls`` with its type and default: the ``--help`` epilog."""
    rows = []
    for key, tp, default, help_ in walk(cls):
        d = "(required)" if default is dataclasses.MISSING else json.dumps(default, default=str)
        rows.append((key, _type_name(tp), d, help_))
    width = max((len(r[0]) for r in rows), default=0)
    lines = ["config keys (set with --config FILE or --set KEY=VALUE):"]
    for key, tp, d, help_ in rows:
        lines.append(f"  {key:<{width}}  {tp} = {d}" + (f"  -- {help_}" if help_ else ""))
    return "\n".join(lines)


# ---- command-line flags --------------------------------------------------------------------------
def _flag_name(f: dataclasses.Field) -> str:
    return "--" + ((f.metadata or {}).get("flag") or f.name).replace("_", "-")


def _scalar_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a flag-able type, or (None, False) for a section/object."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else (None, False)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else str
        return (inner if inner in (str, int, float) else None), True
    if origin is typing.Literal or tp in (str, int, float, bool):
        return tp, False
    return None, False


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """One flag per top-level scalar or list field of ``cls`` (defaults shown; ``None`` means
    "not given", so a file's value is kept). Returns ``{argparse dest: field name}``."""
    hints = _hints(cls)
    dests: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        if not f.init or f.name in skip or meta.get("cli") is False:
            continue
        tp = hints[f.name]
        elem, is_list = _scalar_type(tp)
        if elem is None:
            continue
        default = _default(f)
        inverse = getattr(meta.get("convert"), "inverse", None)  # the flag's unit (e.g. MB for bytes)
        if inverse is not None and default not in (dataclasses.MISSING, None):
            default = inverse(default)
        shown = "required" if default is dataclasses.MISSING else f"default: {json.dumps(default, default=str)}"
        help_ = f"{meta.get('help', '')} ({shown})".strip()
        dest = f"cfg__{f.name}"
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_}
        if elem is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(elem) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(elem))
            elif meta.get("convert") is None and elem in (int, float):
                kwargs["type"] = elem
            if is_list:
                # `--input A --input B` means both: a repeated list flag extends, never replaces
                kwargs["nargs"] = "+"
                kwargs["action"] = "extend"
            kwargs["metavar"] = (getattr(meta.get("convert"), "metavar", None) or f.name.upper()) \
                if not kwargs.get("choices") else None
        parser.add_argument(_flag_name(f), **{k: v for k, v in kwargs.items() if v is not None or k == "default"})
        dests[dest] = f.name
    return dests


def flag_values(args: argparse.Namespace, cls: type, dests: dict[str, str]) -> dict[str, Any]:
    """The flags that were given, converted (``convert`` metadata), by field name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for dest, name in dests.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        convert = (fields[name].metadata or {}).get("convert")
        out[name] = convert(value) if convert else value
    return out
