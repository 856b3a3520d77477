"""Dataclass configs -> CLI flags, JSON config files, and the checks every config runs.

A stage's dataclass is the one place its settings and defaults live (nerfstudio/tyro style). This
module turns it into argparse flags mechanically and back:

    add_config_arguments(parser, Stage1Config)       # one flag per field, nested dataclasses flattened
    cfg = config_from_args(Stage1Config, args)       # -> Stage1Config(...); __post_init__ validates

Field -> flag rules:
- ``--<field name>`` (underscores kept, as the reference scripts spell them); a field's metadata may
  give ``flag`` (another name), ``short`` (e.g. "-m"), ``help`` and ``choices``.
- ``Literal[...]`` types get ``choices``; ``bool`` fields get ``--name`` / ``--no_name``;
  ``list``/``tuple`` fields take a comma-separated list (``--relight sunset,studio``, ``''`` = empty).
- Nested dataclass fields are flattened (their field names must not collide).

Use ``param(default, "help text", choices=...)`` to declare a field with its help. Validation lives
in the config's ``__post_init__`` via ``check(...)``, which raises ``ConfigError`` (a ValueError)
whose message starts with the flag: ``--iterations 0: must be >= 1``; the CLI prints that as one line
and exits 2 before any file is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

from lumenkit.common.errors import LumenkitError

T = TypeVar("T")
_MISSING = dataclasses.MISSING


class ConfigError(LumenkitError, ValueError):
    """An invalid config value; the message names the flag (``--name value: why``)."""


def param(default: Any = _MISSING, help: str = "", *, default_factory: Callable[[], Any] | None = None,
          choices: Sequence[Any] | None = None, flag: str | None = None, short: str | None = None,
          cli: bool = True) -> Any:
    """A dataclass field with its CLI help (and optional choices / flag name / short flag / cli=False)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag, "short": short, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check(condition: bool, name: str, value: Any, why: str) -> None:
    """Raise ConfigError('--name value: why') unless condition holds (use in __post_init__)."""
    if not condition:
        raise ConfigError(f"--{name} {value!r}: {why}" if isinstance(value, str) else f"--{name} {value}: {why}")


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> None:
    """--name must be finite and in [lo, hi] (or (lo, hi] with lo_open)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    bounds = f"{'>' if lo_open else '>='} {lo}" if hi is None else f"in {'(' if lo_open else '['}{lo}, {hi}]"
    check(ok, name, value, f"must be {bounds}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    check(value in choices, name, value, f"expected one of {', '.join(map(str, choices))}")


# ------------------------------------------------------------------------------------------ types
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def parse_list(text: str, item: Callable[[str], T] = str, *, name: str = "") -> list[T]:
    """'a, b,c' -> [item('a'), item('b'), item('c')]; '' -> []. A bad item names the flag."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(item(part))
        except ValueError:
            kind = getattr(item, "__name__", "value")
            raise ConfigError(f"--{name} {text!r}: {part!r} is not a valid {kind}" if name else f"{part!r} is not a valid {kind}") from None
    return out


def _scalar_parser(tp: Any, name: str) -> Callable[[str], Any]:
    if tp is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if tp in (int, float, str, Path):
        return tp
    if typing.get_origin(tp) is Literal:
        kinds = {type(a) for a in typing.get_args(tp)}
        return kinds.pop() if len(kinds) == 1 else str
    raise TypeError(f"config field {name}: unsupported type {tp!r} for a CLI flag")


def _field_kind(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for one (non-bool) field."""
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    choices = f.metadata.get("choices")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        item = _scalar_parser(args[0] if args else str, f.name)

        def parse(text: str, _i=item, _n=f.name) -> list:
            try:
                return parse_list(text, _i, name=_n)
            except ConfigError as exc:  # argparse shows an ArgumentTypeError's own message
                raise argparse.ArgumentTypeError(str(exc)) from None

        return {"type": parse, "metavar": "A,B,..."}
    if origin is Literal and choices is None:
        choices = typing.get_args(tp)
    parse = _scalar_parser(tp, f.name)
    if optional:
        inner = parse
        parse = lambda s, _p=inner: None if s.lower() in ("none", "") else _p(s)  # noqa: E731
    kw: dict[str, Any] = {"type": parse, "metavar": f.name.upper()}
    if choices is not None:
        del kw["metavar"]
        kw["choices"] = tuple(choices)
    return kw


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _inherit_metadata(cls: type, f: dataclasses.Field) -> dataclasses.Field:
    """A subclass that only changes a default (`steps: int = 600`) keeps the base class's help and choices."""
    if f.metadata.get("help"):
        return f
    for base in cls.__mro__[1:]:
        for g in dataclasses.fields(base) if dataclasses.is_dataclass(base) else ():
            if g.name == f.name and g.metadata.get("help"):
                new = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=g.metadata)
                new.name, new.type = f.name, f.type
                return new
    return f


def config_fields(cls: type, *, exclude: Sequence[str] = ()) -> list[tuple[tuple[str, ...], dataclasses.Field, Any]]:
    """(path, field, type) of every CLI leaf of cls, nested dataclasses flattened, in declaration order."""
    out = []
    hints = _hints(cls)
    for f in map(lambda f: _inherit_metadata(cls, f), dataclasses.fields(cls)):
        if not f.init or f.name in exclude or not f.metadata.get("cli", True):
            continue
        tp = hints[f.name]
        if _is_config(tp):
            out += [((f.name, *p), g, t) for p, g, t in config_fields(tp, exclude=exclude)]
        else:
            out.append(((f.name,), f, tp))
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Sequence[str] = (),
                         group: str | None = None, show_defaults: bool = True) -> argparse.ArgumentParser:
    """Add one flag per field of `cls` (see the module docstring). Defaults are shown in --help unless
    show_defaults=False (flags that override several configs with defaults of their own)."""
    target = parser.add_argument_group(group) if group else parser
    for path, f, tp in config_fields(cls, exclude=exclude):
        dest = "__".join(path)
        flag = "--" + (f.metadata.get("flag") or f.name)
        names = [f.metadata["short"], flag] if f.metadata.get("short") else [flag]
        help_text = f.metadata.get("help", "")
        default = _default(f)
        if _strip_optional(tp)[0] is bool:
            excl = target.add_mutually_exclusive_group()
            excl.add_argument(*names, dest=dest, action="store_true", default=argparse.SUPPRESS,
                              help=f"{help_text} (default: {'on' if default else 'off'})" if show_defaults else help_text)
            excl.add_argument("--no_" + flag[2:], dest=dest, action="store_false", default=argparse.SUPPRESS,
                              help=f"turn --{flag[2:]} off" if default else argparse.SUPPRESS)
            continue
        kw = _field_kind(f, tp)
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        required = default is _MISSING
        target.add_argument(*names, dest=dest, default=argparse.SUPPRESS, required=required,
                            help=f"{help_text} (default: {shown})" if show_defaults and not required else help_text, **kw)
    return parser


def _set_path(d: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d[path[-1]] = value


def config_from_args(cls: type[T], args: argparse.Namespace, *, base: dict | None = None, exclude: Sequence[str] = (),
                     **overrides: Any) -> T:
    """Build cls from parsed flags: flags given on the command line win over `base` (e.g. a --config
    JSON), which wins over the dataclass defaults. Validation (__post_init__) errors name the flag."""
    values: dict[str, Any] = json.loads(json.dumps(base or {}, default=str))
    _fill_nested_defaults(cls, values)
    given = vars(args)
    for path, _f, _tp in config_fields(cls, exclude=exclude):
        dest = "__".join(path)
        if dest in given:
            _set_path(values, path, given[dest])
    values.update(overrides)
    return config_from_dict(cls, values)


def _fill_nested_defaults(cls: type, values: dict) -> None:
    """Nested configs absent from `values` start from the field's own default (its default_factory may
    differ from the nested class's defaults), so that one nested flag does not reset its siblings."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])[0]
        if not _is_config(tp):
            continue
        if f.name not in values:
            default = _default(f)
            if default is _MISSING or default is None:
                continue
            values[f.name] = config_to_dict(default)
        if isinstance(values[f.name], dict):
            _fill_nested_defaults(tp, values[f.name])


def config_from_dict(cls: type[T], d: dict, *, source: str = "config") -> T:
    """Strict: a key that is not a field of cls (at any nesting level) is an error naming the key."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object of {cls.__name__} fields, got {type(d).__name__}")
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__} (known: {', '.join(names)})")
    kwargs = {}
    for k, v in d.items():
        tp = _strip_optional(hints[k])[0]
        if _is_config(tp) and isinstance(v, dict):
            v = config_from_dict(tp, v, source=f"{source}.{k}")
        elif typing.get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(cfg: Any) -> dict:
    """dataclasses.asdict with tuples as lists (JSON round-trips through config_from_dict)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """json.load with one-line errors naming the file (missing, unreadable, not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LumenkitError(f"{path}: not valid JSON ({exc})") from None


def load_config_file(cls: type[T], path: str | Path) -> dict:
    """A --config JSON checked against cls (unknown keys -> error naming the key); returns the dict."""
    d = read_json(path, what="config file")
    config_from_dict(cls, d, source=str(path))  # validates keys and values
    return d
