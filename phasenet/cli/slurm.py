"""``phasenet slurm``: the local commands as Slurm jobs (the sbatch scripts of ``slurm/``),
and the state of a submitted pipeline.

``phasenet slurm build|synth|train|sweep|evaluate`` take the options of the local
command (they are forwarded to the job) plus the Slurm site options; ``status`` and
``rerun-failed`` read the state file written at submission.
"""

from __future__ import annotations

import argparse
import json
import sys

from phasenet.cli import build, evaluate, synth, train
from phasenet.cli.common import EXIT_FAILURES, EXIT_OK, command_parser, fail

NAME = "slurm"
HELP = "run phasenet on a Slurm cluster (sbatch scripts in slurm/)"
DESCRIPTION = ("Fill in and submit the sbatch scripts of slurm/ with the same "
               "options as the local commands, then follow the pipeline from its state file.")


def forward_argv(parser, ns, skip=()) -> list[str]:
    """The command line that gives ``ns`` with ``parser``: positionals, then every option whose
    value differs from its default (what `phasenet slurm` passes on to the job)."""
    pos, opts = [], []
    for a in parser._actions:
        if a.dest in skip or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        value = getattr(ns, a.dest, a.default)
        if not a.option_strings:
            pos += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        if value == a.default or value is None:
            continue
        flag = next((s for s in a.option_strings if s.startswith("--")), a.option_strings[0])
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            opts.append(flag)
        elif isinstance(a, argparse._AppendAction):
            for v in value:
                opts += [flag] + ([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)])
        elif isinstance(value, (list, tuple)):
            opts += [flag] + [str(v) for v in value]
        else:
            opts += [flag, str(value)]
    return pos + opts


def add_site_options(p, kind) -> None:
    g = p.add_argument_group("Slurm (defaults: slurm/site.sh, then PHASENET_* environment variables)")
    g.add_argument("--partition", help="partition (sbatch -p)")
    g.add_argument("--account", help="account to charge (sbatch -A)")
    g.add_argument("--qos", help="quality of service")
    g.add_argument("--time", help="time limit per job or array task, e.g. 02:00:00")
    g.add_argument("--cpus", type=int, help="cores per job or array task")
    g.add_argument("--mem-per-cpu", help="memory per core, e.g. 4G")
    if kind in ("train", "sweep"):
        g.add_argument("--gpus", type=int, help="GPUs per job (0: CPU only)")
    g.add_argument("--signal-seconds", type=int,
                   help="USR1 this long before the time limit: stop, requeue, resume (default 300)")
    g.add_argument("--sbatch-arg", action="append", default=[], metavar="OPT",
                   help="any other sbatch option, e.g. --sbatch-arg=--constraint=a100 (repeatable)")
    g.add_argument("--log-dir", help="folder for job logs (default slurm-logs)")
    g.add_argument("--scripts", help="folder of the sbatch scripts and site.sh (default: phasenet's "
                   "slurm/: the repository's, or the copy installed with phasenet)")
    g.add_argument("--state", help="pipeline state file (default: next to the output)")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")


#: Options of `phasenet slurm` itself, never forwarded to the job.
SLURM_OWN = ("partition", "account", "qos", "time", "cpus", "mem_per_cpu", "gpus", "signal_seconds",
             "sbatch_arg", "log_dir", "scripts", "state", "dry_run", "shards", "shard_dir",
             "slurm_command", "command", "template")


def site_settings(args, kind):
    import shlex

    from phasenet.pipeline.slurm import load_site, scripts_dir

    folder = scripts_dir(args.scripts)
    key = {"build": "BUILD", "synth": "BUILD", "train": "TRAIN", "sweep": "TRAIN", "evaluate": "EVALUATE"}[kind]
    over = {"PARTITION": args.partition, "ACCOUNT": args.account, "QOS": args.qos,
            f"TIME_{key}": args.time, f"CPUS_{key}": args.cpus, "MEM_PER_CPU": args.mem_per_cpu,
            "GPUS": getattr(args, "gpus", None), "SIGNAL_SECONDS": args.signal_seconds,
            "LOG_DIR": args.log_dir}
    if args.partition and kind in ("train", "sweep"):
        over["GPU_PARTITION"] = args.partition
    site = load_site(folder, over)
    if args.sbatch_arg:
        site["SBATCH_EXTRA"] = " ".join(filter(None, [site.get("SBATCH_EXTRA", ""),
                                                     shlex.join(args.sbatch_arg)]))
    return folder, site


def add_forwarding(slurm_sub, module, kind, help_text, description):
    """``phasenet slurm KIND``: the options of the local command ``module`` plus the site options."""
    template = command_parser(module)
    p = slurm_sub.add_parser(kind, parents=[template], add_help=False, conflict_handler="resolve",
                             help=help_text, description=description)
    for action in p._actions:  # set by the job itself
        if action.dest in ("shard", "member", "list_members", "compare"):
            action.help = argparse.SUPPRESS
    add_site_options(p, kind)
    p.set_defaults(template=template)
    return p


def add_arguments(parser) -> None:
    ss = parser.add_subparsers(dest="slurm_command", required=True)
    b = add_forwarding(ss, build, "build", "sharded build: job array + merge",
                       "Submit `phasenet build` as a job array of --shards tasks (task I builds "
                       "shard I/N into OUT.h5.shards/) and a merge job that runs after all of them "
                       "succeed (afterok). Writes OUT.h5.slurm.json for status and rerun-failed.")
    b.add_argument("--shards", type=int, required=True, help="number of shards (array tasks)")
    b.add_argument("--shard-dir", help="folder for the shards (default OUT.h5.shards)")
    b.set_defaults(execute=execute_sharded)
    s = add_forwarding(ss, synth, "synth", "sharded synthesis: job array + merge",
                       "Submit `phasenet synth` as a job array of --shards tasks and a merge job "
                       "(afterok). Writes OUT.h5.slurm.json for status and rerun-failed.")
    s.add_argument("--shards", type=int, required=True, help="number of shards (array tasks)")
    s.add_argument("--shard-dir", help="folder for the shards (default OUT.h5.shards)")
    s.set_defaults(execute=execute_sharded)
    t = add_forwarding(ss, train, "train", "one training job (one node, GPUs)",
                       "Submit `phasenet train` as one job on one node with --gpus GPUs. It "
                       "requeues itself before its time limit and resumes from its checkpoint.")
    t.set_defaults(execute=execute_train)
    w = add_forwarding(ss, train, "sweep", "a sweep as a job array over members",
                       "Submit every member of a sweep config as one array task "
                       "(`phasenet train CONFIG --member K`).")
    w.set_defaults(execute=execute_train)
    e = add_forwarding(ss, evaluate, "evaluate", "an evaluation job", "Submit `phasenet evaluate` as one job.")
    e.set_defaults(execute=execute_evaluate)
    st = ss.add_parser("status", help="state of every job and array task of a pipeline")
    st.add_argument("state", help="state file written at submission (e.g. OUT.h5.slurm.json)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(execute=execute_status)
    r = ss.add_parser("rerun-failed", help="resubmit only the failed shards/members (and a new merge)")
    r.add_argument("state", help="state file written at submission")
    r.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")
    r.set_defaults(execute=execute_rerun)


def slurm_error(args, exc) -> int:
    return fail(f"{NAME} {args.slurm_command}", exc)


def print_submitted(state, dry_run) -> None:
    for job in state["jobs"]:
        what = f"{job.role} job {job.job_id}" + (f" (array {job.array})" if job.array is not None else "")
        print(("would submit " if dry_run else "submitted ") + what
              + (f" after {job.dependency}" if job.dependency else "") + f"; log {job.log}")
    if not dry_run:
        print(f"state: {state['state_path']}\nfollow it with: phasenet slurm status {state['state_path']}")


def execute_sharded(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_sharded

    kind = args.slurm_command
    try:
        folder, site = site_settings(args, kind)
        if getattr(args, "shard", None):
            raise SlurmError("--shard is set per array task; give --shards N instead")
        if args.recipe:  # the job reads the same file, wherever it runs from
            from phasenet.cli.common import find_recipe

            try:
                args.recipe = str(find_recipe(args.recipe).resolve())
            except ValueError as exc:
                raise SlurmError(str(exc)) from None
        forward = forward_argv(args.template, args, skip=SLURM_OWN + ("output", "overwrite", "shard"))
        if kind == "build":
            from phasenet.pipeline.build import BuildError, collect_inputs

            try:
                inputs, output, _, missing = build.resolve(args)
                if missing:
                    raise SlurmError(f"the following arguments are required: {', '.join(missing)} "
                                     "(on the command line or in the --recipe)")
                n_inputs = len(collect_inputs(inputs))
            except (BuildError, ValueError) as exc:
                raise SlurmError(str(exc)) from None
            if n_inputs == 0:
                raise SlurmError("no input files (folders are searched for *.cif)")
            if args.shards > n_inputs:
                raise SlurmError(f"--shards {args.shards} > {n_inputs} input files; use at most {n_inputs}")
        else:
            try:
                n, output, _, _, missing = synth.resolve(args)
            except ValueError as exc:
                raise SlurmError(str(exc)) from None
            if missing:
                raise SlurmError(f"the following arguments are required: {', '.join(missing)} "
                                 "(on the command line or in the --recipe)")
            if args.shards > n:
                raise SlurmError(f"--shards {args.shards} > -n {n} structures")
        state = submit_sharded(kind, forward, Path(output), args.shards, site=site, slurm_dir=folder,
                               shard_dir=args.shard_dir, overwrite=args.overwrite, dry_run=args.dry_run,
                               state_path=Path(args.state) if args.state else None)
    except SlurmError as exc:
        return slurm_error(args, exc)
    print_submitted(state, args.dry_run)
    return EXIT_OK


def execute_train(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_single

    kind = args.slurm_command
    try:
        if args.member is not None or args.list_members or args.compare:
            raise SlurmError("--member/--list-members/--compare are for local use; "
                             "phasenet slurm sweep submits one array task per member")
        folder, site = site_settings(args, kind)
        from phasenet.training import sweep
        from phasenet.training.config import ConfigError, load_config

        overrides = list(args.overrides) + ([("hardware.backend", args.backend)] if args.backend else [])
        try:
            cfg = load_config(args.config, overrides)
            members = sweep.expand(cfg)
        except ConfigError as exc:
            raise SlurmError(str(exc)) from None
        out = Path(args.out or f"runs/{cfg.run.name}").resolve()
        args.out = str(out)  # the job must find the same run folder after a requeue
        forward = forward_argv(args.template, args, skip=SLURM_OWN)
        array = None
        if kind == "sweep":
            if not cfg.sweep:
                raise SlurmError(f"{args.config} has no [sweep] table; use phasenet slurm train")
            array = f"0-{len(members) - 1}"
        elif cfg.sweep:
            raise SlurmError(f"{args.config} is a sweep of {len(members)} members; use phasenet slurm sweep")
        state_path = Path(args.state) if args.state else out.with_name(out.name + ".slurm.json")
        if not args.dry_run:
            out.parent.mkdir(parents=True, exist_ok=True)
        state = submit_single(kind, forward, site=site, slurm_dir=folder, state_path=state_path,
                              array=array, dry_run=args.dry_run,
                              extra_state={"out": str(out), "members": [m.label for m in members]})
    except SlurmError as exc:
        return slurm_error(args, exc)
    print_submitted(state, args.dry_run)
    return EXIT_OK


def execute_evaluate(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_single

    try:
        folder, site = site_settings(args, "evaluate")
        if not Path(args.dataset).is_file():
            raise SlurmError(f"{args.dataset}: dataset not found")
        out = Path(args.output).resolve()
        args.output = str(out)
        forward = forward_argv(args.template, args, skip=SLURM_OWN)
        state_path = Path(args.state) if args.state else out.with_name(out.name + ".slurm.json")
        state = submit_single("evaluate", forward, site=site, slurm_dir=folder, state_path=state_path,
                              dry_run=args.dry_run, extra_state={"output": str(out)})
    except SlurmError as exc:
        return slurm_error(args, exc)
    print_submitted(state, args.dry_run)
    return EXIT_OK


def execute_status(args) -> int:
    from phasenet.pipeline.slurm import SlurmError, format_status, pipeline_status, read_state

    try:
        status = pipeline_status(read_state(args.state))
    except SlurmError as exc:
        return slurm_error(args, exc)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_FAILURES if status["failed"] else EXIT_OK


def execute_rerun(args) -> int:
    from phasenet.pipeline.slurm import SlurmError, rerun_failed

    try:
        state, new = rerun_failed(args.state, dry_run=args.dry_run)
    except SlurmError as exc:
        return slurm_error(args, exc)
    if not new:
        print("nothing failed: nothing to rerun")
        return EXIT_OK
    for job in new:
        print(("would submit " if args.dry_run else "submitted ") + f"{job.role} job {job.job_id}"
              + (f" (array {job.array})" if job.array is not None else "")
              + (f" after {job.dependency}" if job.dependency else "") + f"; log {job.log}")
    return EXIT_OK


def execute(args) -> int:
    """Run the subcommand chosen (its ``execute_*`` function, set by its parser)."""
    return args.execute(args)


def run(args=None) -> int:
    """``phasenet slurm ARGS``; ``args``: the argument list (default ``sys.argv[1:]``)."""
    return execute(command_parser(sys.modules[__name__]).parse_args(args))
