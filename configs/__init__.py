"""Typed run configuration: YAML files in this folder hold every default and its source.

A run's configuration is a handful of sections (``run``, ``env``, the agent's own
section such as ``ppo``, ``diagnostics``). Each section is a dataclass whose fields
declare a type, a docstring and a valid range with :func:`param`; the *values* live
only in the YAML files beside this module, one line per field with a comment that
cites where the number comes from. Files are layered (suite defaults, the
agent's paper defaults, suite- and variant-specific overrides, the user's own file and
``--set key=value`` pairs) and the merged result is validated field by field.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigError(Exception):
    """A request that cannot be carried out as given: bad value, unknown name, missing package.

    Runners print the message alone (no traceback) and exit with status 2.
    """


def param(doc: str, *, choices: tuple | None = None, min: float | None = None,
          max: float | None = None, min_exclusive: bool = False, default: Any = MISSING) -> Any:
    """Declare a config field: its docstring and valid range. The value comes from YAML."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------
# YAML with per-field source comments
# ---------------------------------------------------------------------------------------

_FIELD_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w]*)\s*:(?P<rest>.*)$")


def _split_comment(rest: str) -> str:
    """Return the comment of a YAML value part (text after an unquoted ' #')."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1:].strip()
    return ""


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """Load a config file; return (values, sources) where sources maps 'section.field' to its comment."""
    try:
        text = path.read_text()
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    sources: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        m = _FIELD_LINE.match(line)
        if not m:
            continue
        comment = _split_comment(m["rest"])
        if not m["indent"]:
            section = m["key"]
        elif section is not None and comment:
            sources[f"{section}.{m['key']}"] = comment
    return data, sources


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_layers(paths: list[Path]) -> tuple[dict, dict[str, str]]:
    """Merge config files in order: a later file's fields (and their sources) win."""
    merged: dict = {}
    sources: dict[str, str] = {}
    for path in paths:
        data, src = read_yaml(path)
        merged = _deep_merge(merged, data)
        sources.update(src)
    return merged, sources


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if (value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))) \
                and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a valid {tp}")
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value.replace("(", "[").replace(")", "]"))
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp} at {where}")


def _check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        valid = ", ".join(map(str, meta["choices"]))
        raise ConfigError(f"{where}: {value!r} is not one of: {valid}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{where}: {value!r} is out of range (must be {op} {lo})")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: {value!r} is out of range (must be <= {hi})")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{where}: NaN is not a valid value")


def build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, with type and range checks on every field."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"section '{section}' must be a mapping of fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown field '{section}.{unknown[0]}'; valid fields of '{section}': "
                          + ", ".join(sorted(known)))
    kwargs = {}
    for name, f in known.items():
        where = f"{section}.{name}"
        if name not in values:
            if f.default is not MISSING:
                continue
            raise ConfigError(f"{where} has no value: add it to the config file")
        value = coerce(values[name], hints[name], where)
        _check_range(value, f, where)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(section: Any) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
            for f in fields(section)}


def parse_assignment(text: str) -> tuple[str, str]:
    """'ppo.epochs=8' -> ('ppo.epochs', '8')."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override '{text}' must look like section.field=value, e.g. ppo.epochs=8")
    return key.strip(), value.strip()


def apply_overrides(merged: dict, overrides: list[tuple[str, str]], schema: Mapping[str, type]) -> dict:
    """Apply 'section.field=value' overrides; the field must exist in the schema."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in merged.items()}
    for key, value in overrides:
        section, _, name = key.partition(".")
        if section not in schema:
            raise ConfigError(f"unknown config section '{section}' in '{key}'; valid sections: "
                              + ", ".join(schema))
        valid = {f.name for f in fields(schema[section])}
        if name not in valid:
            raise ConfigError(f"unknown field '{key}'; valid fields of '{section}': " + ", ".join(sorted(valid)))
        out.setdefault(section, {})[name] = value
    return out


@dataclass
class FieldDoc:
    key: str
    type: str
    default: Any
    doc: str
    source: str


def describe(schema: Mapping[str, type], merged: Mapping, sources: Mapping[str, str]) -> list[FieldDoc]:
    """Field listing for --help: key, type, default value, docstring and source."""
    out = []
    for section, cls in schema.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            key = f"{section}.{f.name}"
            default = merged.get(section, {}).get(f.name, f.default if f.default is not MISSING else None)
            out.append(FieldDoc(key, _type_name(hints[f.name]), default, f.metadata.get("doc", ""),
                                sources.get(key, "")))
    return out


def dump_yaml(sections: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """Render resolved sections as YAML, each field followed by its source comment."""
    lines = []
    for name, section in sections.items():
        lines.append(f"{name}:")
        for key, value in to_dict(section).items():
            # a plain scalar is dumped as a document with an end marker: "8\n...\n"
            rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
            src = sources.get(f"{name}.{key}")
            lines.append(f"  {key}: {rendered}" + (f"  # {src}" if src else ""))
    return "\n".join(lines) + "\n"
