"""The command line: ``phasenet COMMAND ...``, one module per command.

Each command module (:mod:`~phasenet.cli.build`, ``info``, ``synth``, ``train``,
``evaluate``, ``solve``, ``merge``, ``slurm``, ``demo``) has ``add_arguments(parser)``,
``execute(args)`` (parsed arguments -> exit status) and ``run(args=None)`` (an argument
list -> exit status; tests call it in-process). :func:`main` only dispatches.
Heavy modules (numba, cctbx's solvers, Keras) are imported inside ``execute``.
"""

from __future__ import annotations

import argparse
import sys

from phasenet.cli import build, demo, evaluate, info, merge, slurm, solve, synth, train
from phasenet.cli.common import EXIT_ERROR, EXIT_FAILURES, EXIT_OK

#: The commands, in the order ``phasenet --help`` lists them.
COMMANDS = (build, info, synth, train, evaluate, solve, merge, slurm, demo)

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_FAILURES", "EXIT_OK", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from phasenet import __version__

    parser = argparse.ArgumentParser(prog="phasenet", description="Machine learning for the phase problem.")
    parser.add_argument("--version", action="version", version=f"phasenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP, description=module.DESCRIPTION))
    return parser


def main(argv=None) -> int:
    """``phasenet ARGS``: parse, then run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.execute(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
