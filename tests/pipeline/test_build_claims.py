"""The README's promises about `phasenet build` / `phasenet info` that need no real data:
`--default-u`, `--no-observations`, `--compression`, `info --all-failures`, and the
`bad-adp` and `compute-error` failure kinds. Small hand-written CIFs, in-process CLI."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json

import h5py
import numpy as np
import pytest

from phasenet.cli import EXIT_FAILURES, EXIT_OK, main
from phasenet.io.hdf5 import read_atoms, read_structures_table

HEAD = """data_{name}
_cell_length_a 5.0
_cell_length_b 6.0
_cell_length_c 7.0
_cell_angle_alpha 90
_cell_angle_beta 95
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P -1'
loop_
_symmetry_equiv_pos_as_xyz
x,y,z
-x,-y,-z
"""
ATOMS_U = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
C1 C 0.10 0.20 0.30 {u1}
O1 O 0.30 0.10 0.25 0.04
"""
ATOMS_NO_U = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
C1 C 0.10 0.20 0.30
O1 O 0.30 0.10 0.25
N1 N 0.20 0.35 0.05
"""
#: a far from positive-definite anisotropic U: kept and noted by the reader, but the
#: structure factors overflow, so the structure fails with kind compute-error
ANISO_BAD = """loop_
_atom_site_aniso_label
_atom_site_aniso_U_11
_atom_site_aniso_U_22
_atom_site_aniso_U_33
_atom_site_aniso_U_12
_atom_site_aniso_U_13
_atom_site_aniso_U_23
C1 -2.0 -2.0 -2.0 0 0 0
"""


def refln_loop(n=12):
    rows = "\n".join(f"{h} {k} {l} {100.0 / (1 + h + k + l):.3f} 1.0"
                     for h, k, l in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1),
                                     (1, 1, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2), (2, 1, 0), (1, 2, 0)][:n])
    return ("loop_\n_refln_index_h\n_refln_index_k\n_refln_index_l\n_refln_F_squared_meas\n"
            "_refln_F_squared_sigma\n" + rows + "\n")


def write(folder, name, *parts):
    p = folder / f"{name}.cif"
    p.write_text(HEAD.format(name=name) + "".join(parts))
    return p


@pytest.fixture(scope="module")
def cifs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifs")
    return {
        "good": write(d, "good", ATOMS_U.format(u1=0.03)),
        "no_u": write(d, "no_u", ATOMS_NO_U),
        "measured": write(d, "measured", ATOMS_U.format(u1=0.03), refln_loop()),
        "bad_adp": write(d, "bad_adp", ATOMS_U.format(u1=-0.02)),
        "overflow": write(d, "overflow", ATOMS_U.format(u1=0.03), ANISO_BAD),
    }


def build(inputs, out, *options):
    return main(["build", *map(str, inputs), "-o", str(out), "--workers", "1", "--quiet", *options])


def test_bad_adp_and_compute_error_are_failure_kinds(cifs, tmp_path):
    """A negative U_iso fails its structure as bad-adp; structure factors that overflow (a
    far from positive-definite anisotropic U) as compute-error; the build goes on (exit 1)."""
    out = tmp_path / "k.h5"
    assert build([cifs["good"], cifs["bad_adp"], cifs["overflow"]], out) == EXIT_FAILURES
    with h5py.File(out, "r") as h5:
        failures = {f["source"].rsplit("/", 1)[-1]: f for f in json.loads(h5.attrs["failures"])}
        assert h5.attrs["n_structures"] == 1 and h5.attrs["n_failures"] == 2
    assert failures["bad_adp.cif"]["kind"] == "bad-adp"
    assert "negative U_iso" in failures["bad_adp.cif"]["reason"] and "C1" in failures["bad_adp.cif"]["reason"]
    assert failures["overflow.cif"]["kind"] == "compute-error"
    assert "overflow" in failures["overflow.cif"]["reason"]


def test_default_u_for_atoms_without_displacement_parameters(cifs, tmp_path):
    """--default-u: the U_iso of atoms without displacement parameters, counted in
    n_u_defaulted, flagged per atom and noted; atoms with their own U keep it."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert build([cifs["no_u"], cifs["good"]], a) == EXIT_OK
    assert build([cifs["no_u"], cifs["good"]], b, "--default-u", "0.01") == EXIT_OK
    for path, u in ((a, 0.04), (b, 0.01)):  # 0.04 Å² is the default
        table = read_structures_table(path).set_index("block")
        assert table.loc["no_u", "n_u_defaulted"] == 3 and table.loc["good", "n_u_defaulted"] == 0
        assert f"3 atoms without displacement parameters got U_iso={u:g}" in table.loc["no_u", "notes"]
        i = list(table.index).index("no_u")
        atoms = read_atoms(path, i)
        assert atoms.u_defaulted.all() and np.allclose(atoms.u_iso, u)
        good = read_atoms(path, list(table.index).index("good"))
        assert not good.u_defaulted.any() and np.allclose(good.u_iso, [0.03, 0.04])
        with h5py.File(path, "r") as h5:
            assert json.loads(h5.attrs["build_options"])["default_u"] == u
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        i = list(read_structures_table(a).block).index("no_u")
        ia, ib = ha["intensity_calc"][i], hb["intensity_calc"][i]
        r2 = (ha["hkl"][:] ** 2).sum(1)
        high = r2 > 50
        assert (ib[high] > ia[high]).mean() > 0.95  # smaller U: stronger high-angle intensities
        j = list(read_structures_table(a).block).index("good")
        assert np.array_equal(ha["intensity_calc"][j], hb["intensity_calc"][j])


def test_no_observations_ignores_measured_reflections(cifs, tmp_path):
    """--no-observations: measured reflections are not read (intensity_obs all NaN)."""
    a, b = tmp_path / "obs.h5", tmp_path / "noobs.h5"
    assert build([cifs["measured"]], a, "--normalisation", "max") == EXIT_OK
    assert build([cifs["measured"]], b, "--normalisation", "max", "--no-observations") == EXIT_OK
    ta, tb = read_structures_table(a), read_structures_table(b)
    assert bool(ta.has_obs[0]) and ta.n_obs[0] == 12
    assert not bool(tb.has_obs[0]) and tb.n_obs[0] == 0
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        assert np.isfinite(ha["intensity_obs"][0]).sum() == 12
        assert np.isnan(hb["intensity_obs"][0]).all()
        assert np.array_equal(ha["intensity_calc"][:], hb["intensity_calc"][:])


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_compression_option(cifs, tmp_path, compression):
    """--compression {lzf,gzip,none}: the per-structure arrays' filter (lzf by default),
    one structure per chunk, the same values."""
    out = tmp_path / f"{compression}.h5"
    extra = [] if compression == "lzf" else ["--compression", compression]
    assert build([cifs["good"], cifs["no_u"]], out, *extra) == EXIT_OK
    ref = tmp_path / "ref.h5"
    assert build([cifs["good"], cifs["no_u"]], ref) == EXIT_OK
    with h5py.File(out, "r") as h5, h5py.File(ref, "r") as h0:
        for name in ("intensity_calc", "phase_calc", "intensity_obs", "intensity", "sign"):
            d = h5[name]
            assert d.compression == (None if compression == "none" else compression), name
            assert d.chunks == (1, d.shape[1]), name
            assert np.array_equal(d[:], h0[name][:], equal_nan=True), name


def test_info_all_failures(tmp_path, capsys):
    """`phasenet info` lists the first 20 failures and says how many more;
    `--all-failures` lists every one."""
    d = tmp_path / "broken"
    d.mkdir()
    write(d, "good", ATOMS_U.format(u1=0.03))
    for i in range(23):
        (d / f"broken_{i:02d}.cif").write_text(f"data_b{i}\n_cell_length_a 5\n")  # no full cell
    out = tmp_path / "f.h5"
    assert build([d], out) == EXIT_FAILURES
    capsys.readouterr()
    assert main(["info", str(out)]) == EXIT_OK
    short = capsys.readouterr().out
    assert sum("broken_" in line for line in short.splitlines()) == 20
    assert "... 3 more (phasenet info --all-failures)" in short
    assert main(["info", str(out), "--all-failures"]) == EXIT_OK
    full = capsys.readouterr().out
    assert sum("broken_" in line for line in full.splitlines()) == 23 and "more (phasenet info" not in full
    for i in range(23):
        assert f"broken_{i:02d}.cif" in full
