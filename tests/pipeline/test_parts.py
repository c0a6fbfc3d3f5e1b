"""The part-writer (phasenet.pipeline.parts): a file that never finishes or a worker that
dies costs only that file; the rest of its slice is built, the run goes on."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import signal
import time

import h5py
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.pipeline import build as build_module
from phasenet.pipeline.parts import part_path, run_parts



def _cif_files(real_cif_dir, n):
    names = ["PyXtal_NaCl.cif", "FinalCif_multi.cif", "StructureFinder_P-1.cif",
             "FinalCif_alert_example.cif", "cod-tools_1518592.cif"]
    return [real_cif_dir / name for name in names[:n]]


def _failures(path):
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["failures"]), int(h5.attrs["n_structures"]), int(h5.attrs["n_inputs"])


def test_a_file_that_never_finishes_is_a_timeout(real_cif_dir, tmp_path):
    """A named pipe without a writer: open() blocks inside the C library for ever (as a
    dead network mount would); no signal handler helps, the worker must be killed."""
    good = _cif_files(real_cif_dir, 3)
    stuck = tmp_path / "stuck.cif"
    os.mkfifo(stuck)
    out = tmp_path / "out.h5"
    t0 = time.perf_counter()
    s = build_dataset(good + [stuck], out, BuildOptions(workers=1, chunk_size=8, file_timeout=3),
                      progress=False)
    assert time.perf_counter() - t0 < 60
    fails, n, n_inputs = _failures(out)
    assert n_inputs == 4
    timeouts = [f for f in fails if f["kind"] == "timeout"]
    assert [f["source"] for f in timeouts] == [str(stuck)]
    assert "3 s" in timeouts[0]["reason"]
    # every good file of the slice (the same part) was built all the same
    ref = build_dataset(good, tmp_path / "ref.h5", BuildOptions(workers=1, file_timeout=None),
                        progress=False)
    assert n == ref.n_structures > 0
    assert s.failures_by_kind.get("timeout") == 1
    assert not (tmp_path / "out.h5.parts").exists()


def test_a_worker_that_dies_costs_only_its_file(real_cif_dir, tmp_path, monkeypatch):
    """A worker killed in the middle of a file (segfault, out-of-memory killer): that file
    is a worker-crash failure, the slice is handed out again without it."""
    good = _cif_files(real_cif_dir, 4)
    real = build_module.read_cif

    def dies_on_second(path, *args, **kwargs):
        if str(path) == str(good[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(build_module, "read_cif", dies_on_second)  # inherited by the forked workers
    out = tmp_path / "out.h5"
    s = build_dataset(good, out, BuildOptions(workers=2, chunk_size=8), progress=False)
    fails, n, n_inputs = _failures(out)
    crashed = [f for f in fails if f["kind"] == "worker-crash"]
    assert [f["source"] for f in crashed] == [str(good[1])]
    assert "signal 9" in crashed[0]["reason"]
    assert n_inputs == 4 and n == s.n_structures > 0
    monkeypatch.setattr(build_module, "read_cif", real)
    ref = build_dataset([good[0]] + good[2:], tmp_path / "ref.h5", BuildOptions(workers=1),
                        progress=False)
    assert n == ref.n_structures


class _Merger:
    def __init__(self):
        self.appended = []

    def append(self, path):
        assert path.exists()
        self.appended.append(path.name)


def _work(job, report):
    for k, item in enumerate(job.items):
        if k in job.skip:
            continue
        report(k)
        if item == "sleep":
            time.sleep(600)
    job.path.write_text(json.dumps({"items": list(job.items), "skip": {str(k): v for k, v in job.skip.items()}}))
    return len(job.skip)


def test_run_parts_merges_in_order_and_reuses_parts(tmp_path):
    slices = [["a", "b"], ["c"], ["sleep", "d"], ["e"]]
    part_path(tmp_path, 1).write_text("{}")  # a part left by an interrupted run
    merger = _Merger()
    seen = []
    resumed = run_parts(slices, _work, tmp_path, merger, workers=2, item_timeout=1.5,
                        on_part=lambda n, f: seen.append((n, f)))
    assert resumed == 1
    assert merger.appended == [f"part-{i:06d}.h5" for i in range(4)]
    assert sorted(seen) == [(1, 0), (1, 0), (2, 0), (2, 1)]
    third = json.loads(part_path(tmp_path, 2).read_text())
    assert list(third["skip"]) == ["0"] and third["skip"]["0"][0] == "timeout"
    assert json.loads(part_path(tmp_path, 1).read_text()) == {}  # reused, not rewritten


def test_worker_exceptions_reach_the_caller(tmp_path):
    def broken(job, report):
        raise ZeroDivisionError("a bug in the work function")

    with pytest.raises(ZeroDivisionError, match="a bug"):
        run_parts([["a"], ["b"]], broken, tmp_path, _Merger(), workers=2, item_timeout=10)
