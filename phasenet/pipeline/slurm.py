"""Submit the sbatch scripts in ``slurm/`` and follow the pipelines they make.

``phasenet slurm build|synth|train|sweep|evaluate`` fill in and submit the plain sbatch
scripts of the repository's ``slurm/`` folder (which a cluster user can also submit by
hand), with the site settings of ``slurm/site.sh`` (overridden by the environment, then
by options). Each submission writes a small JSON *state file* (``OUT.h5.slurm.json`` for
a build) holding the job ids, the log file patterns and the sbatch command lines;
``phasenet slurm status STATE`` reports every job and array task from it (``scontrol``
for jobs Slurm still remembers, ``sacct`` for older ones), and ``phasenet slurm
rerun-failed STATE`` resubmits only what failed: the missing shards and a new merge, or
the failed sweep members, or a failed training/evaluation job (training with ``--resume``).

Nothing here imports Slurm: it runs ``sbatch``, ``scontrol``, ``sacct`` and ``scancel``
as subprocesses, so the same code works on a login node and against the test cluster
(``slurm/testcluster.sh``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from phasenet.pipeline.shards import shard_file_name

SCRIPTS = {"build": "build-array.sbatch", "merge": "merge.sbatch", "train": "train.sbatch",
           "sweep": "sweep-array.sbatch", "evaluate": "evaluate.sbatch"}
JOB_NAMES = {"build": "phasenet-build", "synth": "phasenet-synth", "merge": "phasenet-merge",
             "train": "phasenet-train", "sweep": "phasenet-sweep", "evaluate": "phasenet-evaluate"}
#: Job states after which a job will not run again by itself.
FAILED_STATES = {"FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}
DONE_STATES = {"COMPLETED"}
#: What `phasenet slurm` reads from site.sh (and the environment).
SITE_KEYS = ("PARTITION", "GPU_PARTITION", "ACCOUNT", "QOS", "GPUS", "GPU_TYPE", "CPUS_BUILD",
             "CPUS_TRAIN", "CPUS_EVALUATE", "MEM_PER_CPU", "TIME_BUILD", "TIME_MERGE", "TIME_TRAIN",
             "TIME_EVALUATE", "SIGNAL_SECONDS", "SBATCH_EXTRA", "LOG_DIR", "VENV")
STATE_VERSION = 1


class SlurmError(RuntimeError):
    """A submission or query that cannot go on (the message says why)."""


# --- site settings --------------------------------------------------------------------------


def scripts_dir(explicit: str | Path | None = None) -> Path:
    """The folder with the sbatch scripts and site.sh: ``explicit``, else $PHASENET_SLURM_DIR,
    else phasenet's own ``slurm/`` (the repository's, or the copy installed with phasenet)."""
    from phasenet.resources import resource_dir

    for c in (explicit, os.environ.get("PHASENET_SLURM_DIR")):
        if c:
            p = Path(c).resolve()
            if not (p / "site.sh").is_file():
                raise SlurmError(f"{p}: no site.sh there (the folder of phasenet's sbatch scripts)")
            return p
    try:
        p = resource_dir("slurm")
    except FileNotFoundError as exc:
        raise SlurmError(f"{exc}; or pass --scripts DIR or set PHASENET_SLURM_DIR") from None
    if not (p / "site.sh").is_file():
        raise SlurmError(f"{p}: no site.sh there (the folder of phasenet's sbatch scripts)")
    return p


def load_site(slurm_dir: Path, overrides: dict | None = None) -> dict[str, str]:
    """Site settings: site.sh's values, overridden by PHASENET_* in the environment (site.sh
    keeps those), then by ``overrides`` (non-None values, keys as in :data:`SITE_KEYS`)."""
    site_sh = slurm_dir / "site.sh"
    script = 'source "$1" >/dev/null || exit 3; for v in ${!PHASENET_@}; do printf "%s=%s\\0" "$v" "${!v}"; done'
    proc = subprocess.run(["bash", "-c", script, "_", str(site_sh)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"{site_sh}: could not be read by bash: {proc.stderr.strip()}")
    site = {}
    for item in proc.stdout.split("\0"):
        if "=" in item:
            k, v = item.split("=", 1)
            if k.startswith("PHASENET_") and k[9:] in SITE_KEYS:
                site[k[9:]] = v
    for k, v in (overrides or {}).items():
        if v is not None:
            site[k] = str(v)
    return site


def _site_int(site: dict, key: str, hint: str) -> int:
    """An integer site setting, or a SlurmError naming the key."""
    value = site.get(key) or 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SlurmError(f"site setting {key}={value!r} must be an integer ({hint})") from None


def sbatch_options(site: dict, kind: str) -> list[str]:
    """sbatch options for a job of ``kind`` (build, merge, train, sweep, evaluate)."""
    gpu_job = kind in ("train", "sweep")
    part = (site.get("GPU_PARTITION") or site.get("PARTITION")) if gpu_job else site.get("PARTITION")
    key = {"build": "BUILD", "synth": "BUILD", "merge": "MERGE", "train": "TRAIN", "sweep": "TRAIN",
           "evaluate": "EVALUATE"}[kind]
    opts = []
    if part:
        opts.append(f"--partition={part}")
    if site.get("ACCOUNT"):
        opts.append(f"--account={site['ACCOUNT']}")
    if site.get("QOS"):
        opts.append(f"--qos={site['QOS']}")
    cpus = "1" if kind == "merge" else site.get(f"CPUS_{key}")
    if cpus:
        opts.append(f"--cpus-per-task={cpus}")
    if site.get("MEM_PER_CPU"):
        opts.append(f"--mem-per-cpu={site['MEM_PER_CPU']}")
    if site.get(f"TIME_{key}"):
        opts.append(f"--time={site[f'TIME_{key}']}")
    if gpu_job:
        n = _site_int(site, "GPUS", "put the GPU type in GPU_TYPE")
        gpu_type = site.get("GPU_TYPE")
        opts.append(f"--gpus-per-node={gpu_type + ':' if gpu_type and n else ''}{n}")
    if site.get("SIGNAL_SECONDS"):
        opts.append(f"--signal=B:USR1@{_site_int(site, 'SIGNAL_SECONDS', 'seconds before the time limit')}")
    opts += shlex.split(site.get("SBATCH_EXTRA") or "")
    return opts


# --- jobs and state -------------------------------------------------------------------------


@dataclass
class Job:
    """One submitted sbatch job (an array counts as one job)."""

    role: str                      # shards, merge, train, sweep, evaluate
    script: str                    # absolute path of the sbatch script
    args: list[str]                # the script's arguments
    options: list[str]             # sbatch options except --array/--dependency
    log: str                       # absolute log pattern (%x %A %a %j)
    array: str | None = None       # e.g. "0-15" or "1,3"
    dependency: str | None = None  # e.g. "afterok:123"
    job_id: str | None = None
    superseded: bool = False       # replaced by a rerun (old merge cancelled)
    env: dict = field(default_factory=dict)

    def command(self) -> list[str]:
        cmd = ["sbatch", "--parsable", *self.options, f"--output={self.log}"]
        if self.array is not None:
            cmd.append(f"--array={self.array}")
        if self.dependency:
            cmd.append(f"--dependency={self.dependency}")
        return cmd + [self.script, *self.args]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("role", "script", "args", "options", "log", "array",
                                               "dependency", "job_id", "superseded", "env")}


def _run(cmd: list[str], env: dict | None = None, check=True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: this needs a Slurm login node (or slurm/testcluster.sh)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer within 120 s") from None
    if check and proc.returncode != 0:
        raise SlurmError(f"{shlex.join(cmd[:3])} ... failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def submit(job: Job, *, dry_run: bool = False) -> str:
    """Submit ``job`` with sbatch (or, dry, print its command line); returns the job id."""
    cmd = job.command()
    if dry_run:
        print(shlex.join(cmd))
        job.job_id = f"<{job.role} job id>"
        return job.job_id
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **job.env)
    proc = _run(cmd, env)
    job.job_id = proc.stdout.strip().split(";")[0]
    if not job.job_id.isdigit():
        raise SlurmError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
    return job.job_id


def write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def read_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlurmError(f"{path}: state file not found (written by phasenet slurm build/train/...)") from None
    except json.JSONDecodeError as exc:
        raise SlurmError(f"{path}: not a phasenet slurm state file ({exc})") from None
    if not isinstance(state, dict) or "jobs" not in state or "kind" not in state:
        raise SlurmError(f"{path}: not a phasenet slurm state file (no kind/jobs)")
    state["jobs"] = [Job(**j) for j in state["jobs"]]
    return state


def _state_dict(state: dict) -> dict:
    return dict(state, jobs=[j.to_dict() for j in state["jobs"]])


def _job_env(slurm_dir: Path, site: dict) -> dict:
    env = {"PHASENET_SLURM_DIR": str(slurm_dir)}
    for k in SITE_KEYS:
        if site.get(k):
            env[f"PHASENET_{k}"] = site[k]
    return env


def _log(site: dict, name: str, array: bool) -> str:
    folder = Path(site.get("LOG_DIR") or "slurm-logs").resolve()
    return str(folder / (f"{name}-%A_%a.out" if array else f"{name}-%j.out"))


def _new_state(kind: str, slurm_dir: Path, **extra) -> dict:
    from phasenet.version import __version__

    return {"version": STATE_VERSION, "kind": kind, "phasenet_version": __version__,
            "created": _dt.datetime.now().isoformat(timespec="seconds"), "cwd": os.getcwd(),
            "slurm_dir": str(slurm_dir), **extra, "jobs": []}


# --- pipelines ------------------------------------------------------------------------------


def submit_sharded(command: str, command_args: list[str], output: Path, n_shards: int, *,
                   site: dict, slurm_dir: Path, shard_dir: Path | None = None,
                   overwrite: bool = False, dry_run: bool = False,
                   state_path: Path | None = None) -> dict:
    """Submit ``phasenet COMMAND ARGS --shard I/N`` as an array of ``n_shards`` tasks plus a
    merge that depends on it (afterok); returns the state (also written to ``state_path``,
    default ``OUTPUT.slurm.json``)."""
    output = Path(output).resolve()
    shard_dir = Path(shard_dir).resolve() if shard_dir else output.with_name(output.name + ".shards")
    state_path = Path(state_path) if state_path else output.with_name(output.name + ".slurm.json")
    if n_shards < 1:
        raise SlurmError(f"--shards must be >= 1, got {n_shards}")
    if output.exists() and not overwrite:
        raise SlurmError(f"{output} exists; use --overwrite to replace it")
    stale = sorted(shard_dir.glob("shard-*.h5*")) if shard_dir.is_dir() else []
    if stale and not dry_run:
        if not overwrite:
            raise SlurmError(f"{shard_dir} holds shards of an earlier build ({stale[0].name} ...); "
                             "use --overwrite to remove them, or rerun that pipeline's failed "
                             "shards with phasenet slurm rerun-failed")
        import shutil

        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    env = _job_env(slurm_dir, site)
    name = JOB_NAMES.get(command, f"phasenet-{command}")
    shards = Job(role="shards", script=str(slurm_dir / SCRIPTS["build"]),
                 args=[str(n_shards), str(shard_dir), command, *command_args],
                 options=[f"--job-name={name}", *sbatch_options(site, command)],
                 log=_log(site, name, True), array=f"0-{n_shards - 1}", env=env)
    merge = Job(role="merge", script=str(slurm_dir / SCRIPTS["merge"]),
                args=[str(output), str(shard_dir)] + (["--overwrite"] if overwrite else []),
                options=[f"--job-name={JOB_NAMES['merge']}", *sbatch_options(site, "merge")],
                log=_log(site, JOB_NAMES["merge"], False), env=env)
    state = _new_state("build", slurm_dir, command=command, output=str(output),
                       shard_dir=str(shard_dir), n_shards=n_shards, state_path=str(state_path.resolve()))
    submit(shards, dry_run=dry_run)
    merge.dependency = f"afterok:{shards.job_id}"
    state["jobs"] = [shards, merge]
    try:
        submit(merge, dry_run=dry_run)
    finally:
        if not dry_run:
            write_state(state_path, _state_dict(state))
    return state


def submit_single(kind: str, args: list[str], *, site: dict, slurm_dir: Path, state_path: Path,
                  array: str | None = None, dry_run: bool = False, extra_state: dict | None = None) -> dict:
    """Submit one train/sweep/evaluate job (``array`` for sweeps) and write its state file."""
    name = JOB_NAMES[kind]
    job = Job(role=kind, script=str(slurm_dir / SCRIPTS[kind]), args=list(args),
              options=[f"--job-name={name}", *sbatch_options(site, kind)],
              log=_log(site, name, array is not None), array=array, env=_job_env(slurm_dir, site))
    state = _new_state(kind, slurm_dir, state_path=str(Path(state_path).resolve()), **(extra_state or {}))
    state["jobs"] = [job]
    submit(job, dry_run=dry_run)
    if not dry_run:
        write_state(Path(state_path), _state_dict(state))
    return state


# --- status ---------------------------------------------------------------------------------


def _expand_ids(spec: str) -> list[int]:
    """'0-3,7,9-11:2%4' -> [0, 1, 2, 3, 7, 9, 11]."""
    out = []
    for part in spec.split("%")[0].split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise SlurmError(f"cannot read array task list {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        out += list(range(lo, hi + 1, int(m.group(3) or 1)))
    return out


def _scontrol_records(job_id: str) -> list[dict] | None:
    """``scontrol -o show job ID`` as one dict per record, or None if Slurm forgot the job."""
    proc = _run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in (proc.stderr + proc.stdout):
            return None
        raise SlurmError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
    records = []
    for line in proc.stdout.splitlines():
        rec = {}
        for token in line.split():
            if "=" in token:
                k, v = token.split("=", 1)
                rec.setdefault(k, v)
        if rec:
            records.append(rec)
    return records


def _sacct_records(job_id: str) -> list[dict] | None:
    """Finished jobs from accounting (``sacct``), or None where accounting is disabled."""
    proc = _run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode,Reason"],
                check=False)
    if proc.returncode != 0:
        return None
    recs = []
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            jid, st, code = parts[:3]
            m = re.fullmatch(r"(\d+)_(\d+)", jid)
            recs.append({"JobId": jid, "ArrayJobId": m.group(1) if m else "",
                         "ArrayTaskId": m.group(2) if m else "", "JobState": st.split()[0],
                         "ExitCode": code, "Reason": parts[3] if len(parts) > 3 else "",
                         "source": "sacct"})
    return recs


def _log_path(pattern: str, job_id: str, task: int | None, own_id: str | None, name: str) -> str:
    return (pattern.replace("%A", str(job_id)).replace("%a", str(task) if task is not None else "")
            .replace("%j", str(own_id or job_id)).replace("%x", name))


def job_tasks(job: Job) -> list[dict]:
    """Per-task (or, for a plain job, one) state of a submitted job: ``task`` (array index or
    None), ``state``, ``reason``, ``exit_code``, ``restarts``, ``log``, ``source``."""
    name = next((o.split("=", 1)[1] for o in job.options if o.startswith("--job-name=")), "")
    wanted = _expand_ids(job.array) if job.array is not None else [None]
    found: dict = {}
    recs = _scontrol_records(job.job_id)
    if recs is not None:
        for r in recs:
            state = r.get("JobState", "UNKNOWN")
            base = {"state": state, "reason": r.get("Reason", ""), "exit_code": r.get("ExitCode", ""),
                    "restarts": int(r.get("Restarts", "0") or 0), "log": r.get("StdOut"),
                    "source": "scontrol", "job_id": r.get("JobId")}
            if job.array is None:
                found[None] = base
            else:
                task = r.get("ArrayTaskId", "")
                ids = _expand_ids(task) if task and task != "N/A" else []
                for t in ids:  # a pending range (0-3) stands for each of its tasks
                    found[t] = dict(base, log=None if len(ids) > 1 else base["log"])
    if any(t not in found for t in wanted):
        for r in _sacct_records(job.job_id) or []:
            t = int(r["ArrayTaskId"]) if r["ArrayTaskId"] else None
            if t not in found and (job.array is None or t is not None):
                found[t] = {"state": r["JobState"], "reason": r["Reason"], "exit_code": r["ExitCode"],
                            "restarts": 0, "log": None, "source": "sacct", "job_id": r["JobId"]}
    out = []
    for t in wanted:
        info = found.get(t, {"state": "UNKNOWN", "reason": "not in scontrol or sacct (purged; "
                             "no accounting?)", "exit_code": "", "restarts": 0, "log": None,
                             "source": "none", "job_id": None})
        if not info.get("log") or info["log"] in ("(null)", ""):
            info["log"] = _log_path(job.log, job.job_id, t, info.get("job_id"), name)
        out.append(dict(info, task=t))
    return out


def pipeline_status(state: dict) -> dict:
    """Everything ``phasenet slurm status`` shows, as data."""
    jobs = []
    for job in state["jobs"]:
        tasks = job_tasks(job) if job.job_id and job.job_id.isdigit() else []
        jobs.append({"role": job.role, "job_id": job.job_id, "array": job.array,
                     "superseded": job.superseded, "tasks": tasks})
    status = {"kind": state["kind"], "state_path": state.get("state_path"), "jobs": jobs}
    active = [j for j in jobs if not j["superseded"]]
    if state["kind"] == "build":
        shard_dir = Path(state["shard_dir"])
        shards = {}
        for j in jobs:
            if j["role"] == "shards":
                for t in j["tasks"]:
                    shards[t["task"]] = dict(t, array_job=j["job_id"])  # later attempts win
        for i in range(state["n_shards"]):
            if i in shards:
                shards[i]["file"] = str(shard_dir / shard_file_name(i))
                shards[i]["exists"] = (shard_dir / shard_file_name(i)).is_file()
        status["shards"] = [dict(shards[i], task=i) for i in sorted(shards)]
        status["output"] = state["output"]
        status["output_exists"] = Path(state["output"]).is_file()
        status["failed"] = [dict(t, task=i) for i, t in sorted(shards.items())
                            if t["state"] in FAILED_STATES and not t.get("exists")]
        merges = [j for j in active if j["role"] == "merge"]
        status["failed"] += [dict(t, role="merge", job_id=merges[-1]["job_id"])
                             for t in (merges[-1]["tasks"] if merges else [])
                             if t["state"] in FAILED_STATES]
        status["done"] = status["output_exists"] and all(t["state"] in DONE_STATES for t in
                                                           (merges[-1]["tasks"] if merges else []))
    else:
        last: dict = {}
        for j in jobs:
            for t in j["tasks"]:
                last[t["task"]] = dict(t, role=j["role"], job_id=j["job_id"])
        status["failed"] = [t for _, t in sorted(last.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
                            if t["state"] in FAILED_STATES]
        status["done"] = bool(last) and all(t["state"] in DONE_STATES for t in last.values())
    return status


def format_status(status: dict) -> str:
    lines = [f"phasenet slurm {status['kind']} pipeline ({status['state_path']})"]
    for j in status["jobs"]:
        head = f"  {j['role']} job {j['job_id']}" + (f" array {j['array']}" if j["array"] is not None else "")
        if j["superseded"]:
            head += " (superseded by a rerun)"
        lines.append(head)
        for t in j["tasks"]:
            what = f"task {t['task']}" if t["task"] is not None else "job"
            extra = []
            if t["reason"] and t["reason"] not in ("None", "(null)"):
                extra.append(t["reason"])
            if t["exit_code"] and t["exit_code"] != "0:0":
                extra.append(f"exit {t['exit_code']}")
            if t["restarts"]:
                extra.append(f"{t['restarts']} restart(s)")
            lines.append(f"    {what:<9} {t['state']:<11} {', '.join(extra):<28} log {t['log']}")
    if status["kind"] == "build":
        lines.append(f"  output {status['output']}: " + ("written" if status["output_exists"] else "not yet"))
    if status["failed"]:
        lines.append(f"FAILED: {len(status['failed'])}")
        for t in status["failed"]:
            what = f"shard {t['task']}" if status["kind"] == "build" and t.get("role") != "merge" else (
                f"{t.get('role', 'task')} " + (f"task {t['task']}" if t["task"] is not None else f"job {t.get('job_id')}"))
            lines.append(f"  {what}: {t['state']} (exit {t['exit_code']}); log {t['log']}")
        lines.append(f"rerun only these: phasenet slurm rerun-failed {status['state_path']}")
    elif status["done"]:
        lines.append("all jobs completed")
    return "\n".join(lines)


# --- rerun ----------------------------------------------------------------------------------


def rerun_failed(state_path: str | Path, *, dry_run: bool = False) -> tuple[dict, list[Job]]:
    """Resubmit only what failed; returns (state, new jobs). Build: shards without a shard
    file whose last attempt failed, then a new merge (the old one, never to run, is
    cancelled). Sweep: the failed members. Train/evaluate: the job (training with --resume)."""
    state_path = Path(state_path)
    state = read_state(state_path)
    status = pipeline_status(state)
    new: list[Job] = []
    if state["kind"] == "build":
        shard_fail = sorted(t["task"] for t in status["failed"] if t.get("role") != "merge")
        merges = [j for j in state["jobs"] if j.role == "merge" and not j.superseded]
        merge_failed = any(t.get("role") == "merge" for t in status["failed"])
        if not shard_fail and not merge_failed:
            return state, []
        template = [j for j in state["jobs"] if j.role == "shards"][0]
        if shard_fail:
            rerun = Job(**dict(template.to_dict(), array=",".join(map(str, shard_fail)),
                               job_id=None, superseded=False))
            submit(rerun, dry_run=dry_run)
            new.append(rerun)
        for m in merges:  # a merge waiting on failed shards never runs: replace it
            if not dry_run and m.job_id and m.job_id.isdigit():
                _run(["scancel", m.job_id], check=False)
            m.superseded = True
        merge = Job(**dict(merges[-1].to_dict() if merges else {}, job_id=None, superseded=False,
                           dependency=f"afterok:{new[0].job_id}" if new else None))
        submit(merge, dry_run=dry_run)
        new.append(merge)
    else:
        failed = status["failed"]
        if not failed:
            return state, []
        template = state["jobs"][-1]
        env = dict(template.env, PHASENET_RESUME="1") if state["kind"] in ("train", "sweep") else template.env
        tasks = sorted(t["task"] for t in failed if t["task"] is not None)
        job = Job(**dict(template.to_dict(), job_id=None, superseded=False, env=env,
                         array=",".join(map(str, tasks)) if template.array is not None else None))
        submit(job, dry_run=dry_run)
        new.append(job)
    state["jobs"] += new
    if not dry_run:
        write_state(state_path, _state_dict(state))
    return state, new
