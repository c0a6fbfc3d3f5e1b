"""The ``phasenet`` command: a thin layer over the Python API.

Every subcommand is a function taking parsed arguments; ``main(argv)`` can be
called in-process (tests do) and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from phasenet import _cctbx_first  # noqa: F401

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def _add_build(sub):
    from phasenet.build import BuildOptions
    from phasenet.normalisation import METHODS

    d = BuildOptions()
    p = sub.add_parser("build", help="build an HDF5 dataset from CIF files",
                       description="Build an HDF5 dataset of structure factors from CIF files. "
                       "Interrupted, it resumes when run again with the same arguments.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="CIF files, folders (searched for *.cif) or list files (.txt/.lst/.list)")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    p.add_argument("--max-index", type=int, default=d.max_index, help="|h|,|k|,|l| <= this (default %(default)s)")
    p.add_argument("--r2-max", type=int, default=d.r2_max,
                   help="keep h²+k²+l² < R2 (50 gives the study's 709 reflections; default: no cut)")
    p.add_argument("--normalisation", "--normalization", choices=METHODS, default=d.normalisation,
                   help="model input normalisation (default %(default)s)")
    p.add_argument("--default-u", type=float, default=d.default_u,
                   help="U_iso (Å²) for atoms without displacement parameters (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="fraction of structures in the test split (default 1/7, the study's 1000/7000)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the train/test split (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help="files per part, the unit of resumption (default %(default)s)")
    p.add_argument("--compression", choices=["lzf", "gzip", "none"], default="lzf",
                   help="HDF5 compression (default lzf)")
    p.add_argument("--no-observations", action="store_true", help="ignore measured reflections")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from phasenet.build import BuildError, BuildOptions, build_dataset

    try:
        options = BuildOptions(
            max_index=args.max_index, r2_max=args.r2_max, normalisation=args.normalisation,
            default_u=args.default_u, test_fraction=args.test_fraction, seed=args.seed,
            read_observations=not args.no_observations,
            compression=None if args.compression == "none" else args.compression,
            workers=args.workers, chunk_size=args.chunk_size)
        summary = build_dataset(args.inputs, args.output, options, overwrite=args.overwrite,
                                progress=False if args.quiet else None)
    except (BuildError, ValueError) as exc:
        print(f"phasenet build: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.format())
    return EXIT_OK if summary.ok else EXIT_FAILURES


def _add_info(sub):
    p = sub.add_parser("info", help="summarise a dataset")
    p.add_argument("dataset", help="HDF5 dataset")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all-failures", action="store_true", help="list every failure")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from phasenet.dataset import DatasetError, dataset_info, format_info

    try:
        info = dataset_info(args.dataset)
    except (DatasetError, OSError) as exc:
        print(f"phasenet info: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info, max_failures=10**9 if args.all_failures else 20))
    return EXIT_OK


# --- synth commands (issue 3) ---

# --- train commands (issue 4) ---

# --- evaluate commands (issue 5) ---

# --- slurm / shard commands (issue 6) ---


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the main job on an embedded default")
    p.add_argument("--out", default="demo-output", help="folder for the demo's files (default %(default)s)")
    p.add_argument("-n", type=int, default=60, help="structures to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from phasenet.demo import run_demo

    return run_demo(args.out, n=args.n, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    from phasenet import __version__

    parser = argparse.ArgumentParser(prog="phasenet", description="Machine learning for the phase problem.")
    parser.add_argument("--version", action="version", version=f"phasenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_info(sub)
    # register: synth (issue 3)
    # register: train (issue 4)
    # register: evaluate (issue 5)
    # register: slurm (issue 6)
    _add_demo(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
