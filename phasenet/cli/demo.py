"""``phasenet demo``: the main job on an embedded default (synthesise, build, train, evaluate)."""

from __future__ import annotations

import sys

from phasenet.cli.common import Default, command_parser

NAME = "demo"
HELP = "run the main job on an embedded default"
DESCRIPTION = None


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo-output", help="folder for the demo's files (default %(default)s)")
    parser.add_argument("-n", type=int, default=Default(recipe_n),
                        help="structures to generate (default %(default)s, from datasets/demo.toml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="skip training (and the model in the evaluation)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluation")
    parser.set_defaults(execute=execute)


def recipe_n() -> int:
    from phasenet.pipeline.demo import demo_recipe

    return demo_recipe().get("n")


def execute(args) -> int:
    from phasenet.pipeline.demo import run_demo

    return run_demo(args.out, n=None if isinstance(args.n, Default) else args.n, seed=args.seed, train=not args.no_train,
                    evaluate=not args.no_evaluate)


def run(args=None) -> int:
    """``phasenet demo ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
