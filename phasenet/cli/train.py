"""``phasenet train``: a sign network or autoencoder from a TOML config (``training/``)."""

from __future__ import annotations

import sys

from phasenet.cli.common import EXIT_ERROR, EXIT_OK, command_parser, fail

NAME = "train"
HELP = "train a sign network or autoencoder from a TOML config"
DESCRIPTION = ("Train a Keras model from a TOML config (see training/). "
               "Options given here override the config. A config with a [sweep] table "
               "runs every member, or one with --member.")


def add_arguments(parser) -> None:
    parser.add_argument("config", help="TOML config (training/*.toml)")
    parser.add_argument("--data", help="HDF5 dataset (overrides data.path)")
    parser.add_argument("--out", help="run folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--backend", choices=["tensorflow", "jax"],
                        help="Keras backend (overrides hardware.backend)")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides run.epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set model.width=100 (repeatable)")
    parser.add_argument("--member", type=int, help="sweep: run only member K (0-based)")
    parser.add_argument("--list-members", action="store_true", help="sweep: print the members and exit")
    parser.add_argument("--compare", action="store_true",
                        help="sweep: only draw the comparison figure of the finished members")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    parser.set_defaults(execute=execute)


def execute(args) -> int:
    from phasenet.io.hdf5 import DatasetError
    from phasenet.training.config import ConfigError, load_config
    from phasenet.training.run import RunError, select_backend

    try:
        overrides = list(args.overrides)
        if args.backend:
            overrides.append(("hardware.backend", args.backend))
        cfg = load_config(args.config, overrides)
        from phasenet.training import sweep

        if args.list_members:
            for m in sweep.expand(cfg):
                print(f"{m.index}\t{m.folder or '.'}\t{m.label}")
            return EXIT_OK
        out = args.out or f"runs/{cfg.run.name}"
        if args.compare:
            return EXIT_OK if sweep.compare(cfg, out) else EXIT_ERROR
        select_backend(cfg.hardware.backend)  # before Keras is imported
        sweep.run_sweep(cfg, data=args.data, out=out, member=args.member, resume=args.resume,
                        epochs=args.epochs, verbose=2 if args.quiet else None)
    except (ConfigError, DatasetError, RunError) as exc:
        return fail(NAME, exc)
    return EXIT_OK


def run(args=None) -> int:
    """``phasenet train ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
