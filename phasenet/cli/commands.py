"""The ``phasenet`` command: a thin layer over the Python API.

Every subcommand is a function taking parsed arguments; ``main(argv)`` can be
called in-process (tests do) and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys


EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def _add_dataset_options(p, d, unit: str):
    """Options every dataset writer shares (build, synth); ``d`` holds their defaults."""
    from phasenet.physics.normalisation import METHODS

    p.add_argument("--max-index", type=int, default=d.max_index, help="|h|,|k|,|l| <= this (default %(default)s)")
    p.add_argument("--r2-max", type=int, default=d.r2_max,
                   help="keep h²+k²+l² < R2 (50 gives the study's 709 reflections; default: no cut)")
    p.add_argument("--normalisation", "--normalization", choices=METHODS, default=d.normalisation,
                   help="model input normalisation (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="fraction of structures in the test split (default 1/7, the study's 1000/7000)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help=f"{unit} per part, the unit of resumption (default %(default)s)")
    p.add_argument("--compression", choices=["lzf", "gzip", "none"], default="lzf",
                   help="HDF5 compression (default lzf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_build(sub):
    from phasenet.pipeline.build import BuildOptions

    d = BuildOptions()
    p = sub.add_parser("build", help="build an HDF5 dataset from CIF files",
                       description="Build an HDF5 dataset of structure factors from CIF files. "
                       "Interrupted, it resumes when run again with the same arguments.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="CIF files, folders (searched for *.cif) or list files (.txt/.lst/.list)")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    _add_dataset_options(p, d, unit="files")
    p.add_argument("--default-u", type=float, default=d.default_u,
                   help="U_iso (Å²) for atoms without displacement parameters (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the train/test split (default %(default)s)")
    p.add_argument("--no-observations", action="store_true", help="ignore measured reflections")
    p.add_argument("--shard", metavar="I/N", help="build only shard I of N of the sorted inputs "
                   "(for job arrays; join the shards with phasenet merge)")
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from phasenet.pipeline.build import BuildError, BuildOptions, build_dataset

    try:
        options = BuildOptions(
            max_index=args.max_index, r2_max=args.r2_max, normalisation=args.normalisation,
            default_u=args.default_u, test_fraction=args.test_fraction, seed=args.seed,
            read_observations=not args.no_observations,
            compression=None if args.compression == "none" else args.compression,
            workers=args.workers, chunk_size=args.chunk_size)
        from phasenet.pipeline.shards import parse_shard

        summary = build_dataset(args.inputs, args.output, options, overwrite=args.overwrite,
                                progress=False if args.quiet else None,
                                shard=parse_shard(args.shard) if args.shard else None)
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
    from phasenet.io.hdf5 import DatasetError, dataset_info, format_info

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


def _add_synth(sub):
    from phasenet.synth.generate import SynthOptions
    from phasenet.synth.packing import SPACE_GROUPS

    d = SynthOptions()
    p = sub.add_parser("synth", help="generate synthetic crystal structures into a dataset",
                       description="Generate N synthetic molecular crystal structures straight into "
                       "an HDF5 dataset with the schema of phasenet build. Structure i depends only "
                       "on (seed, i); interrupted, a run resumes when started again with the same "
                       "arguments.")
    p.add_argument("-n", type=int, required=True, help="number of structures in the whole run")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    p.add_argument("--seed", type=int, default=d.seed, help="generation and split seed (default %(default)s)")
    p.add_argument("--space-group", action="append", dest="space_groups", metavar="SG",
                   help=f"space group, repeatable (default P-1 and P21/c; known: {', '.join(SPACE_GROUPS)})")
    p.add_argument("--atoms", default=f"{d.atoms[0]}-{d.atoms[1]}", metavar="MIN-MAX",
                   help="non-H atoms in the asymmetric unit (default %(default)s)")
    p.add_argument("--max-edge", type=float, default=d.max_edge, help="longest cell edge, Å (default %(default)s)")
    p.add_argument("--u-iso", type=float, nargs=2, default=list(d.u_iso), metavar=("LO", "HI"),
                   help="U_iso range, Å² (default %(default)s)")
    p.add_argument("--heavy-fraction", type=float, default=d.heavy_fraction,
                   help="expected fraction of non-H atoms from --heavy-elements (default %(default)s)")
    p.add_argument("--heavy-elements", default=",".join(d.heavy_elements),
                   help="comma-separated heavy elements (default %(default)s)")
    p.add_argument("--packing", choices=["dense", "fast"], default="dense",
                   help="dense: grow, then relax with the cell under pressure, ~18 Å³ per non-H "
                   "atom like real organic crystals; fast: growth only, ~25 Å³, about half the "
                   "CPU time (default %(default)s)")
    p.add_argument("--cif-dir", default=None, help="also write every structure as a CIF file here")
    p.add_argument("--shard", default=None, metavar="I/N", help="generate only shard I of N of the run")
    _add_dataset_options(p, d, unit="structures")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from phasenet.pipeline.shards import parse_shard
    from phasenet.synth.generate import PACKINGS, SynthError, SynthOptions, synth_dataset

    try:
        try:
            lo, hi = (int(x) for x in args.atoms.split("-"))
        except ValueError:
            raise ValueError(f"--atoms must look like MIN-MAX (e.g. 8-50), got {args.atoms!r}") from None
        kw = dict(PACKINGS[args.packing])
        if args.space_groups:
            kw["space_groups"] = tuple(args.space_groups)
        options = SynthOptions(
            seed=args.seed, atoms=(lo, hi), max_edge=args.max_edge, u_iso=tuple(args.u_iso),
            heavy_fraction=args.heavy_fraction,
            heavy_elements=tuple(e.strip() for e in args.heavy_elements.split(",") if e.strip()),
            max_index=args.max_index, r2_max=args.r2_max, normalisation=args.normalisation,
            test_fraction=args.test_fraction, workers=args.workers, chunk_size=args.chunk_size,
            compression=None if args.compression == "none" else args.compression, **kw)
        shard = parse_shard(args.shard) if args.shard else (0, 1)
        summary = synth_dataset(args.n, args.output, options, shard=shard, cif_dir=args.cif_dir,
                                overwrite=args.overwrite, progress=False if args.quiet else None)
    except (SynthError, ValueError) as exc:
        print(f"phasenet synth: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.format())
    return EXIT_OK if summary.ok else EXIT_FAILURES

# --- train commands (issue 4) ---


def _add_train(sub):
    p = sub.add_parser("train", help="train a sign network or autoencoder from a TOML config",
                       description="Train a Keras model from a TOML config (see training/). "
                       "Options given here override the config. A config with a [sweep] table "
                       "runs every member, or one with --member.")
    p.add_argument("config", help="TOML config (training/*.toml)")
    p.add_argument("--data", help="HDF5 dataset (overrides data.path)")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--backend", choices=["tensorflow", "jax"], help="Keras backend (overrides hardware.backend)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides run.epochs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.width=100 (repeatable)")
    p.add_argument("--member", type=int, help="sweep: run only member K (0-based)")
    p.add_argument("--list-members", action="store_true", help="sweep: print the members and exit")
    p.add_argument("--compare", action="store_true",
                   help="sweep: only draw the comparison figure of the finished members")
    p.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
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
        print(f"phasenet train: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK

# --- evaluate commands (issue 5) ---


def _add_evaluate(sub):
    from phasenet.evaluation.evaluate import BASE_METHODS, DEFAULT_D_MIN, EvaluateOptions

    d = EvaluateOptions()
    p = sub.add_parser("evaluate", help="score phasing methods against the true structures of a dataset",
                       description="Score phasing methods (true, random, patterson, charge-flipping, "
                       "model:RUN_DIR) against the true phases and atoms of a dataset at several "
                       "resolutions; writes evaluation.csv, summary.md and plots to REPORT_DIR.")
    p.add_argument("dataset", help="HDF5 dataset (phasenet build)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--method", action="append", dest="methods", metavar="METHOD",
                   help=f"repeatable: {', '.join(BASE_METHODS)} or model:RUN_DIR (default: all four)")
    p.add_argument("--d-min", action="append", type=float, dest="d_min", metavar="Å",
                   help=f"repeatable resolution cut (default: {' '.join(map(str, DEFAULT_D_MIN))})")
    p.add_argument("--limit", type=int, default=None, help="first N structures only")
    p.add_argument("--split", choices=["train", "test"], default=None, help="only this split")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default %(default)s)")
    p.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds per structure, method and d_min; overruns are killed and reported "
                   "(default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of random phases and charge flipping")
    p.add_argument("--amplitudes", choices=["calc", "obs"], default=d.amplitudes,
                   help="exact (calc) or measured (obs) amplitudes (default %(default)s)")
    p.add_argument("--reflections", choices=["dataset", "sphere"], default=d.reflections,
                   help="the dataset's reflections, or a complete sphere recomputed from the atoms "
                   "(default %(default)s)")
    p.add_argument("--cf-time-limit", type=float, default=d.charge_flipping.time_limit,
                   help="charge flipping: seconds per run (default %(default)s)")
    p.add_argument("--cf-attempts", type=int, default=d.charge_flipping.max_attempts,
                   help="charge flipping: attempts to reach a phase transition (default %(default)s)")
    p.add_argument("--ha-recycling-cycles", type=int, default=d.heavy_atom.recycling.cycles,
                   help="heavy-atom method: E-Fourier recycling cycles, 0 = heavy-atom phases as they come "
                   "(default %(default)s)")
    p.add_argument("--no-atom-recovery", action="store_true", help="skip the map-peak atom metric (faster)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from dataclasses import replace

    from phasenet.evaluation.evaluate import (BASE_METHODS, DEFAULT_D_MIN, EvaluateOptions, EvaluationError,
                                   evaluate_dataset, summary_markdown)

    try:
        d = EvaluateOptions()
        options = EvaluateOptions(
            methods=tuple(args.methods or BASE_METHODS), d_min=tuple(args.d_min or DEFAULT_D_MIN),
            limit=args.limit, split=args.split, workers=args.workers, timeout=args.timeout, seed=args.seed,
            amplitudes=args.amplitudes, reflections=args.reflections, atom_recovery=not args.no_atom_recovery,
            charge_flipping=replace(d.charge_flipping, time_limit=args.cf_time_limit,
                                    max_attempts=args.cf_attempts),
            heavy_atom=replace(d.heavy_atom, recycling=replace(d.heavy_atom.recycling,
                                                               cycles=args.ha_recycling_cycles)))
        result = evaluate_dataset(args.dataset, args.output, options, progress=False if args.quiet else None)
    except (EvaluationError, ValueError, OSError) as exc:
        print(f"phasenet evaluate: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
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


# --- slurm / shard commands (issue 6) ---


def _add_merge(sub):
    p = sub.add_parser("merge", help="merge the shards of a sharded build into one dataset",
                       description="Merge shard datasets (phasenet build/synth --shard I/N) into one "
                       "dataset equal to a single-process build: checks that they form one complete "
                       "set with identical options, concatenates them in shard order (a streamed copy "
                       "of the compressed chunks) and writes OUT through a temporary file.")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="shard files, or folders of *.h5 shards")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    from phasenet.pipeline.shards import ShardError, merge_shards

    try:
        result = merge_shards(args.shards, args.output, overwrite=args.overwrite)
    except (ShardError, OSError) as exc:
        print(f"phasenet merge: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"merged {result['n_shards']} shards into {args.output}: {result['n_structures']} structures "
          f"from {result['n_inputs']} inputs, {result['n_failures']} failures")
    return EXIT_FAILURES if result["n_failures"] else EXIT_OK


def _forward_argv(parser, ns, skip=()) -> list[str]:
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


def _slurm_site_options(p, kind):
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
    g.add_argument("--scripts", help="folder of the sbatch scripts and site.sh (default: the repository's slurm/)")
    g.add_argument("--state", help="pipeline state file (default: next to the output)")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")


_SLURM_OWN = ("partition", "account", "qos", "time", "cpus", "mem_per_cpu", "gpus", "signal_seconds",
              "sbatch_arg", "log_dir", "scripts", "state", "dry_run", "shards", "shard_dir",
              "slurm_command", "func", "command", "_template")


def _slurm_site(args, kind):
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


def _slurm_forwarding(slurm_sub, name, add_template, kind, help_text, description):
    tmp = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_template(tmp)
    template = tmp.choices[name]
    p = slurm_sub.add_parser(kind, parents=[template], add_help=False, conflict_handler="resolve",
                             help=help_text, description=description)
    for action in p._actions:  # set by the job itself
        if action.dest in ("shard", "member", "list_members", "compare"):
            action.help = argparse.SUPPRESS
    _slurm_site_options(p, kind)
    p.set_defaults(_template=template)
    return p


def _add_slurm(sub):
    p = sub.add_parser("slurm", help="run phasenet on a Slurm cluster (sbatch scripts in slurm/)",
                       description="Fill in and submit the sbatch scripts of slurm/ with the same "
                       "options as the local commands, then follow the pipeline from its state file.")
    ss = p.add_subparsers(dest="slurm_command", required=True)
    b = _slurm_forwarding(ss, "build", _add_build, "build", "sharded build: job array + merge",
                          "Submit `phasenet build` as a job array of --shards tasks (task I builds "
                          "shard I/N into OUT.h5.shards/) and a merge job that runs after all of them "
                          "succeed (afterok). Writes OUT.h5.slurm.json for status and rerun-failed.")
    b.add_argument("--shards", type=int, required=True, help="number of shards (array tasks)")
    b.add_argument("--shard-dir", help="folder for the shards (default OUT.h5.shards)")
    b.set_defaults(func=cmd_slurm_sharded)
    s = _slurm_forwarding(ss, "synth", _add_synth, "synth", "sharded synthesis: job array + merge",
                          "Submit `phasenet synth` as a job array of --shards tasks and a merge job "
                          "(afterok). Writes OUT.h5.slurm.json for status and rerun-failed.")
    s.add_argument("--shards", type=int, required=True, help="number of shards (array tasks)")
    s.add_argument("--shard-dir", help="folder for the shards (default OUT.h5.shards)")
    s.set_defaults(func=cmd_slurm_sharded)
    t = _slurm_forwarding(ss, "train", _add_train, "train", "one training job (one node, GPUs)",
                          "Submit `phasenet train` as one job on one node with --gpus GPUs. It "
                          "requeues itself before its time limit and resumes from its checkpoint.")
    t.set_defaults(func=cmd_slurm_train)
    w = _slurm_forwarding(ss, "train", _add_train, "sweep", "a sweep as a job array over members",
                          "Submit every member of a sweep config as one array task "
                          "(`phasenet train CONFIG --member K`).")
    w.set_defaults(func=cmd_slurm_train)
    e = _slurm_forwarding(ss, "evaluate", _add_evaluate, "evaluate", "an evaluation job",
                          "Submit `phasenet evaluate` as one job.")
    e.set_defaults(func=cmd_slurm_evaluate)
    st = ss.add_parser("status", help="state of every job and array task of a pipeline")
    st.add_argument("state", help="state file written at submission (e.g. OUT.h5.slurm.json)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_slurm_status)
    r = ss.add_parser("rerun-failed", help="resubmit only the failed shards/members (and a new merge)")
    r.add_argument("state", help="state file written at submission")
    r.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")
    r.set_defaults(func=cmd_slurm_rerun)


def _slurm_error(args, exc) -> int:
    print(f"phasenet slurm {args.slurm_command}: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _print_submitted(state, dry_run):
    for job in state["jobs"]:
        what = f"{job.role} job {job.job_id}" + (f" (array {job.array})" if job.array is not None else "")
        print(("would submit " if dry_run else "submitted ") + what
              + (f" after {job.dependency}" if job.dependency else "") + f"; log {job.log}")
    if not dry_run:
        print(f"state: {state['state_path']}\nfollow it with: phasenet slurm status {state['state_path']}")


def cmd_slurm_sharded(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_sharded

    kind = args.slurm_command
    try:
        folder, site = _slurm_site(args, kind)
        forward = _forward_argv(args._template, args, skip=_SLURM_OWN + ("output", "overwrite", "shard"))
        if getattr(args, "shard", None):
            raise SlurmError("--shard is set per array task; give --shards N instead")
        if kind == "build":
            from phasenet.pipeline.build import BuildError, BuildOptions, collect_inputs

            try:
                BuildOptions(max_index=args.max_index, r2_max=args.r2_max, normalisation=args.normalisation,
                             default_u=args.default_u, test_fraction=args.test_fraction, seed=args.seed,
                             chunk_size=args.chunk_size)
                n_inputs = len(collect_inputs(args.inputs))
            except (BuildError, ValueError) as exc:
                raise SlurmError(str(exc)) from None
            if n_inputs == 0:
                raise SlurmError("no input files (folders are searched for *.cif)")
            if args.shards > n_inputs:
                raise SlurmError(f"--shards {args.shards} > {n_inputs} input files; use at most {n_inputs}")
        elif args.shards > args.n:
            raise SlurmError(f"--shards {args.shards} > -n {args.n} structures")
        state = submit_sharded(kind, forward, Path(args.output), args.shards, site=site, slurm_dir=folder,
                               shard_dir=args.shard_dir, overwrite=args.overwrite, dry_run=args.dry_run,
                               state_path=Path(args.state) if args.state else None)
    except SlurmError as exc:
        return _slurm_error(args, exc)
    _print_submitted(state, args.dry_run)
    return EXIT_OK


def cmd_slurm_train(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_single

    kind = args.slurm_command
    try:
        if args.member is not None or args.list_members or args.compare:
            raise SlurmError("--member/--list-members/--compare are for local use; "
                             "phasenet slurm sweep submits one array task per member")
        folder, site = _slurm_site(args, kind)
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
        forward = _forward_argv(args._template, args, skip=_SLURM_OWN)
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
        return _slurm_error(args, exc)
    _print_submitted(state, args.dry_run)
    return EXIT_OK


def cmd_slurm_evaluate(args) -> int:
    from pathlib import Path

    from phasenet.pipeline.slurm import SlurmError, submit_single

    try:
        folder, site = _slurm_site(args, "evaluate")
        if not Path(args.dataset).is_file():
            raise SlurmError(f"{args.dataset}: dataset not found")
        out = Path(args.output).resolve()
        args.output = str(out)
        forward = _forward_argv(args._template, args, skip=_SLURM_OWN)
        state_path = Path(args.state) if args.state else out.with_name(out.name + ".slurm.json")
        state = submit_single("evaluate", forward, site=site, slurm_dir=folder, state_path=state_path,
                              dry_run=args.dry_run, extra_state={"output": str(out)})
    except SlurmError as exc:
        return _slurm_error(args, exc)
    _print_submitted(state, args.dry_run)
    return EXIT_OK


def cmd_slurm_status(args) -> int:
    from phasenet.pipeline.slurm import SlurmError, format_status, pipeline_status, read_state

    try:
        status = pipeline_status(read_state(args.state))
    except SlurmError as exc:
        return _slurm_error(args, exc)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_FAILURES if status["failed"] else EXIT_OK


def cmd_slurm_rerun(args) -> int:
    from phasenet.pipeline.slurm import SlurmError, rerun_failed

    try:
        state, new = rerun_failed(args.state, dry_run=args.dry_run)
    except SlurmError as exc:
        return _slurm_error(args, exc)
    if not new:
        print("nothing failed: nothing to rerun")
        return EXIT_OK
    for job in new:
        print(("would submit " if args.dry_run else "submitted ") + f"{job.role} job {job.job_id}"
              + (f" (array {job.array})" if job.array is not None else "")
              + (f" after {job.dependency}" if job.dependency else "") + f"; log {job.log}")
    return EXIT_OK


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the main job on an embedded default")
    p.add_argument("--out", default="demo-output", help="folder for the demo's files (default %(default)s)")
    p.add_argument("-n", type=int, default=200, help="structures to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="skip training (and the model in the evaluation)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from phasenet.pipeline.demo import run_demo

    return run_demo(args.out, n=args.n, seed=args.seed, train=not args.no_train,
                    evaluate=not args.no_evaluate)


def build_parser() -> argparse.ArgumentParser:
    from phasenet.version import __version__

    parser = argparse.ArgumentParser(prog="phasenet", description="Machine learning for the phase problem.")
    parser.add_argument("--version", action="version", version=f"phasenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_info(sub)
    _add_synth(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_merge(sub)
    _add_slurm(sub)
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
