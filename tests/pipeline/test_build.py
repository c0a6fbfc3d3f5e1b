"""Building datasets from real CIF files: HDF5 contents, failures, split, resume."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from phasenet import BuildOptions, build_dataset, read_structures_table
from phasenet.pipeline.build import BuildError
from phasenet.io.cif import read_cif
from phasenet.io.hdf5 import STRUCTURE_COLUMNS
from phasenet.structure import Structure
from h5compare import assert_same_arrays, read_h5


#: Files with measured reflections (embedded hkl, paired .fcf, paired .hkl, _refln loop).
MEASURED = ["StructureFinder_P-1.cif", "FinalCif_alert_example.cif",
            "NoSpherA2_sucrose_2.cif", "cod-tools_1518592.cif"]
#: Files that must fail, each with the words its reason must contain.
DAMAGED = {
    "cod-tools_1000002-test-symop.cif": "no symmetry",
    "cod-tools_1000002-unknown-atom-type.cif": "names no element",
    "cod-tools_2005206.cif": "do not form a group",
    "cod-tools_2201319-numeric_field_w_non-numeric-value.cif": "unit cell",
    "cod-tools_1101113-no-atom-site-label.cif": "no atoms",
}
#: More structures: multi-block, charged, defaulted U.
EXTRA = ["FinalCif_multi.cif", "PyXtal_NaCl.cif",
         "FinalCif_1923_Aminoff__G._Ni_As_P_63.m_m_c_Nickel_arsenide.cif"]


def _inputs(manifest, real_cif_dir, n_plain=28):
    """~40 real files: plain undamaged structures chosen deterministically from the
    manifest, plus the named measured, damaged and special ones."""
    plain = manifest[(manifest.gemmi_reads == True)  # noqa: E712
                     & ~manifest.notes.str.contains("cod-tools-test-variant")
                     & (manifest.kind == "structure") & (manifest.n_atoms <= 80)
                     & manifest.has_hkl.isna()].sort_values("file")
    names = [f.removeprefix("cif/") for f in plain.file[::10][:n_plain]]
    names += MEASURED + list(DAMAGED) + EXTRA
    paths = sorted({real_cif_dir / n for n in names})
    missing = [p for p in paths if not p.is_file()]
    assert not missing, f"real files missing: {missing}"
    return paths


def _expected_structures(paths):
    out, fails = [], []
    for p in paths:
        for x in read_cif(p):
            (out if isinstance(x, Structure) else fails).append(x)
    return out, fails


@pytest.fixture(scope="module")
def inputs(manifest, real_cif_dir):
    return _inputs(manifest, real_cif_dir)


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "real.h5"
    summary = build_dataset(inputs, out, BuildOptions(workers=2), progress=False)
    return out, summary


def _assert_same_file(a, b):
    da, aa = read_h5(a)
    db, ab = read_h5(b)
    assert_same_arrays(da, db)
    assert aa == ab


def test_summary(built, inputs):
    out, summary = built
    expected, fails = _expected_structures(inputs)
    assert summary.output == out and out.is_file()
    assert summary.n_inputs == len(inputs) >= 38
    assert summary.n_structures == len(expected)
    assert len(summary.failures) == len(fails) >= len(DAMAGED)
    assert not summary.ok
    text = summary.format()
    assert f"built {summary.n_structures} structures from {len(inputs)} files" in text
    for name in DAMAGED:
        assert name in text
    assert not out.with_name(out.name + ".parts").exists()  # parts removed
    assert not out.with_name(out.name + ".tmp").exists()


def test_arrays(built, inputs):
    out, summary = built
    n = summary.n_structures
    with h5py.File(out, "r") as h5:
        hkl = h5["hkl"][...]
        assert hkl.shape == (4630, 3) and hkl.dtype == np.int32
        assert np.array_equal(hkl, phasenet.canonical_hkl())
        for name in ("intensity_calc", "phase_calc", "intensity_obs", "intensity"):
            assert h5[name].shape == (n, 4630), name
            assert h5[name].dtype == np.float32, name
        assert h5["sign"].shape == (n, 4630) and h5["sign"].dtype == np.int8
        ic = h5["intensity_calc"][...]
        assert np.isfinite(ic).all() and (ic >= 0).all()
        assert np.isfinite(h5["phase_calc"][...]).all()
        assert set(np.unique(h5["sign"][...])) <= {-1, 0, 1}
        centric = h5["structures/centric_origin"][...]
        sign = h5["sign"][...]
        assert np.all(sign[~centric] == -1)
        assert np.all((sign[centric] >= 0).sum(axis=1) > 0)


def test_measured_intensities(built):
    out, _ = built
    with h5py.File(out, "r") as h5:
        obs = h5["intensity_obs"][...]
        has_obs = h5["structures/has_obs"][...]
        n_grid = h5["structures/n_obs_grid"][...]
        ids = h5["structures/id"].asstr()[...]
        corr = h5["structures/obs_calc_corr"][...]
    assert has_obs.sum() >= len(MEASURED)
    for name in MEASURED:
        i = [k for k, sid in enumerate(ids) if sid.startswith(name + "#")]
        assert i and has_obs[i[0]], name
    # NaN where not measured, never 0 as a stand-in
    assert np.isnan(obs[~has_obs]).all()
    assert np.array_equal(np.isfinite(obs).sum(axis=1), n_grid)
    assert np.isnan(obs[has_obs]).any()
    assert np.all(corr[has_obs] > 0.9) and np.isnan(corr[~has_obs]).all()


def test_structure_columns_and_atoms(built, inputs):
    out, summary = built
    n = summary.n_structures
    expected = {s.id.split("/")[-1]: s for s in _expected_structures(inputs)[0]}
    with h5py.File(out, "r") as h5:
        g = h5["structures"]
        assert set(STRUCTURE_COLUMNS) <= set(g)
        for k in STRUCTURE_COLUMNS:
            assert g[k].shape[0] == n, k
            assert "meaning" in g[k].attrs
        assert g["cell"].shape == (n, 6)
        ids = g["id"].asstr()[...]
        assert len(set(ids)) == n
        n_atoms = g["n_atoms"][...]
        a = h5["atoms"]
        offset = a["offset"][...]
        assert offset.shape == (n + 1,) and offset[0] == 0
        assert np.array_equal(np.diff(offset), n_atoms)
        for k in ("label", "element", "charge", "frac", "occupancy", "u_iso", "u_aniso",
                  "u_defaulted"):
            assert a[k].shape[0] == offset[-1], k
        labels = a["label"].asstr()[...]
        elements = a["element"].asstr()[...]
        frac = a["frac"][...]
        for i, sid in enumerate(ids):
            s = expected[sid]
            lo, hi = offset[i], offset[i + 1]
            assert n_atoms[i] == len(s.atoms)
            assert list(labels[lo:hi]) == list(s.atoms.label)
            assert list(elements[lo:hi]) == list(s.atoms.element)
            assert np.array_equal(frac[lo:hi], s.atoms.frac)
        nacl = [i for i, sid in enumerate(ids) if sid.startswith("PyXtal_NaCl.cif#")][0]
        assert a["charge"][offset[nacl]:offset[nacl + 1]].tolist() == [1, -1]
        assert g["n_u_defaulted"][nacl] == 2
        assert "U_iso" in g["notes"].asstr()[nacl]
        multi = [sid for sid in ids if sid.startswith("FinalCif_multi.cif#")]
        assert len(multi) == 3


def test_attributes_and_failures(built, inputs):
    out, summary = built
    with h5py.File(out, "r") as h5:
        at = h5.attrs
        assert int(at["schema_version"]) == 1
        assert bool(at["complete"]) is True
        assert at["phasenet_version"] == phasenet.__version__
        opts = json.loads(at["build_options"])
        assert opts["max_index"] == 10 and opts["normalisation"] == "linreg"
        assert "workers" not in opts
        fails = json.loads(at["failures"])
        assert int(at["n_failures"]) == len(fails) == len(summary.failures)
        assert int(at["n_structures"]) == summary.n_structures
        assert int(at["n_inputs"]) == len(inputs)
    by_file = {}
    for f in fails:
        assert set(f) >= {"source", "block", "reason", "kind"}
        assert f["reason"]
        by_file.setdefault(os.path.basename(f["source"]), []).append(f)
    for name, words in DAMAGED.items():
        assert name in by_file, f"{name} not in the failure report"
        assert any(words in f["reason"] for f in by_file[name]), by_file[name]
    assert summary.failures_by_kind == {
        k: sum(1 for f in fails if f["kind"] == k) for k in {f["kind"] for f in fails}}


def test_split(built, inputs, tmp_path):
    out, summary = built
    table = read_structures_table(out)
    assert len(table) == summary.n_structures
    assert set(table.split) <= {"train", "test"}
    assert {"id", "space_group", "a", "gamma", "split", "formula"} <= set(table.columns)
    # a rebuild (other worker count) is identical, split included
    again = tmp_path / "again.h5"
    build_dataset(inputs, again, BuildOptions(workers=1), progress=False)
    _assert_same_file(out, again)
    # the share of test structures is about test_fraction: check on many ids
    from phasenet.io.hdf5 import split_for_ids

    ids = [f"file{i}.cif#b" for i in range(7000)]
    share = (split_for_ids(ids, 1 / 7, 0) == "test").mean()
    assert share == pytest.approx(1 / 7, abs=0.015)
    assert not np.array_equal(split_for_ids(ids, 1 / 7, 0), split_for_ids(ids, 1 / 7, 1))
    # adding files does not move the others
    assert np.array_equal(split_for_ids(ids[:100], 1 / 7, 0), split_for_ids(ids, 1 / 7, 0)[:100])


def test_r2_max(inputs, tmp_path):
    out = tmp_path / "r709.h5"
    s = build_dataset(inputs[:6], out, BuildOptions(r2_max=50, workers=1, normalisation="wilson"),
                      progress=False)
    with h5py.File(out, "r") as h5:
        assert h5["hkl"].shape == (709, 3)
        assert h5["intensity"].shape == (s.n_structures, 709)
        assert json.loads(h5.attrs["build_options"])["r2_max"] == 50


def test_existing_output_and_foreign_parts(inputs, tmp_path):
    files = inputs[:3]
    out = tmp_path / "x.h5"
    build_dataset(files, out, BuildOptions(workers=1), progress=False)
    with pytest.raises(BuildError, match="exists"):
        build_dataset(files, out, BuildOptions(workers=1), progress=False)
    build_dataset(files, out, BuildOptions(workers=1), overwrite=True, progress=False)
    # a parts folder from a build with other inputs or options
    out2 = tmp_path / "y.h5"
    parts = out2.with_name(out2.name + ".parts")
    parts.mkdir()
    (parts / "build.json").write_text(json.dumps({"fingerprint": "another build", "n_files": 9}))
    (parts / "part-000000.h5").write_bytes(b"not from this build")
    with pytest.raises(BuildError, match="interrupted build with other inputs or options"):
        build_dataset(files, out2, BuildOptions(workers=1), progress=False)
    assert not out2.exists()
    s = build_dataset(files, out2, BuildOptions(workers=1), overwrite=True, progress=False)
    assert out2.is_file() and s.resumed_parts == 0
    # a different option is a different build too
    out3 = tmp_path / "z.h5"
    parts3 = out3.with_name(out3.name + ".parts")
    build_dataset(files, out3, BuildOptions(workers=1, seed=1), progress=False)
    out3.unlink()
    parts3.mkdir()
    from phasenet.pipeline.build import _fingerprint

    (parts3 / "build.json").write_text(json.dumps(
        {"fingerprint": _fingerprint(files, BuildOptions(seed=1))}))
    with pytest.raises(BuildError, match="other inputs or options"):
        build_dataset(files, out3, BuildOptions(workers=1, seed=2), progress=False)


def test_no_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no input files"):
        build_dataset([tmp_path / "empty"], tmp_path / "o.h5", progress=False)
    with pytest.raises(BuildError, match="not found"):
        build_dataset([tmp_path / "nope.cif"], tmp_path / "o.h5", progress=False)


@pytest.mark.slow
def test_resume_after_sigkill(inputs, real_cif_dir, tmp_path):
    """Kill a build (SIGKILL) with some parts written, run it again: the result equals an
    uninterrupted build of the same inputs and options.

    The kill lands at a fixed point whatever the machine's speed: one input is a named
    pipe, on which the build blocks (opening it waits for a writer), so the parts before
    its slice are written and no later one can be. For the rerun the pipe is replaced by
    a regular CIF at the same path (the same inputs, so the parts are reused)."""
    # two folder links to the corpus around the pipe fix the sorted order:
    # first/<8 files>, pipe.cif, second/<the rest> (paired .hkl/.fcf files stay beside them)
    (tmp_path / "a_first").symlink_to(real_cif_dir, target_is_directory=True)
    (tmp_path / "c_second").symlink_to(real_cif_dir, target_is_directory=True)
    n_before = 8
    pipe = tmp_path / "b_pipe.cif"
    os.mkfifo(pipe)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join([*(f"a_first/{p.name}" for p in inputs[:n_before]), pipe.name,
                                   *(f"c_second/{p.name}" for p in inputs[n_before:])]) + "\n")
    out = tmp_path / "resumed.h5"
    parts = out.with_name(out.name + ".parts")
    cmd = [sys.executable, "-m", "phasenet.cli", "build", str(listing), "-o", str(out),
           "--workers", "1", "--chunk-size", "2", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    n_done = n_before // 2  # 2 files per part: the pipe's slice is the next one
    deadline = time.monotonic() + 300  # against hanging only
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("part-*.h5"))) >= n_done:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the build ended (rc {proc.returncode}): {proc.stderr.read().decode()[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "an interrupted build left an output that looks complete"
    done = sorted(p.name for p in parts.glob("part-*.h5"))
    assert done == [f"part-{i:06d}.h5" for i in range(n_done)]
    assert 2 <= len(done) < len(inputs) // 2

    pipe.unlink()
    pipe.write_bytes(inputs[0].read_bytes())  # now a regular file: the build can pass it
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr  # 1: written, some inputs failed
    assert f"{n_done} parts reused from an interrupted build" in r.stdout
    assert out.is_file() and not parts.exists()

    ref = tmp_path / "reference.h5"
    from phasenet.cli import main

    assert main(["build", str(listing), "-o", str(ref), "--workers", "2", "--chunk-size", "2",
                 "--quiet"]) == 1
    _assert_same_file(out, ref)
    with h5py.File(out, "r") as h5:
        assert bool(h5.attrs["complete"])
        assert h5.attrs["n_inputs"] == len(inputs) + 1
