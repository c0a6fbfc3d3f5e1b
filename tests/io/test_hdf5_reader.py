"""The dataset reader (phasenet.io.hdf5.DatasetReader) against plain h5py reads, and its
errors on files that are not finished phasenet datasets."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import shutil

import h5py
import numpy as np
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.io.hdf5 import (
    ATOM_COLUMNS, ROW_ARRAYS, SCHEMA_VERSION, STRUCTURE_COLUMNS, DatasetError, DatasetReader,
    dataset_info, read_atoms, read_structures_table)
from phasenet.reflection_data import ReflectionData
from phasenet.synth.generate import synth_dataset
from phasenet.synth.options import DENSE, SynthOptions

#: P-1 with measured reflections (embedded), P2₁/n light atoms, Pca2₁ (no inversion centre)
FILES = ["FinalCif_alert_example.cif", "NoSpherA2_epoxide.cif", "cod-tools_2219444.cif"]


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


@pytest.fixture(scope="module")
def real_h5(real_cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "real.h5"
    build_dataset([real_cif_dir / f for f in FILES], out,
                  BuildOptions(r2_max=50, test_fraction=0.5, workers=1), progress=False)
    return out


@pytest.fixture(scope="module")
def synth_h5(tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "synth.h5"
    synth_dataset(4, out, SynthOptions(seed=5, workers=1, atoms=(6, 12), r2_max=50, **DENSE),
                  progress=False)
    return out


def _check_against_h5py(path):
    with DatasetReader(path) as ds, h5py.File(path, "r") as h5:
        n = h5["intensity"].shape[0]
        assert len(ds) == n == int(h5.attrs["n_structures"]) > 0
        assert ds.schema_version == SCHEMA_VERSION
        assert ds.hkl.dtype == h5["hkl"].dtype and np.array_equal(ds.hkl, h5["hkl"][...])
        assert not ds.hkl.flags.writeable
        assert ds.build_options == json.loads(h5.attrs["build_options"])
        assert ds.failures == json.loads(h5.attrs["failures"])
        for k in STRUCTURE_COLUMNS:
            want = h5["structures"][k][...]
            if want.dtype == object:
                want = np.array([_text(x) for x in want], dtype=object)
                assert all(isinstance(x, str) for x in ds.column(k)), k
            assert np.array_equal(ds.column(k), want, equal_nan=want.dtype.kind == "f"), k
        split = np.array([_text(x) for x in h5["structures/split"][...]])
        for name in ("train", "test"):
            assert np.array_equal(ds.split_mask(name), split == name)
        offsets = h5["atoms/offset"][...]
        for i in range(n):
            r = ds.reflections(i)
            assert isinstance(r, ReflectionData) and len(r) == len(ds.hkl)
            assert np.array_equal(r.hkl, h5["hkl"][...])
            for k in ROW_ARRAYS:
                want = h5[k][i]
                got = getattr(r, k)
                assert got.dtype == want.dtype, k
                assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), (i, k)
                assert np.array_equal(ds.row(k, i), want, equal_nan=want.dtype.kind == "f")
            assert r.cell == tuple(h5["structures/cell"][i])
            assert ";".join(r.symops) == _text(h5["structures/symops"][i])
            assert r.space_group == _text(h5["structures/space_group"][i])
            lo, hi = offsets[i], offsets[i + 1]
            atoms = ds.atoms(i)
            assert len(atoms) == hi - lo == int(h5["structures/n_atoms"][i])
            for k in ATOM_COLUMNS:
                want = h5["atoms"][k][lo:hi]
                if want.dtype == object:
                    want = np.array([_text(x) for x in want])
                assert np.array_equal(getattr(atoms, k), want, equal_nan=want.dtype.kind == "f"), k
            table = read_atoms(path, i)
            assert list(table["label"]) == list(atoms.label)
            assert np.array_equal(table[["x", "y", "z"]].to_numpy(), atoms.frac)
        idx = np.array([0, n - 1]) if n > 1 else np.array([0])
        assert np.array_equal(ds.rows("sign", idx), h5["sign"][...][idx])
        with pytest.raises(IndexError, match=f"{path.name}: structure {n} out of range"):
            ds.reflections(n)
        with pytest.raises(KeyError, match="not a per-row array"):
            ds.row("hkl", 0)
    table = read_structures_table(path)
    assert len(table) == n and list(table["id"]) == list(ds.ids)
    assert np.array_equal(table[["a", "b", "c", "alpha", "beta", "gamma"]].to_numpy(),
                          h5py.File(path, "r")["structures/cell"][...])
    info = dataset_info(path)
    assert info["n_structures"] == n and sum(info["splits"].values()) == n


@pytest.mark.real_data
def test_reader_equals_h5py_on_a_build(real_h5):
    _check_against_h5py(real_h5)
    with DatasetReader(real_h5) as ds:
        assert ds.column("has_obs").any()  # the measured reflections came through
        i = int(np.flatnonzero(ds.column("has_obs"))[0])
        assert ds.reflections(i).observed.sum() == ds.column("n_obs_grid")[i] > 0


def test_reader_equals_h5py_on_synth(synth_h5):
    _check_against_h5py(synth_h5)


def test_columns_are_read_only(synth_h5):
    with DatasetReader(synth_h5) as ds:
        with pytest.raises(ValueError):
            ds.column("cell")[0, 0] = 1.0
        r = ds.reflections(0)
        with pytest.raises(ValueError):
            r.intensity[0] = 1.0


# ---- bad files ---------------------------------------------------------------------------
def test_not_hdf5(tmp_path):
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"this is not HDF5")
    with pytest.raises(DatasetError, match=r"junk\.h5: not a readable HDF5 file"):
        DatasetReader(bad)
    with pytest.raises(DatasetError, match=r"nothere\.h5: not a readable HDF5 file"):
        DatasetReader(tmp_path / "nothere.h5")


def _with_attrs(src, dst, **attrs):
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as h5:
        for k, v in attrs.items():
            if v is None:
                del h5.attrs[k]
            else:
                h5.attrs[k] = v
    return dst


def test_wrong_schema_version(synth_h5, tmp_path):
    newer = _with_attrs(synth_h5, tmp_path / "newer.h5", schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(DatasetError, match=rf"newer\.h5: schema version {SCHEMA_VERSION + 1} is newer"):
        DatasetReader(newer)
    none = _with_attrs(synth_h5, tmp_path / "none.h5", schema_version=None)
    with pytest.raises(DatasetError, match=r"none\.h5: not a complete phasenet dataset \(no schema_version"):
        DatasetReader(none)
    zero = _with_attrs(synth_h5, tmp_path / "zero.h5", schema_version=0)
    with pytest.raises(DatasetError, match=r"zero\.h5: schema version 0 is unknown"):
        DatasetReader(zero)
    with pytest.raises(DatasetError, match=r"none\.h5"):
        dataset_info(none)


def test_incomplete(synth_h5, tmp_path):
    partial = _with_attrs(synth_h5, tmp_path / "partial.h5", complete=False)
    with pytest.raises(DatasetError, match=r"partial\.h5: not a complete phasenet dataset \(incomplete"):
        DatasetReader(partial)
    # a complete file that lacks a member: the error names the file and the member
    gone = tmp_path / "gone.h5"
    shutil.copyfile(synth_h5, gone)
    with h5py.File(gone, "r+") as h5:
        del h5["phase_calc"]
        del h5["structures/cell"]
    with DatasetReader(gone) as ds:
        with pytest.raises(DatasetError, match=r"gone\.h5: missing 'phase_calc'"):
            ds.row("phase_calc", 0)
        with pytest.raises(DatasetError, match=r"gone\.h5: missing 'structures/cell'"):
            ds.cell(0)
        with pytest.raises(DatasetError, match=r"gone\.h5: missing 'phase_calc', 'structures/cell'"):
            ds.require("hkl", "phase_calc", "structures/cell")


def test_reader_closes_the_file(synth_h5):
    with DatasetReader(synth_h5) as ds:
        h5 = ds.h5
        assert h5.id.valid
    assert not h5.id.valid
