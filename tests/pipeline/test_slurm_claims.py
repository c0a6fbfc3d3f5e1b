"""The README's promises about `phasenet slurm` that the other Slurm tests leave out:
`slurm sweep`, `slurm evaluate`, `slurm synth` (their sbatch command lines, dry), TERM
handling in slurm/job.sh (local, no Slurm), and `rerun-failed` for a training job and for
a sweep (real submissions to the single-node test cluster; skipped without it)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from phasenet.cli import main
from tests.pipeline.conftest import status, wait_for  # noqa: F401  (slurm_cluster: a fixture there)

SWEEP = """
[run]
name = "sw"
seed = 0
epochs = 1
batch_size = 8

[data]
task = "sign"
r2_max = 50

[model]
width = 8
depth = 1

[output]
tensorboard = false
plots = false

[sweep]
{sweep}
"""


def _dry(argv, capsys):
    rc = main([*argv, "--dry-run"])
    out, err = capsys.readouterr()
    return rc, [shlex.split(line) for line in out.splitlines() if line.startswith("sbatch ")], err


def _script_args(cmd, script):
    i = next(k for k, a in enumerate(cmd) if a.endswith(f"slurm/{script}"))
    return cmd[:i], cmd[i + 1:]


def test_dry_run_sweep_is_one_array_task_per_member(tmp_path, capsys, monkeypatch):
    """`phasenet slurm sweep`: one array task per member (0..K-1) of sweep-array.sbatch,
    with the GPU options of training; `slurm train` refuses a sweep and `slurm sweep` a
    config without one."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "sw.toml"
    config.write_text(SWEEP.format(sweep='"model.width" = [8, 16, 32]'))
    rc, cmds, err = _dry(["slurm", "sweep", str(config), "--data", "d.h5", "--out", "runs/sw",
                          "--gpus", "2"], capsys)
    assert rc == 0, err
    (cmd,) = cmds
    opts, args = _script_args(cmd, "sweep-array.sbatch")
    assert "--array=0-2" in opts and "--gpus-per-node=2" in opts and "--job-name=phasenet-sweep" in opts
    assert args == [str(config), "--data", "d.h5", "--out", str(tmp_path / "runs" / "sw")]  # --out made absolute
    assert not (tmp_path / "runs" / "sw.slurm.json").exists()
    rc, _, err = _dry(["slurm", "train", str(config), "--data", "d.h5"], capsys)
    assert rc == 2 and "is a sweep of 3 members; use phasenet slurm sweep" in err
    plain = REPO_ROOT / "training" / "demo.toml"
    rc, _, err = _dry(["slurm", "sweep", str(plain), "--data", "d.h5"], capsys)
    assert rc == 2 and "has no [sweep] table" in err
    rc, _, err = _dry(["slurm", "sweep", str(config), "--data", "d.h5", "--member", "1"], capsys)
    assert rc == 2 and "for local use" in err


def test_dry_run_evaluate(tmp_path, capsys, monkeypatch):
    """`phasenet slurm evaluate DATA -o REPORT ...`: evaluate.sbatch with the evaluation's
    options, on the CPU partition; a missing dataset is refused before submission."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.h5").write_bytes(b"")
    rc, cmds, err = _dry(["slurm", "evaluate", "test.h5", "-o", "reports/test", "--method", "charge-flipping",
                          "--d-min", "1.5", "--partition", "cpu"], capsys)
    assert rc == 0, err
    (cmd,) = cmds
    opts, args = _script_args(cmd, "evaluate.sbatch")
    assert "--partition=cpu" in opts and "--job-name=phasenet-evaluate" in opts
    assert "--cpus-per-task=4" in opts and not any(o.startswith("--gpus") for o in opts)
    assert not any(o.startswith("--array") for o in opts)
    assert args[0] == "test.h5"
    assert args[args.index("--output") + 1] == str(tmp_path / "reports" / "test")
    assert args[args.index("--method") + 1] == "charge-flipping" and args[args.index("--d-min") + 1] == "1.5"
    rc, _, err = _dry(["slurm", "evaluate", "nope.h5", "-o", "r"], capsys)
    assert rc == 2 and "nope.h5: dataset not found" in err


def test_dry_run_synth_is_a_sharded_array_and_a_merge(tmp_path, capsys, monkeypatch):
    """`phasenet slurm synth -n N -o OUT --shards S`: S array tasks of build-array.sbatch
    running `phasenet synth ... --shard I/S`, and a merge after all of them (afterok)."""
    monkeypatch.chdir(tmp_path)
    rc, cmds, err = _dry(["slurm", "synth", "-n", "1000000", "-o", "synth.h5", "--shards", "64",
                          "--seed", "3"], capsys)
    assert rc == 0, err
    array, merge = cmds
    opts, args = _script_args(array, "build-array.sbatch")
    assert "--array=0-63" in opts and "--job-name=phasenet-synth" in opts
    assert args == ["64", str(tmp_path / "synth.h5.shards"), "synth", "-n", "1000000", "--seed", "3"]
    opts, args = _script_args(merge, "merge.sbatch")
    assert "--dependency=afterok:<shards job id>" in opts
    assert args == [str(tmp_path / "synth.h5"), str(tmp_path / "synth.h5.shards")]
    rc, _, err = _dry(["slurm", "synth", "-n", "10", "-o", "s.h5", "--shards", "11"], capsys)
    assert rc == 2 and "--shards 11 > -n 10" in err


def test_job_sh_stops_the_whole_process_group_on_term(tmp_path):
    """slurm/job.sh on TERM (scancel, preemption): TERM to the command's whole process group
    (a worker it started included), wait for it, exit 143, saying so in the log."""
    pids = tmp_path / "pids"
    # the command starts a "worker" (its own child) and waits; both block until signalled
    command = f"sleep 1000 & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait"
    script = f"source {shlex.quote(str(REPO_ROOT / 'slurm' / 'job.sh'))}; phasenet_job bash -c {shlex.quote(command)}"
    job = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60  # against hanging only
        while not pids.is_file() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
        assert pids.is_file(), job.communicate(timeout=10)[0]
        child, worker = map(int, pids.read_text().split())
        assert os.getpgid(worker) == os.getpgid(child) == child != os.getpgid(job.pid)  # setsid
        job.send_signal(signal.SIGTERM)
        log, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 143, log
    assert "TERM: job cancelled, preempted or out of time; stopping" in log
    assert f"sending TERM to process group {child}" in log
    assert "command finished" not in log
    for pid in (child, worker):
        assert not _alive(pid), f"process {pid} outlived the job"


def _alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


# ---- real submissions ------------------------------------------------------------------------

@pytest.fixture
def job_env(slurm_cluster, tmp_path, monkeypatch):
    """Jobs find phasenet: the running virtualenv unless one is on PATH or set."""
    monkeypatch.chdir(tmp_path)
    if not shutil.which("phasenet") and not os.environ.get("PHASENET_VENV"):
        monkeypatch.setenv("PHASENET_VENV", sys.prefix)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return tmp_path


def _finished(state_path, capsys):
    def check():
        rc, st = status(state_path, capsys)
        tasks = [t for j in st["jobs"] if not j["superseded"] for t in j["tasks"]]
        return (rc, st) if st["done"] or (tasks and all(t["state"] in ("COMPLETED", "FAILED", "CANCELLED",
                                                                        "TIMEOUT") for t in tasks)) else None
    return check


@pytest.mark.slow
def test_rerun_failed_training_job_resumes(job_env, capsys):
    """A training job that failed is resubmitted by `rerun-failed` as the same job with
    --resume (its log shows the command). Both attempts fail fast (no dataset)."""
    tmp_path = job_env
    config = REPO_ROOT / "training" / "demo.toml"
    rc = main(["slurm", "train", str(config), "--data", str(tmp_path / "missing.h5"), "--out", "run",
               "--gpus", "1", "--cpus", "1", "--time", "00:05:00", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    state_path = tmp_path / "run.slurm.json"
    rc, st = wait_for(_finished(state_path, capsys), 120, "the training job to fail")
    assert rc == 1 and len(st["failed"]) == 1, st
    first_log = Path(st["failed"][0]["log"]).read_text()
    assert "missing.h5: not a readable HDF5 file" in first_log and "--resume" not in first_log
    capsys.readouterr()
    assert main(["slurm", "rerun-failed", str(state_path)]) == 0
    assert "submitted train job" in capsys.readouterr().out
    state = json.loads(state_path.read_text())
    assert [j["role"] for j in state["jobs"]] == ["train", "train"]
    assert state["jobs"][1]["args"] == state["jobs"][0]["args"]
    rc, st = wait_for(_finished(state_path, capsys), 120, "the rerun to end")
    log = Path(st["jobs"][1]["tasks"][0]["log"]).read_text()
    start = next(line for line in log.splitlines() if "restart(s): phasenet train" in line)
    assert start.rstrip().endswith("--resume"), start
    assert str(tmp_path / "run") in start


@pytest.mark.slow
def test_rerun_failed_sweep_resubmits_only_the_failed_members(job_env, capsys):
    """A 2-member sweep where member 1 cannot run (its reflection set is not the dataset's)
    and member 0 trains: `status` names member 1, `rerun-failed` resubmits array task 1
    only, with --resume."""
    from phasenet import BuildOptions, build_dataset
    from phasenet.pipeline.demo import write_random_cifs

    tmp_path = job_env
    write_random_cifs(tmp_path / "cif", 16, seed=2)
    data = tmp_path / "d.h5"
    build_dataset([tmp_path / "cif"], data, BuildOptions(workers=1, normalisation="max", r2_max=50,
                                                         test_fraction=0.25), progress=False)
    config = tmp_path / "sw.toml"
    config.write_text(SWEEP.format(sweep='"data.r2_max" = [50, 30]'))
    rc = main(["slurm", "sweep", str(config), "--data", str(data), "--out", "runs/sw", "--gpus", "1",
               "--cpus", "1", "--time", "00:10:00", "--backend", "jax"])
    assert rc == 0, capsys.readouterr().err
    state_path = tmp_path / "runs" / "sw.slurm.json"
    rc, st = wait_for(_finished(state_path, capsys), 300, "both sweep members to end")
    tasks = {t["task"]: t for t in st["jobs"][0]["tasks"]}
    assert tasks[0]["state"] == "COMPLETED", Path(tasks[0]["log"]).read_text()[-3000:]
    assert rc == 1 and [t["task"] for t in st["failed"]] == [1]
    assert "reflection set differs" in Path(tasks[1]["log"]).read_text()
    assert (tmp_path / "runs" / "sw" / "00-r2_max=50" / "model.keras").is_file()
    capsys.readouterr()
    assert main(["slurm", "rerun-failed", str(state_path)]) == 0
    assert "(array 1)" in capsys.readouterr().out
    state = json.loads(state_path.read_text())
    assert [(j["role"], j["array"]) for j in state["jobs"]] == [("sweep", "0-1"), ("sweep", "1")]
    assert state["jobs"][1]["env"]["PHASENET_RESUME"] == "1"
    rc, st = wait_for(_finished(state_path, capsys), 120, "the rerun member to end")
    (task,) = st["jobs"][1]["tasks"]
    assert task["task"] == 1
    start = next(line for line in Path(task["log"]).read_text().splitlines() if "restart(s): phasenet train" in line)
    assert start.rstrip().endswith("--member 1 --resume"), start
