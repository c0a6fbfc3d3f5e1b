"""``phasenet evaluate``: phasing methods scored against the true structures of a dataset."""

from __future__ import annotations

import json
import sys

from phasenet.cli.common import EXIT_FAILURES, EXIT_OK, add_options, command_parser, fail, given_options
from phasenet.evaluation.options import EvaluateOptions, EvaluationError

NAME = "evaluate"
HELP = "score phasing methods against the true structures of a dataset"
DESCRIPTION = ("Score phasing methods (true, random, patterson, charge-flipping, "
               "model:RUN_DIR) against the true phases and atoms of a dataset at several "
               "resolutions; writes evaluation.csv, summary.md and plots to REPORT_DIR.")


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="HDF5 dataset (phasenet build)")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="report folder")
    add_options(parser, EvaluateOptions)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(execute=execute)


def execute(args) -> int:
    from phasenet.evaluation.evaluate import evaluate_dataset, summary_markdown

    try:
        options = EvaluateOptions.from_dict(given_options(EvaluateOptions, args))
        result = evaluate_dataset(args.dataset, args.output, options, progress=False if args.quiet else None)
    except (EvaluationError, ValueError, OSError) as exc:
        return fail(NAME, exc)
    if args.json:
        print(json.dumps({"summary": result.summary.to_dict(orient="records"), "files": result.files},
                         indent=2, default=float))
    else:
        print(summary_markdown(result.summary))
        print("wrote " + ", ".join(result.files.values()))
    if not result.ok:
        bad = result.rows[result.rows.status.isin(["failed", "timeout"])]
        print(f"{len(bad)} task(s) failed or timed out; see {result.files['rows']}", file=sys.stderr)
        for r in bad.head(10).itertuples():
            print(f"  {r.id} {r.method} d_min={r.d_min:g}: {r.status}: {r.reason}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILURES


def run(args=None) -> int:
    """``phasenet evaluate ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
