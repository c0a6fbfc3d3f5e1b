"""``phasenet build``: an HDF5 dataset of structure factors from CIF files."""

from __future__ import annotations

import sys

from phasenet.cli.common import (EXIT_ERROR, EXIT_FAILURES, EXIT_OK, add_options, add_recipe_argument,
                                 command_parser, fail, recipe_and_options)
from phasenet.pipeline.options import BUILD_RECIPE_KEYS, BuildOptions

NAME = "build"
HELP = "build an HDF5 dataset from CIF files"
DESCRIPTION = ("Build an HDF5 dataset of structure factors from CIF files. "
               "Interrupted, it resumes when run again with the same arguments.")


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="CIF files, folders (searched for *.cif) or list files (.txt/.lst/.list)")
    parser.add_argument("-o", "--output", help="output HDF5 file")
    add_recipe_argument(parser, NAME)
    add_options(parser, BuildOptions)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--shard", metavar="I/N", help="build only shard I of N of the sorted inputs "
                        "(for job arrays; join the shards with phasenet merge)")
    parser.set_defaults(execute=execute)


def resolve(args):
    """(inputs, output, BuildOptions) of parsed arguments: the recipe's values (if any),
    overridden by the command line; inputs and output must come from one of them."""
    recipe, table = recipe_and_options(BuildOptions, BUILD_RECIPE_KEYS, args)
    options = BuildOptions.from_dict(table)
    inputs = list(args.inputs) or list(recipe.get("inputs", ()) if recipe else ())
    output = args.output or (recipe.get("output") if recipe else None)
    missing = [name for name, v in (("INPUT", inputs), ("-o/--output", output)) if not v]
    return inputs, output, options, missing


def execute(args) -> int:
    from phasenet.pipeline.build import BuildError, build_dataset
    from phasenet.pipeline.shards import parse_shard

    try:
        inputs, output, options, missing = resolve(args)
        if missing:
            print(f"phasenet build: error: the following arguments are required: {', '.join(missing)} "
                  "(on the command line or in the --recipe)", file=sys.stderr)
            return EXIT_ERROR
        summary = build_dataset(inputs, output, options, overwrite=args.overwrite,
                                progress=False if args.quiet else None,
                                shard=parse_shard(args.shard) if args.shard else None)
    except (BuildError, ValueError) as exc:
        return fail(NAME, exc)
    print(summary.format())
    return EXIT_OK if summary.ok else EXIT_FAILURES


def run(args=None) -> int:
    """``phasenet build ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
