"""Options declared once: the fields of an options dataclass carry their command-line flag
and help, and the same dataclass is read from TOML (a dataset recipe) with defaults.

An options class (``BuildOptions``, ``SynthOptions``, ``EvaluateOptions``) is a frozen
dataclass deriving from :class:`Options`, whose fields are made with :func:`option`::

    @dataclass(frozen=True)
    class BuildOptions(Options):
        COMMAND = "build"
        seed: int = option(0, "--seed", type=int, help="seed of the split (default %(default)s)")

``phasenet.cli.arguments.add_options`` turns those fields into argparse arguments;
:meth:`Options.from_dict` / :meth:`Options.from_toml` build the options from a table,
checking every value against the field's type and rejecting unknown keys with the list
of valid ones. :func:`load_recipe` reads a recipe: the options plus the command's own keys
(inputs, output, ...). This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from pathlib import Path


class OptionsError(ValueError):
    """Bad options: an unknown key (the message lists the valid ones) or a wrong value."""


def flag(*flags: str, help: str = "", parse=None, show=None, **argparse_kwargs) -> dict:
    """How one option appears on the command line.

    ``flags``: the option strings (none: the option is set from TOML only); ``help``: its
    help text (``%(default)s`` shows the field's default, through ``show`` if given);
    ``parse``: turns a command-line or TOML value into the field's value (``"8-50"`` ->
    ``(8, 50)``), raising ValueError with a clear message; other keyword arguments
    (type, choices, metavar, action, nargs, dest) go to ``argparse.add_argument``.
    """
    return {"flags": tuple(flags), "help": help, "parse": parse, "show": show, "argparse": argparse_kwargs}


def option(default=MISSING, *flags: str, default_factory=MISSING, nested: dict | None = None,
           **kwargs) -> dataclasses.Field:
    """A dataclass field declared with its command-line flag (see :func:`flag`).

    ``nested``: for a field holding another options dataclass, ``{key: flag(...)}`` puts
    some of its keys on the command line (``--cf-time-limit`` sets
    ``charge_flipping.time_limit``).
    """
    meta = dict(flag(*flags, **kwargs), nested=nested or {})
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": meta})


def option_meta(f: dataclasses.Field) -> dict:
    """The :func:`option` metadata of a field (an empty declaration for plain fields)."""
    return f.metadata.get("option") or dict(flag(), nested={})


def field_default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise OptionsError(f"option {f.name} has no default")


# --- values -----------------------------------------------------------------------------

_SCALAR_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _scalar(value, kind: str, what: str):
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str),
          "bool": isinstance(value, bool)}.get(kind)
    if ok is None:  # a type this checker does not know: the dataclass checks it
        return value
    if not ok:
        raise OptionsError(f"{what} = {value!r}: must be {_SCALAR_WORDS[kind]}")
    return float(value) if kind == "float" else value


def coerce(value, annotation: str, what: str):
    """Check ``value`` (from TOML or the command line) against a field's annotation
    (``int``, ``float | None``, ``tuple[str, ...]``, ``tuple[float, float]``, ...);
    lists become tuples, integers floats where a float is expected."""
    ann = str(annotation).replace(" ", "")
    if ann.endswith("|None"):
        if value is None:
            return None
        ann = ann[: -len("|None")]
    if ann.startswith("tuple[") and ann.endswith("]"):
        inner = ann[len("tuple["):-1].split(",")
        if not isinstance(value, (list, tuple)):
            raise OptionsError(f"{what} = {value!r}: must be a list")
        if inner[-1] == "...":
            kinds = [inner[0]] * len(value)
        elif len(value) != len(inner):
            raise OptionsError(f"{what} = {value!r}: must be a list of {len(inner)} values")
        else:
            kinds = inner
        return tuple(_scalar(v, k, what) for v, k in zip(value, kinds))
    return _scalar(value, ann, what)


def _value(f: dataclasses.Field, value, what: str):
    meta = option_meta(f)
    if meta["parse"] is not None:
        value = meta["parse"](value)
    if isinstance(value, dict):
        default = field_default(f)
        if not dataclasses.is_dataclass(default):
            raise OptionsError(f"{what}: a table where a single value is expected")
        return options_from_dict(type(default), value, what, base=default)
    return coerce(value, f.type, what)


def options_from_dict(cls, table: dict, source: str = "", base=None):
    """``cls`` (any dataclass) from a table of option values, the others at their defaults
    (or those of ``base``). Unknown keys raise :class:`OptionsError` with the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    name = getattr(cls, "COMMAND", "") or cls.__name__
    prefix = f"{source}: " if source else ""
    unknown = [k for k in table if k not in fields]
    if unknown:
        raise OptionsError(f"{prefix}Unknown option(s) {unknown} for {name}; valid options are: "
                           + ", ".join(fields))
    values = {k: _value(fields[k], v, f"{prefix}{k}") for k, v in table.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except OptionsError:
        raise
    except (TypeError, ValueError) as exc:
        if not prefix:
            raise
        raise OptionsError(f"{prefix}{exc}") from None


def read_toml(path) -> dict:
    """A TOML file as a table; unreadable or invalid files raise OptionsError naming them."""
    try:  # here, not at the top: `import phasenet` does not need it
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise OptionsError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionsError(f"{path}: cannot read it ({exc})") from None


class Options:
    """Base of the option dataclasses: reading them from a table or a TOML file."""

    #: The command these options belong to (in messages: "... for build").
    COMMAND = ""

    @classmethod
    def from_dict(cls, table: dict, source: str = ""):
        return options_from_dict(cls, table, source)

    @classmethod
    def from_toml(cls, path):
        return options_from_dict(cls, read_toml(path), str(path))

    def non_default(self) -> dict:
        """The options that differ from their defaults (what a log needs to show)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != field_default(f)}


# --- recipes ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A dataset recipe: the command that makes it, its options (as given in the file,
    checked) and the command's own keys (inputs, output, n, ...)."""

    path: Path
    command: str
    options: dict
    keys: dict

    def get(self, key: str, default=None):
        return self.keys.get(key, default)


def load_recipe(path, cls, keys: dict[str, str]) -> Recipe:
    """Read and check a recipe for ``cls.COMMAND``: ``command = "..."``, the command's own
    ``keys`` (name -> annotation, e.g. ``{"output": "str"}``) and fields of ``cls``."""
    path = Path(path)
    table = dict(read_toml(path))
    command = table.pop("command", None)
    if command != cls.COMMAND:
        raise OptionsError(f"{path}: a recipe for phasenet {cls.COMMAND} needs command = "
                           f"\"{cls.COMMAND}\"" + (f" (this one is for phasenet {command})" if command else ""))
    fields = [f.name for f in dataclasses.fields(cls)]
    valid = ["command", *keys, *fields]
    unknown = [k for k in table if k not in valid]
    if unknown:
        raise OptionsError(f"{path}: Unknown option(s) {unknown} for {cls.COMMAND}; valid options are: "
                           + ", ".join(valid))
    own = {k: coerce(table[k], keys[k], f"{path}: {k}") for k in keys if k in table}
    options = {k: table[k] for k in fields if k in table}
    cls.from_dict(options, str(path))  # every value checked now, not when the command runs
    return Recipe(path, cls.COMMAND, options, own)
