"""``phasenet merge``: the shards of a sharded build (or synthesis) into one dataset."""

from __future__ import annotations

import sys

from phasenet.cli.common import EXIT_FAILURES, EXIT_OK, command_parser, fail

NAME = "merge"
HELP = "merge the shards of a sharded build into one dataset"
DESCRIPTION = ("Merge shard datasets (phasenet build/synth --shard I/N) into one "
               "dataset equal to a single-process build: checks that they form one complete "
               "set with identical options, concatenates them in shard order (a streamed copy "
               "of the compressed chunks) and writes OUT through a temporary file.")


def add_arguments(parser) -> None:
    parser.add_argument("shards", nargs="+", metavar="SHARD", help="shard files, or folders of *.h5 shards")
    parser.add_argument("-o", "--output", required=True, help="output HDF5 file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(execute=execute)


def execute(args) -> int:
    from phasenet.pipeline.shards import ShardError, merge_shards

    try:
        result = merge_shards(args.shards, args.output, overwrite=args.overwrite)
    except (ShardError, OSError) as exc:
        return fail(NAME, exc)
    print(f"merged {result['n_shards']} shards into {args.output}: {result['n_structures']} structures "
          f"from {result['n_inputs']} inputs, {result['n_failures']} failures")
    return EXIT_FAILURES if result["n_failures"] else EXIT_OK


def run(args=None) -> int:
    """``phasenet merge ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
