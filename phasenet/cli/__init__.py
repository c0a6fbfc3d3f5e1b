"""The command line: `phasenet COMMAND ...`."""

from phasenet.cli.commands import build_parser, main  # noqa: F401
