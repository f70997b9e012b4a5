"""Experiment configs: big_vision-style Python files returning an ``ml_collections.ConfigDict``.

A config file defines ``get_config(arg=None)``; ``path/to/file.py:arg`` passes ``arg`` so one file can hold
several presets. Command-line overrides (``--config.optimizer.lr=3e-4``) are parsed according to the type of
the field they replace, so a typo or a wrong type fails loudly before any compute is spent.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import inspect
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxpt.errors import UserError

__all__ = [
    "CONFIG_FILENAME",
    "ConfigError",
    "apply_overrides",
    "config_to_dict",
    "flatten_dict",
    "import_config_file",
    "load_config",
    "parse_cli",
    "save_config",
    "with_defaults",
]

CONFIG_FILENAME = "config.json"
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")


class ConfigError(UserError):
    """A config file, spec or override that cannot be used (the message says which and why)."""


# --------------------------------------------------------------------------------------------- loading


def _split_spec(spec: str) -> tuple[str, str | None]:
    idx = spec.find(".py:")
    if idx >= 0:
        return spec[: idx + 3], spec[idx + 4 :]
    return spec, None


def import_config_file(path: str | os.PathLike) -> ModuleType:
    """A Python file under ``configs/`` as a module (config files are not a package: they are found by path,
    and a config file imports shared presets such as ``configs/common.py`` with this)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist")
    module_name = f"_jaxpt_config_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import config file {os.fspath(path)!r}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses & co. look modules up by name while executing
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load ``path/to/file.py`` or ``path/to/file.py:arg`` by calling its ``get_config([arg])``."""
    path_str, arg = _split_spec(spec)
    if not Path(path_str).is_file():
        raise ConfigError(f"config file {path_str!r} (from spec {spec!r}) does not exist")
    module = import_config_file(path_str)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path_str!r} does not define a get_config() function")
    params = list(inspect.signature(get_config).parameters.values())
    if arg is None:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        required = [p for p in params if p.default is inspect.Parameter.empty and p.kind in positional]
        if required:
            raise ConfigError(f"get_config in {path_str!r} needs an argument: use '{path_str}:ARG'")
        config = get_config()
    else:
        if not params:
            raise ConfigError(f"get_config in {path_str!r} takes no argument, but {spec!r} passes {arg!r}")
        config = get_config(arg)
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        kind = type(config).__name__
        raise ConfigError(f"get_config in {path_str!r} returned {kind}, expected a ConfigDict")
    return config


# ------------------------------------------------------------------------------------------- overrides


def _walk_paths(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    for key in config.keys():
        path = f"{prefix}{key}"
        yield path
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _walk_paths(value, path + ".")


def _unknown_field(config: ml_collections.ConfigDict, field: str) -> ConfigError:
    paths = list(_walk_paths(config))
    close = difflib.get_close_matches(field, paths, n=3, cutoff=0.6)
    if not close:  # a typo in the last component only, e.g. optimizer.lrr
        leaf = field.rsplit(".", 1)[-1]
        close = [p for p in paths if difflib.get_close_matches(leaf, [p.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config field {field!r}{hint}")


def with_defaults(
    given: Any, defaults: ml_collections.ConfigDict, section: str = "", open_fields: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """``defaults`` updated with ``given``, recursively into sub-sections (a section's defaults are a dict).

    The one defaults style of the code base: every algorithm, eval and data generation config is read
    through this, so a key its defaults do not have is a :class:`ConfigError` naming it (``section.key``) with
    the closest known keys, never silently ignored. ``open_fields`` (dotted paths) are taken as given.
    """
    base = copy.deepcopy(defaults.to_dict() if isinstance(defaults, ml_collections.ConfigDict) else dict(defaults))
    root = ml_collections.ConfigDict({section: base} if section else base)

    def merge(into: dict[str, Any], new: Any, prefix: str) -> None:
        items = new.items() if isinstance(new, ml_collections.ConfigDict | dict) else ()
        for key, value in items:
            path = f"{prefix}.{key}" if prefix else key
            if key not in into:
                raise _unknown_field(root, path)
            if path in open_fields:
                into[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
            elif isinstance(into[key], dict) and isinstance(value, ml_collections.ConfigDict | dict):
                merge(into[key], value, path)
            else:
                into[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value

    merge(base, given, section)
    return ml_collections.ConfigDict(base)


def _type_error(field: str, expected: str, raw: str, why: str = "") -> ConfigError:
    return ConfigError(f"config field {field!r} expects {expected}, got {raw!r}{': ' + why if why else ''}")


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _parse_sequence(raw: str) -> list | tuple | None:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, list | tuple):
        return value
    if value is not None and "," not in raw:
        return (value,)
    if raw.strip() == "":
        return ()
    # a,b,c shorthand (e.g. --config.eval.splits=test,val)
    return tuple(_literal(part.strip()) for part in raw.split(","))


def _parse_value(field: str, raw: str, field_type: type, current: Any) -> Any:
    """Parse ``raw`` as the type of the field it replaces (see module docstring of apply_overrides)."""
    noneable = current is None
    if noneable and raw.strip().lower() in _NONE_WORDS:
        return None
    if field_type is type(None):  # a plain None default: no type to go by
        return _literal(raw)
    if field_type is bool:
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _type_error(field, "a bool (true/false/1/0)", raw)
    if field_type is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise _type_error(field, "an int", raw) from None
    if field_type is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise _type_error(field, "a float", raw) from None
    if field_type is str:
        return raw
    if field_type in (tuple, list):
        value = _parse_sequence(raw)
        return field_type(value)
    # other types (e.g. dicts kept as plain values): accept a literal of the same type
    value = _literal(raw)
    if not isinstance(value, field_type):
        raise _type_error(field, field_type.__name__, raw)
    return value


def _strip_override(item: str) -> tuple[str, str]:
    text = item.strip()
    if text.startswith("--"):
        text = text[2:]
    if "=" not in text:
        raise ConfigError(f"override {item!r} is not of the form config.FIELD=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.startswith("config."):
        key = key[len("config.") :]
    if not key:
        raise ConfigError(f"override {item!r} names no field")
    return key, raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply ``config.a.b=VALUE`` items (leading ``--`` optional) in place and return ``config``.

    In place so that ``FieldReference`` links between fields (e.g. a derived field) stay live. Each value is
    parsed by the type of the field it replaces: int, float (ints accepted), bool (true/false/1/0), str
    (verbatim), tuple/list (a Python literal, or ``a,b,c``). Fields whose current value is None (plain None or
    ``config_dict.placeholder(T)``) also accept ``none``/``null``; a placeholder's value is parsed as ``T``, a
    plain None field as a Python literal (falling back to the raw string). A sub-config cannot be replaced
    wholesale; set its fields one by one.
    """
    for item in overrides:
        field, raw = _strip_override(item)
        parent = config
        parts = field.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
                raise _unknown_field(config, field)
            if depth < len(parts) - 1:
                parent = parent[part]
        leaf = parts[-1]
        current = parent[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            sub = ", ".join(f"{field}.{k}" for k in list(current.keys())[:5])
            raise ConfigError(f"config field {field!r} is a sub-config; override its fields instead ({sub})")
        field_type = parent.get_type(leaf)
        value = _parse_value(field, raw, field_type, current)
        try:
            parent[leaf] = value
        except (TypeError, AttributeError, KeyError) as e:  # e.g. a frozen or type-checked field
            raise ConfigError(f"cannot set config field {field!r} to {value!r}: {e}") from e
    return config


def parse_cli(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """Find ``--config=SPEC`` (or ``--config SPEC``) and ``--config.*`` overrides in ``argv``.

    Returns the loaded, overridden config and the arguments that are not about the config, in order.
    Overrides may be written ``--config.x=v`` or ``--config.x v``; they are applied after loading, in order.
    """
    spec: str | None = None
    overrides: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("--config needs a value: --config=path/to/file.py[:arg]")
                value, i = args[i + 1], i + 2
            else:
                value, i = arg.split("=", 1)[1], i + 1
            if spec is not None:
                raise ConfigError(f"--config given twice ({spec!r} and {value!r})")
            spec = value
        elif arg.startswith("--config."):
            if "=" in arg:
                overrides.append(arg)
                i += 1
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"override {arg!r} has no value (use {arg}=VALUE)")
                overrides.append(f"{arg}={args[i + 1]}")
                i += 2
        else:
            rest.append(arg)
            i += 1
    if spec is None:
        raise ConfigError("no --config=path/to/file.py[:arg] given")
    config = load_config(spec)
    apply_overrides(config, overrides)
    return config, rest


# ---------------------------------------------------------------------------------------------- saving


def _jsonable(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict | config_dict.FrozenConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return value  # json writes NaN/Infinity, which Python's json reads back
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """A plain, JSON-able dict of the resolved config (tuples become lists, references are resolved)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.copy_and_resolve_references().to_dict()
    return _jsonable(config)


def save_config(config: ml_collections.ConfigDict | dict, directory: str | os.PathLike) -> Path:
    """Write the resolved config to ``directory/config.json`` (the record used to check resumes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written config.json
    return path


def flatten_dict(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_dict(value, path + "."))
        else:
            out[path] = value
    return out
