"""``phasenet synth``: synthetic molecular crystal structures straight into a dataset."""

from __future__ import annotations

import sys

from phasenet.cli.common import (EXIT_ERROR, EXIT_FAILURES, EXIT_OK, Default, add_options,
                                 add_recipe_argument, command_parser, fail, recipe_and_options)
from phasenet.synth.options import PACKINGS, SYNTH_RECIPE_KEYS, SynthOptions

NAME = "synth"
HELP = "generate synthetic crystal structures into a dataset"
DESCRIPTION = ("Generate N synthetic molecular crystal structures straight into "
               "an HDF5 dataset with the schema of phasenet build. Structure i depends only "
               "on (seed, i); interrupted, a run resumes when started again with the same "
               "arguments.")


def add_arguments(parser) -> None:
    parser.add_argument("-n", type=int, help="number of structures in the whole run")
    parser.add_argument("-o", "--output", help="output HDF5 file")
    add_recipe_argument(parser, NAME)
    add_options(parser, SynthOptions)
    parser.add_argument("--packing", choices=sorted(PACKINGS), default=Default(lambda: "dense"),
                        help="dense: grow, then relax with the cell under pressure, ~18 Å³ per non-H "
                        "atom like real organic crystals; fast: growth only, ~25 Å³, about half the "
                        "CPU time (default %(default)s)")
    parser.add_argument("--cif-dir", default=None, help="also write every structure as a CIF file here")
    parser.add_argument("--shard", default=None, metavar="I/N", help="generate only shard I of N of the run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(execute=execute)


def resolve(args):
    """(n, output, cif_dir, SynthOptions, missing) of parsed arguments: the recipe's values
    (if any), overridden by the command line. A packing preset (``--packing`` or the
    recipe's ``packing``) sets compress_rounds, volume_per_atom and grow_volume_per_atom."""
    recipe, table = recipe_and_options(SynthOptions, SYNTH_RECIPE_KEYS, args)
    keys = recipe.keys if recipe else {}
    preset_keys = list(PACKINGS["dense"])
    if "packing" in keys and any(k in recipe.options for k in preset_keys):
        raise ValueError(f"{recipe.path}: give packing or {', '.join(preset_keys)}, not both")
    packing = keys.get("packing") if isinstance(args.packing, Default) else args.packing
    if packing is not None:
        if packing not in PACKINGS:
            raise ValueError(f"{recipe.path}: packing = {packing!r}: allowed values: "
                             f"{', '.join(sorted(PACKINGS))}")
        table = {**table, **PACKINGS[packing]}
    options = SynthOptions.from_dict(table)
    n = args.n if args.n is not None else keys.get("n")
    output = args.output or keys.get("output")
    cif_dir = args.cif_dir or keys.get("cif_dir")
    missing = [name for name, v in (("-n", n), ("-o/--output", output)) if v is None]
    return n, output, cif_dir, options, missing


def execute(args) -> int:
    from phasenet.pipeline.shards import parse_shard
    from phasenet.synth.generate import SynthError, synth_dataset

    try:
        n, output, cif_dir, options, missing = resolve(args)
        if missing:
            print(f"phasenet synth: error: the following arguments are required: {', '.join(missing)} "
                  "(on the command line or in the --recipe)", file=sys.stderr)
            return EXIT_ERROR
        shard = parse_shard(args.shard) if args.shard else (0, 1)
        summary = synth_dataset(n, output, options, shard=shard, cif_dir=cif_dir,
                                overwrite=args.overwrite, progress=False if args.quiet else None)
    except (SynthError, ValueError) as exc:
        return fail(NAME, exc)
    print(summary.format())
    return EXIT_OK if summary.ok else EXIT_FAILURES


def run(args=None) -> int:
    """``phasenet synth ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
