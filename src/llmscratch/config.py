"""Typed settings: a dataclass is the one source of a command's flags, its `--config FILE` keys and defaults.

A field is declared with `setting(default, help, ...)`; its metadata carries the help text, the flag (default:
`--field-name`) and the checks made where a value enters (command line, config file or Python):

    lr: float = setting(4e-4, "peak learning rate", gt=0)            # finite (floats always), > 0
    batch_size: int = setting(8, "sequences per micro-batch", ge=1)   # an integer (2.5 is refused), >= 1
    schedule: str = setting("cosine", "...", choices=("cosine", "constant"))
    progress: bool = setting(True, "...", switches={"--no-progress": False})
    train: TrainConfig = nested(TrainConfig, flags=("lr", "epochs"), lr=5e-5)   # some fields of another config

`add_flags(parser, cls)` builds the argparse flags (defaults shown in --help; `add_command` makes a whole
subcommand that calls `run(cfg)`); `from_args(cls, args)` reads
defaults < config file (YAML or JSON; keys are flag names, dashes or underscores, or field names) < flags
given, checks every value and returns the instance. `check_fields(obj)` makes the same checks in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path

from llmscratch.utils import UserError, check_input_file

_NONE = type(None)


def setting(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, ge=None, gt=None, le=None,
            lt=None, choices=None, switches: dict | None = None, required: bool = False, preset: str | None = None,
            cli: bool = True, default_factory=dataclasses.MISSING, metavar: str | tuple | None = None,
            aliases: tuple[str, ...] = (), nargs: int | None = None):
    """A dataclass field with its help text, flag and checks (see the module docstring).

    - ge/gt/le/lt: inclusive/exclusive bounds of a number; floats must also be finite.
    - choices: allowed values. required: None is refused once everything is read.
    - switches: argument-less flags that set the field to a constant, e.g. {"--full": False}.
    - preset: a bool field that, when true, takes the defaults from this classmethod of the config (`--quick`).
    - cli=False: a setting of the dataclass that gets no flag.
    - aliases: more spellings of the flag, e.g. ("-o",) beside flag="--out".
    - nargs: a list field that takes this many separate values (`--compare A B`) instead of one comma-separated
      value.
    """
    meta = {"help": help, "flag": flag, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "switches": switches, "required": required, "preset": preset, "cli": cli, "metavar": metavar,
            "aliases": tuple(aliases), "nargs": nargs}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def nested(cls, flags: tuple[str, ...] = (), **defaults):
    """A field holding a `cls` instance built with `defaults`; its fields named in `flags` become flags too."""
    return dataclasses.field(default_factory=lambda: cls(**defaults),
                             metadata={"nested": cls, "flags": tuple(flags), "cli": True})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field of a (possibly nested) config as a command-line flag."""

    path: tuple[str, ...]  # attribute path from the top config, e.g. ("train", "lr")
    field: dataclasses.Field
    type: object  # the resolved annotation

    @property
    def meta(self):
        return self.field.metadata

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def option(self) -> str:
        return self.meta.get("flag") or "--" + self.path[-1].replace("_", "-")

    def keys(self) -> dict[str, object]:
        """Config-file keys (normalised) -> the constant they mean when true (None: the key holds the value)."""
        keys: dict[str, object] = {_key(self.path[-1]): None, _key(self.option): None}
        for option, const in (self.meta.get("switches") or {}).items():
            keys[_key(option)] = const
        return keys


def _key(name: str) -> str:
    return str(name).lstrip("-").replace("-", "_")


def flags_of(cls, prefix: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> list[Flag]:
    """The fields of `cls` that are flags, nested configs flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[Flag] = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        if "nested" in f.metadata:
            out += flags_of(f.metadata["nested"], (*prefix, f.name), f.metadata["flags"])
        elif f.metadata.get("cli", False):
            out.append(Flag((*prefix, f.name), f, hints[f.name]))
    return out


def field_checks(cls) -> list[Flag]:
    """Every field of `cls` with checks (flags or not), nested configs not included."""
    hints = typing.get_type_hints(cls)
    return [Flag((f.name,), f, hints[f.name]) for f in dataclasses.fields(cls) if "help" in f.metadata]


# --------------------------------------------------------------------------------------------- values


def _parts(typ) -> tuple[object, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and _NONE in args:
        rest = [a for a in args if a is not _NONE]
        return rest[0], True
    return typ, False


def _describe(typ) -> str:
    base, _ = _parts(typ)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        return "a comma-separated list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(base, str(base))


def coerce(value, typ, name: str):
    """`value` (a command-line string or a config-file value) as type `typ`; UserError naming `name` if it is not."""
    base, optional = _parts(typ)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"{name} must be {_describe(typ)}, got {value!r}")
    try:
        return _convert(value, base)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {_describe(typ)}, got {value!r}") from None


def _convert(value, base):
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        inner = typing.get_args(base)[0]
        return origin(_convert(v, inner) for v in items)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(value)
    if base is int:
        if isinstance(value, bool):
            raise TypeError(value)
        number = float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(value)
        return int(number)
    if base is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if base in (str, Path):
        if not isinstance(value, (str, Path)):
            raise TypeError(value)
        return base(value)
    return value


def check_value(value, flag: Flag, name: str) -> None:
    """UserError naming `name` unless `value` is of the field's type, finite and within its bounds and choices
    (each item of a list or tuple)."""
    if value is None:
        if flag.meta.get("required"):
            raise UserError(f"{name} is required")
        if not _parts(flag.type)[1]:
            raise UserError(f"{name} must be {_describe(flag.type)}, got None")
        return
    base, _ = _parts(flag.type)
    if typing.get_origin(base) in (list, tuple):
        for item in value:
            _check_one(item, typing.get_args(base)[0], flag.meta, name)
    else:
        _check_one(value, base, flag.meta, name)


def _check_one(value, base, m, name: str) -> None:
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if base is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UserError(f"{name} must be a number, got {value!r}")
    if base in (int, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        bound = m.get(key)
        if bound is not None and not _compare(value, op, bound):
            raise UserError(f"{name} must be {op} {_number(bound)}, got {_number(value)}")
    if m.get("choices") and value not in m["choices"]:
        raise UserError(f"{name} must be one of {', '.join(map(str, m['choices']))}, got {value!r}")


def _number(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _compare(value, op: str, bound) -> bool:
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]


def check_fields(obj) -> None:
    """Check every field of the dataclass `obj` (and of the configs nested in it) as `check_value` does."""
    for flag in field_checks(type(obj)):
        check_value(getattr(obj, flag.path[0]), flag, flag.path[0])
    for f in dataclasses.fields(obj):
        if "nested" in f.metadata:
            check_fields(getattr(obj, f.name))


# --------------------------------------------------------------------------------------------- argparse


class _Given(argparse.Action):
    """Store a flag's value (or a switch's constant) and note in `namespace._given` that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        setattr(namespace, self.dest, value)
        given = dict(getattr(namespace, "_given", None) or {})
        given[self.dest] = (value, option_string)
        namespace._given = given


def add_flags(parser: argparse.ArgumentParser, cls, group_titles: dict[str, str] | None = None) -> None:
    """Add a flag per field of `cls` (nested configs' chosen fields in their own help group) and `--config`."""
    groups: dict[tuple[str, ...], object] = {}
    for flag in flags_of(cls):
        where = flag.path[:-1]
        if where and where not in groups:
            groups[where] = parser.add_argument_group((group_titles or {}).get(".".join(where), "training"))
        _add(groups.get(where, parser), flag, _default(cls, flag))
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of settings (keys: flag names); flags given here override it")
    parser.set_defaults(_given=None, _settings=cls)
    # Numeric flags carry type=int/float so that tools reading the parser see their kind, but argparse keeps the
    # text: `from_args` converts and checks it, with a one-line error naming the flag.
    for typ in (int, float):
        parser.register("type", typ, _keep_text)


def _keep_text(text: str) -> str:
    return text


def add_command(subparsers, name: str, cls, run, **parser_kw) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of `cls` (see `add_flags`); it calls `run(cfg)` with the config
    that the command line (and its --config file) describe. `parser_kw`: help, description, epilog."""
    p = subparsers.add_parser(name, **parser_kw)
    add_flags(p, cls)
    p.set_defaults(func=lambda args: run(from_args(cls, args)))
    return p


def _default(cls, flag: Flag):
    return _lookup(_defaults_only(cls), flag.path)


def _add(target, flag: Flag, default) -> None:
    m, help_text = flag.meta, flag.meta.get("help", "")
    switches = m.get("switches")
    if switches:
        group = target.add_mutually_exclusive_group()
        first = next(iter(switches))
        for option, const in switches.items():  # "--a: what a does; --b: what b does" -> each its own part
            own = re.search(rf"(?:^|; ){re.escape(option)}: (.*?)(?=; --|$)", help_text)
            text = own.group(1) if own else help_text if option == first else f"see {first}"
            group.add_argument(option, dest=flag.dest, action=_Given, nargs=0, const=const, default=default,
                               help=text.replace("%", "%%"))
        return
    options = (*m.get("aliases", ()), flag.option)
    if _parts(flag.type)[0] is bool:
        target.add_argument(*options, dest=flag.dest, action=_Given, nargs=0, const=True, default=default,
                            help=help_text)
        return
    shown = "" if default is None or m.get("required") else f" (default: {_show(default)})"
    if shown:  # a help that names the field's usual default ("(default: all)") where a recipe sets another one
        help_text = re.sub(r" \(default[^)]*\)", "", help_text)
    metavar = m.get("metavar") or ("{" + ",".join(map(str, m["choices"])) + "}" if m.get("choices")
                                   else flag.option.lstrip("-").upper().replace("-", "_"))
    base = _parts(flag.type)[0]
    extra = {"nargs": m["nargs"]} if m.get("nargs") else {}
    target.add_argument(*options, dest=flag.dest, action=_Given, default=default, metavar=metavar,
                        type=base if base in (int, float) else None, help=(help_text + shown).replace("%", "%%"),
                        **extra)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def from_args(cls, args: argparse.Namespace):
    """The `cls` instance that defaults < --config file < flags given describe; every value checked."""
    flags = flags_of(cls)
    values: dict[str, object] = {}
    if getattr(args, "config", None):
        values.update(_from_file(args.config, flags))
    for flag in flags:
        given = (getattr(args, "_given", None) or {}).get(flag.dest)
        if given is not None:
            value, option = given
            values[flag.dest] = coerce(value, flag.type, option) if isinstance(value, str) else value
            check_value(values[flag.dest], flag, option)
    return build(cls, values, flags)


def build(cls, values: dict[str, object], flags: list[Flag] | None = None):
    """A `cls` instance: its defaults (or its preset's) with `values` ({dest: value}) put in; then checked."""
    flags = flags or flags_of(cls)
    base = _defaults_only(cls)
    for flag in flags:
        if flag.meta.get("preset") and values.get(flag.dest):
            base = getattr(cls, flag.meta["preset"])()
    tops = {k: v for k, v in values.items() if "." not in k}
    for f in dataclasses.fields(cls):
        inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
        if "nested" in f.metadata and inner:
            tops[f.name] = dataclasses.replace(getattr(base, f.name), **inner)
    for flag in flags:
        if flag.meta.get("required") and tops.get(flag.dest, getattr(base, flag.path[0])) is None:
            raise UserError(f"{flag.option} is required (on the command line or in the config file)")
    return dataclasses.replace(base, **tops)


def _defaults_only(cls):
    """An instance of `cls` with its declared defaults, built without `__init__` checks (required fields None)."""
    obj = cls.__new__(cls)
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        object.__setattr__(obj, f.name, None if value is dataclasses.MISSING else value)
    return obj


def _from_file(path, flags: list[Flag]) -> dict[str, object]:
    """{dest: value} of a config file; unknown keys and values of the wrong type or range are UserErrors."""
    table = {key: (flag, const) for flag in flags for key, const in flag.keys().items()}
    values, given = {}, {}
    for key, raw in read_config_file(path).items():
        if _key(key) not in table:
            known = sorted({_key(f.option) for f in flags})
            raise UserError(f"{path}: unknown setting {key!r}; known: {', '.join(known)}")
        flag, const = table[_key(key)]
        if flag.dest in given:
            raise UserError(f"{path}: {given[flag.dest]!r} and {key!r} set the same thing; keep one")
        given[flag.dest] = key
        name = f"{path}: {key}"
        if const is not None:
            on = coerce(raw, bool, name)
            value = const if on else (not const if isinstance(const, bool) else None)
        else:
            value = coerce(raw, flag.type, name)
        check_value(value, flag, name)
        values[flag.dest] = value
    return values


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML (.yaml, .yml) or JSON (.json, or no suffix) config file; UserError when it is missing,
    unreadable or of another kind."""
    path = check_input_file(path, "config")
    if path.suffix.lower() not in (".yaml", ".yml", ".json", ""):  # no suffix (/dev/fd/63): JSON
        raise UserError(f"config file {path}: settings are read from .yaml, .yml or .json files")
    try:
        data = _parse(path.read_text(encoding="utf-8"), path.suffix.lower())
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot parse config file {path}: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting names to values")
    return data


def _parse(text: str, suffix: str):
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(str(e)) from None
    return json.loads(text)


def to_argv(cfg) -> list[str]:
    """The flags that give `cfg` from the defaults: every flag whose value differs (required ones always)."""
    argv: list[str] = []
    defaults = _defaults_only(type(cfg))
    for flag in flags_of(type(cfg)):
        value, default = _lookup(cfg, flag.path), _lookup(defaults, flag.path)
        if value == default and not flag.meta.get("required"):
            continue
        switches = flag.meta.get("switches") or {}
        match = [o for o, c in switches.items() if c == value]
        if match:
            argv.append(match[0])
        elif _parts(flag.type)[0] is bool:
            argv += [flag.option] if value else []
        elif value is not None:
            argv += [flag.option, _show(value)]
    return argv


def _lookup(obj, path: tuple[str, ...]):
    for attr in path:
        obj = getattr(obj, attr)
    return obj


def flat_settings(cfg) -> dict:
    """{field name: value} of every flag of `cfg`, nested configs flattened (for reports)."""
    return {flag.path[-1]: _lookup(cfg, flag.path) for flag in flags_of(type(cfg))}
