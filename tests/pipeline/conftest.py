"""Fixtures of the pipeline tests: a running single-node Slurm cluster and helpers to
wait for its jobs.

The cluster: the one named by $SLURM_CONF or started by slurm/testcluster.sh in
/tmp/phasenet-slurm (CI starts it), else one this session starts itself in a temporary
folder (root and Debian's slurm-wlm + munge needed) and stops at the end. Without any of
these the Slurm tests skip, saying why.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from phasenet.cli import main

TESTCLUSTER = REPO_ROOT / "slurm" / "testcluster.sh"
DEFAULT_CONF = Path("/tmp/phasenet-slurm/etc/slurm.conf")


def _node_state(conf) -> str:
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                              timeout=15, env=dict(os.environ, SLURM_CONF=str(conf)))
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    return proc.stdout.strip() if proc.returncode == 0 else f"sinfo failed: {proc.stderr.strip()[:200]}"


def _usable(state: str) -> bool:
    return state.split("\n")[0].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running single-node cluster (set in os.environ for the session)."""
    tried = []
    for conf in filter(None, [os.environ.get("SLURM_CONF"), str(DEFAULT_CONF)]):
        if Path(conf).is_file():
            state = _node_state(conf)
            if _usable(state):
                old = os.environ.get("SLURM_CONF")
                os.environ["SLURM_CONF"] = conf
                yield conf
                if old is None:
                    os.environ.pop("SLURM_CONF", None)
                return
            tried.append(f"{conf}: node {state!r}")
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(b)]
    if missing:
        pytest.skip(f"no Slurm: {', '.join(missing)} not installed (apt-get install slurm-wlm munge; "
                    f"see README 'Running on a Slurm cluster'){'; ' + '; '.join(tried) if tried else ''}")
    if os.geteuid() != 0:
        pytest.skip("no running Slurm cluster, and starting the test cluster needs root "
                    "(sudo slurm/testcluster.sh start; export SLURM_CONF=/tmp/phasenet-slurm/etc/slurm.conf)")
    folder = tmp_path_factory.mktemp("slurm-cluster")
    env = dict(os.environ, PHASENET_SLURM_TEST_PORT=str(_free_port_pair()))
    proc = subprocess.run(["bash", str(TESTCLUSTER), "start", str(folder)], capture_output=True, text=True,
                          env=env, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"could not start the test cluster: {proc.stderr.strip() or proc.stdout.strip()}")
    conf = str(folder / "etc" / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run(["bash", str(TESTCLUSTER), "stop", str(folder)], capture_output=True, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def wait_for(predicate, timeout, what, every=1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def status(state_path, capsys):
    capsys.readouterr()
    rc = main(["slurm", "status", str(state_path), "--json"])
    return rc, json.loads(capsys.readouterr().out)
