"""What the command modules share: exit codes, options dataclasses as argparse arguments,
recipes, error messages."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from phasenet.options import field_default, option_meta

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def command_parser(module) -> argparse.ArgumentParser:
    """The parser of one command module (``module.NAME``, ``DESCRIPTION``, ``add_arguments``),
    as ``phasenet NAME``: what ``module.run(args)`` parses."""
    parser = argparse.ArgumentParser(prog=f"phasenet {module.NAME}", description=module.DESCRIPTION)
    module.add_arguments(parser)
    return parser


def fail(command: str, exc) -> int:
    print(f"phasenet {command}: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


# --- options dataclasses as arguments ---------------------------------------------------


class Default:
    """The value of an option not given on the command line: ``--help`` shows it as the
    option's default (computed only then), and :func:`given_options` skips it, so that a
    recipe's value or the dataclass default applies."""

    def __init__(self, value_fn, show=None):
        self.value_fn, self.show = value_fn, show

    def __str__(self) -> str:
        value = self.value_fn()
        return str(self.show(value) if self.show and value is not None else value)

    __repr__ = __str__


def _entries(cls):
    """(dest, field name, nested key or None, declaration, default function) of every
    command-line option of ``cls``."""
    for f in dataclasses.fields(cls):
        meta = option_meta(f)
        if meta["flags"]:
            yield f.name, f.name, None, meta, (lambda f=f: field_default(f))
        for key, sub in meta["nested"].items():
            dest = sub["flags"][0].lstrip("-").replace("-", "_")
            yield dest, f.name, key, sub, (lambda f=f, key=key: _attribute(field_default(f), key))


def _attribute(obj, dotted: str):
    """``obj.a.b`` for ``"a.b"`` (nested keys may reach options inside options)."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def add_options(parser, cls) -> None:
    """One argparse argument per option of the dataclass ``cls`` that has a flag, with its
    declared type, choices, metavar and help; the value of an option not given is a
    :class:`Default` (or None for repeatable options)."""
    for dest, _, _, meta, default_fn in _entries(cls):
        kwargs = dict(meta["argparse"])
        repeatable = kwargs.get("action") == "append"
        default = None if repeatable else Default(default_fn, meta["show"])
        parser.add_argument(*meta["flags"], dest=dest, default=default, help=meta["help"], **kwargs)


def given_options(cls, args) -> dict:
    """The options of ``cls`` given on the command line (parsed ``args``), as a table for
    ``cls.from_dict`` (nested options as sub-tables)."""
    table: dict = {}
    for dest, name, key, _, _ in _entries(cls):
        value = getattr(args, dest, None)
        if value is None or isinstance(value, Default):
            continue
        if key is None:
            table[name] = value
        else:
            sub = table.setdefault(name, {})
            *path, last = key.split(".")
            for part in path:
                sub = sub.setdefault(part, {})
            sub[last] = value
    return table


def merge_tables(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``, sub-tables merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- recipes ----------------------------------------------------------------------------


def add_recipe_argument(parser, command: str) -> None:
    parser.add_argument("--recipe", metavar="TOML",
                        help=f"dataset recipe (datasets/*.toml, command = \"{command}\"): its values are "
                        "the defaults, options given here override them; a name alone finds the "
                        "recipes shipped with phasenet")


def find_recipe(text: str) -> Path:
    """A recipe file: the path as given if it exists, else the recipe of that name shipped
    with phasenet (``datasets/NAME.toml``)."""
    path = Path(text)
    if path.is_file():
        return path
    from phasenet.options import OptionsError
    from phasenet.resources import resource_dir

    folder = resource_dir("datasets")
    shipped = folder / (path.name if path.suffix == ".toml" else path.name + ".toml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
    raise OptionsError(f"{text}: no such recipe file, nor a recipe of phasenet's datasets/ "
                       f"({known})")


def recipe_and_options(cls, keys: dict, args):
    """(recipe or None, table of option values): the recipe's values, overridden by the
    options given on the command line."""
    from phasenet.options import load_recipe

    recipe = load_recipe(find_recipe(args.recipe), cls, keys) if args.recipe else None
    table = merge_tables(recipe.options if recipe else {}, given_options(cls, args))
    return recipe, table
