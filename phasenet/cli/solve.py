"""``phasenet solve``: phase a crystal from its measured data; write MTZ, map, peaks, .res."""

from __future__ import annotations

import json
import sys

from phasenet.cli.common import EXIT_ERROR, EXIT_OK, add_options, command_parser, fail
from phasenet.solving.options import SolveOptions

NAME = "solve"
HELP = "phase your own measured data (CIF, SHELX .hkl, MTZ) and write map, peaks and .res"
DESCRIPTION = ("Phase a crystal from its measured data with phasenet's methods: merge, Wilson |E|, "
               "optional truncation, reindex non-standard settings, run the methods, keep the best by "
               "figure of merit, and write solution.mtz, map.ccp4, peaks.csv, solution.res, "
               "summary.txt and summary.json to OUT_DIR (in the input's setting).")


def add_arguments(parser) -> None:
    parser.add_argument("input", help="CIF with measured data, SHELX .hkl, or MTZ")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    add_options(parser, SolveOptions)
    parser.add_argument("--json", action="store_true", help="print summary.json instead of the text summary")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(execute=execute)


def execute(args) -> int:
    from phasenet.options import OptionsError
    from phasenet.solving.errors import SolveError
    from phasenet.solving.result import summary_text
    from phasenet.solving.solver import solve_to

    try:
        opts = SolveOptions.from_dict(_given(args))
        sol, files = solve_to(args.input, args.output, progress=not args.quiet, **opts.solve_kwargs())
    except (SolveError, OptionsError, OSError) as exc:
        return fail(NAME, exc)
    if args.json:
        print(json.dumps(json.load(open(files["summary.json"])), indent=2))
    else:
        print(summary_text(sol.summary), end="")
        print("wrote " + ", ".join(files.values()))
    return EXIT_OK


def _given(args) -> dict:
    from phasenet.cli.common import given_options

    return given_options(SolveOptions, args)


def run(args=None) -> int:
    """``phasenet solve ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))


__all__ = ["EXIT_ERROR", "run"]
