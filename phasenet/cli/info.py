"""``phasenet info``: a summary of a dataset."""

from __future__ import annotations

import json
import sys

from phasenet.cli.common import EXIT_OK, command_parser, fail

NAME = "info"
HELP = "summarise a dataset"
DESCRIPTION = None


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="HDF5 dataset")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all-failures", action="store_true", help="list every failure")
    parser.set_defaults(execute=execute)


def execute(args) -> int:
    from phasenet.io.hdf5 import DatasetError, dataset_info, format_info

    try:
        info = dataset_info(args.dataset)
    except (DatasetError, OSError) as exc:
        return fail(NAME, exc)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info, max_failures=10**9 if args.all_failures else 20))
    return EXIT_OK


def run(args=None) -> int:
    """``phasenet info ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
