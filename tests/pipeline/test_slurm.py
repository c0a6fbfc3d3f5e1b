"""End-to-end on a real Slurm (slurmctld + slurmd + munged): the sbatch scripts in slurm/,
submitted by `phasenet slurm`, compared with local runs.

The cluster: the one named by $SLURM_CONF or started by slurm/testcluster.sh in
/tmp/phasenet-slurm (CI starts it), else one this session starts itself in a temporary
folder (root and Debian's slurm-wlm + munge needed) and stops at the end. Without any of
these the tests skip, saying why.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from tests.conftest import REPO_ROOT
from phasenet import BuildOptions, build_dataset
from phasenet.cli import main
from phasenet.pipeline.shards import shard_file_name
from test_shards import assert_same_dataset

pytestmark = pytest.mark.slow

from tests.pipeline.conftest import status, wait_for  # noqa: F401  (slurm_cluster: a fixture there)


def _inputs(real_cif_dir, tmp_path, n, start=0):
    """A list file of ``n`` real CIFs (sorted names: plain and damaged cod-tools files)."""
    files = sorted(real_cif_dir.glob("*.cif"))[start:start + n]
    lst = tmp_path / "inputs.txt"
    lst.write_text("\n".join(str(f) for f in files) + "\n")
    return lst


def _local(lst, tmp_path, **opts):
    out = tmp_path / "local.h5"
    build_dataset([lst], out, BuildOptions(workers=1, **opts), progress=False)
    return out


def _submit_build(args, capsys):
    capsys.readouterr()
    rc = main(["slurm", "build", *args, "--cpus", "1", "--time", "00:10:00"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_array_build_and_merge_equals_local_build(slurm_cluster, real_cif_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lst = _inputs(real_cif_dir, tmp_path, 24)
    out = tmp_path / "sharded.h5"
    text = _submit_build([str(lst), "-o", str(out), "--shards", "3", "--r2-max", "50"], capsys)
    assert "submitted shards job" in text and "submitted merge job" in text
    state_path = tmp_path / "sharded.h5.slurm.json"
    state = json.loads(state_path.read_text())
    assert [j["role"] for j in state["jobs"]] == ["shards", "merge"]
    assert state["jobs"][1]["dependency"] == f"afterok:{state['jobs'][0]['job_id']}"
    local = _local(lst, tmp_path, r2_max=50)
    wait_for(lambda: out.is_file() and status(state_path, capsys)[1]["done"], 120, "the merged dataset")
    rc, st = status(state_path, capsys)
    assert rc == 0 and st["failed"] == []
    assert [t["state"] for t in st["jobs"][0]["tasks"]] == ["COMPLETED"] * 3
    for i in range(3):
        assert (tmp_path / "sharded.h5.shards" / shard_file_name(i)).is_file()
        log = Path(st["shards"][i]["log"])
        assert st["shards"][i]["task"] == i and st["shards"][i]["exists"]
        assert log.is_file() and f"--shard {i}/3" in log.read_text()
    assert_same_dataset(out, local)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["merged_shards"] == 3


def test_failing_shard_is_reported_and_rerun(slurm_cluster, real_cif_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lst = _inputs(real_cif_dir, tmp_path, 18, start=40)
    out = tmp_path / "f.h5"
    shard_dir = tmp_path / "f.h5.shards"
    # submit held, plant a stale parts *file* where shard 1 keeps its parts, then release:
    # shard 1 fails (exit 2, "holds an interrupted build"), shards 0 and 2 succeed.
    _submit_build([str(lst), "-o", str(out), "--shards", "3", "--sbatch-arg=--hold"], capsys)
    state_path = tmp_path / "f.h5.slurm.json"
    array_id = json.loads(state_path.read_text())["jobs"][0]["job_id"]
    shard_dir.mkdir(exist_ok=True)
    (shard_dir / (shard_file_name(1) + ".parts")).write_text("left over from another build\n")
    merge_id = json.loads(state_path.read_text())["jobs"][1]["job_id"]
    subprocess.run(["scontrol", "release", array_id, merge_id], check=True)

    def failed_reported():
        rc, st = status(state_path, capsys)
        finished = all(t["state"] in ("COMPLETED", "FAILED") for t in st["jobs"][0]["tasks"])
        return (rc, st) if finished and st["failed"] else None

    rc, st = wait_for(failed_reported, 90, "shard 1 to fail")
    assert rc == 1
    assert [t["task"] for t in st["failed"]] == [1]
    log = Path(st["failed"][0]["log"])
    assert log.name == f"phasenet-build-{array_id}_1.out" and log.is_file()
    assert "holds an interrupted build" in log.read_text()
    capsys.readouterr()
    main(["slurm", "status", str(state_path)])
    human = capsys.readouterr().out
    assert "shard 1: FAILED" in human and str(log) in human and "rerun-failed" in human
    assert not out.exists()

    (shard_dir / (shard_file_name(1) + ".parts")).unlink()
    capsys.readouterr()
    assert main(["slurm", "rerun-failed", str(state_path)]) == 0
    text = capsys.readouterr().out
    assert "(array 1)" in text and "merge job" in text
    state = json.loads(state_path.read_text())
    assert [j["role"] for j in state["jobs"]] == ["shards", "merge", "shards", "merge"]
    assert state["jobs"][1]["superseded"] and state["jobs"][2]["array"] == "1"
    # the rerun repeats the submission's sbatch options, --hold included: release it
    subprocess.run(["scontrol", "release", state["jobs"][2]["job_id"], state["jobs"][3]["job_id"]], check=True)
    local = _local(lst, tmp_path)
    wait_for(lambda: out.is_file() and status(state_path, capsys)[1]["done"], 120, "the rerun pipeline")
    rc, st = status(state_path, capsys)
    assert rc == 0 and st["failed"] == []
    assert_same_dataset(out, local)


def test_requeued_shard_resumes_from_its_parts(slurm_cluster, real_cif_dir, tmp_path, capsys, monkeypatch):
    """USR1 (what Slurm sends before the time limit) mid-build: the job stops, requeues
    itself, starts again, reuses its finished parts and ends equal to a local build."""
    monkeypatch.chdir(tmp_path)
    # Every real CIF, one file per part: several seconds of parts at ~4 ms a structure, so
    # the signal arrives mid-build even on a fast machine.
    lst = _inputs(real_cif_dir, tmp_path, 10**6)
    out = tmp_path / "r.h5"
    _submit_build([str(lst), "-o", str(out), "--shards", "1", "--chunk-size", "1", "--workers", "1"], capsys)
    state_path = tmp_path / "r.h5.slurm.json"
    array_id = json.loads(state_path.read_text())["jobs"][0]["job_id"]
    parts = tmp_path / "r.h5.shards" / (shard_file_name(0) + ".parts")
    wait_for(lambda: parts.is_dir() and len(list(parts.glob("part-*.h5"))) >= 3, 90, "the first parts", 0.2)
    assert not (tmp_path / "r.h5.shards" / shard_file_name(0)).exists(), "finished before the signal"
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array_id}_0"], check=True)
    local = _local(lst, tmp_path, chunk_size=1)
    wait_for(lambda: out.is_file() and status(state_path, capsys)[1]["done"], 150, "the requeued build")
    rc, st = status(state_path, capsys)
    task = st["jobs"][0]["tasks"][0]
    assert rc == 0 and task["state"] == "COMPLETED" and task["restarts"] >= 1
    log = Path(task["log"]).read_text()
    assert "USR1" in log and "requeued job" in log
    assert "parts reused from an interrupted build" in log
    assert_same_dataset(out, local)


def test_training_job_on_one_gpu(slurm_cluster, tmp_path, capsys, monkeypatch):
    from test_shards import write_random_cifs

    try:
        main(["train", "--help"])
    except SystemExit as exc:
        if exc.code != 0:
            pytest.skip("phasenet train is not available yet")
    capsys.readouterr()
    config = REPO_ROOT / "training" / "demo.toml"
    if not config.is_file():
        pytest.skip("training/demo.toml (the tiny training config) not found")
    monkeypatch.chdir(tmp_path)
    write_random_cifs(tmp_path / "cif", 24, seed=3)
    data = tmp_path / "d.h5"
    build_dataset([tmp_path / "cif"], data, BuildOptions(workers=1, normalisation="max", test_fraction=0.25),
                  progress=False)
    run = tmp_path / "run"
    rc = main(["slurm", "train", str(config), "--data", str(data), "--out", str(run), "--epochs", "2",
               "--gpus", "1", "--cpus", "1", "--time", "00:10:00", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    state_path = tmp_path / "run.slurm.json"
    state = json.loads(state_path.read_text())
    assert "--gpus-per-node=1" in state["jobs"][0]["options"]

    def finished():
        rc, st = status(state_path, capsys)
        return st if st["done"] or st["failed"] else None

    st = wait_for(finished, 240, "the training job")
    log = Path(st["jobs"][0]["tasks"][0]["log"])
    assert not st["failed"], log.read_text()[-3000:]
    text = log.read_text()
    assert "GPUs allocated: 1" in text  # Slurm gave the job one (fake) GPU
    assert "command finished with exit status 0" in text
    assert run.is_dir() and any(run.iterdir())


def test_requeued_training_resumes_from_its_checkpoint(slurm_cluster, tmp_path, capsys, monkeypatch):
    """USR1 mid-training: the job requeues itself, restarts with --resume from the last
    checkpoint and ends with every epoch's row, equal to an uninterrupted run."""
    from test_shards import write_random_cifs

    config = REPO_ROOT / "training" / "demo.toml"
    monkeypatch.chdir(tmp_path)
    write_random_cifs(tmp_path / "cif", 40, seed=5)
    data = tmp_path / "d.h5"
    build_dataset([tmp_path / "cif"], data, BuildOptions(workers=1, normalisation="max", test_fraction=0.25),
                  progress=False)
    epochs = 150
    common = ["--data", str(data), "--epochs", str(epochs), "--backend", "jax",
              "--set", "run.batch_size=4", "--quiet"]
    run = tmp_path / "run"
    rc = main(["slurm", "train", str(config), "--out", str(run), *common, "--cpus", "1",
               "--time", "00:10:00"])
    assert rc == 0, capsys.readouterr().err
    state_path = tmp_path / "run.slurm.json"
    job_id = json.loads(state_path.read_text())["jobs"][0]["job_id"]
    def checkpoints():  # older checkpoints are pruned: any epoch >= 2 will do
        return [p for p in (run / "checkpoints").glob("epoch-????") if p.name >= "epoch-0002"]

    wait_for(checkpoints, 180, "the second checkpoint", 0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True)

    def finished():
        rc, st = status(state_path, capsys)
        return st if st["done"] or st["failed"] else None

    st = wait_for(finished, 300, "the requeued training job")
    task = st["jobs"][0]["tasks"][0]
    log = Path(task["log"]).read_text()
    assert not st["failed"], log[-3000:]
    assert task["restarts"] >= 1 and "USR1" in log and "requeued job" in log, log[-3000:]
    assert "resumed from epoch-" in log, log[-3000:]
    # The same run without interruption, outside Slurm, on the same backend.
    ref = tmp_path / "ref"
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "phasenet.cli", "train", str(config), "--out", str(ref), *common],
                   check=True, env=env, capture_output=True)
    import pandas as pd

    a = pd.read_csv(ref / "history.csv").drop(columns="seconds")
    b = pd.read_csv(run / "history.csv").drop(columns="seconds")
    assert list(b["epoch"]) == list(range(1, epochs + 1))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-5)
