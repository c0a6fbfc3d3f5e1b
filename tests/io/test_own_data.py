"""The reader on the project's own small files (tests/data, made by
make_test_data.py): every value phasenet reads is checked against iotbx's reading
of the same file, and the reflections against iotbx's SHELX reader. Needs no
../shared."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.io.cif import ReadFailure, read_cif
from phasenet.structure import Structure

STRUCTURE_FILES = {  # file -> blocks (in order)
    "p-1_organic.cif": ["p-1_organic"],
    "p21n_aniso.cif": ["p21n_aniso"],
    "ionic_pnma.cif": ["ionic_pnma"],
    "c2c_special.cif": ["c2c_special"],
    "two_blocks.cif": ["a_p212121", "b_r-3"],
}


def _iotbx(path):
    import iotbx.cif

    return iotbx.cif.reader(file_path=str(path)).build_crystal_structures()


def _all_ops(triplets):
    from cctbx import sgtbx

    sg = sgtbx.space_group()
    for t in triplets:
        sg.expand_smx(t)
    return sg


@pytest.mark.parametrize("name", sorted(STRUCTURE_FILES))
def test_reading_equals_iotbx(test_data, name):
    """Cell, operators, labels, elements and charges, sites, occupancies and U (U_ij
    where given) as iotbx reads them."""
    from cctbx import adptbx

    path = test_data(name)
    items = read_cif(path, read_observations=False)
    assert all(isinstance(x, Structure) for x in items), [str(x) for x in items]
    assert [s.block for s in items] == STRUCTURE_FILES[name]
    ref = _iotbx(path)
    for s in items:
        xs = ref[s.block]
        assert s.cell == pytest.approx(xs.unit_cell().parameters(), abs=1e-6)
        ours = _all_ops(s.symops)
        assert {str(op) for op in ours.all_ops()} == {str(op) for op in xs.space_group().all_ops()}
        assert s.sg_number == xs.space_group_info().type().number()
        sc = xs.scatterers()
        assert list(s.atoms.label) == [x.label for x in sc]
        from cctbx.eltbx import xray_scattering

        for i, x in enumerate(sc):
            std = xray_scattering.get_standard_label(x.scattering_type)
            el = std.rstrip("+-0123456789")
            charge = std[len(el):]
            want = 0 if not charge else int(charge[:-1] or 1) * (1 if charge[-1] == "+" else -1)
            assert (s.atoms.element[i], int(s.atoms.charge[i])) == (el, want), x.label
            # iotbx puts atoms on special positions exactly; the files give them exactly
            assert s.atoms.frac[i] == pytest.approx(x.site, abs=1e-9), x.label
            assert s.atoms.occupancy[i] == pytest.approx(x.occupancy), x.label
            if x.flags.use_u_aniso():
                u_cif = adptbx.u_star_as_u_cif(xs.unit_cell(), x.u_star)
                assert s.atoms.u_aniso[i] == pytest.approx(u_cif, abs=1e-9), x.label
                assert s.atoms.u_iso[i] == pytest.approx(
                    adptbx.u_star_as_u_iso(xs.unit_cell(), x.u_star), abs=1e-5), x.label
            else:
                assert np.isnan(s.atoms.u_aniso[i]).all(), x.label
                assert s.atoms.u_iso[i] == pytest.approx(x.u_iso, abs=1e-9), x.label
        assert not s.atoms.u_defaulted.any()
        assert s.notes == ()


def test_the_files_cover_what_they_are_for(test_data):
    """Ions, anisotropic U, atoms on an inversion centre and on a 2-fold axis, a
    half-occupied site, old-style _symmetry_ tags: the files hold what the README says."""
    got = {s.block: s for n in STRUCTURE_FILES for s in read_cif(test_data(n), read_observations=False)}
    ionic = got["ionic_pnma"].atoms
    assert {(str(e), int(c)) for e, c in zip(ionic.element, ionic.charge)} == {
        ("Na", 1), ("Mg", 2), ("Cl", -1), ("O", -2), ("K", 1)}
    assert got["ionic_pnma"].sg_number == 62
    special = got["c2c_special"]
    assert special.sg_number == 15
    assert special.atoms.frac[0].tolist() == [0.0, 0.0, 0.0]  # Fe1 on an inversion centre
    assert special.atoms.frac[1][[0, 2]].tolist() == [0.0, 0.25]  # Na1 on the 2-fold axis
    assert special.atoms.u_aniso[1][[3, 5]].tolist() == [0.0, 0.0]  # U12 = U23 = 0 there
    assert np.isfinite(special.atoms.u_aniso).all()
    aniso = got["p21n_aniso"].atoms
    heavy = aniso.element != "H"
    assert np.isfinite(aniso.u_aniso[heavy]).all() and np.isnan(aniso.u_aniso[~heavy]).all()
    assert got["b_r-3"].space_group == "R -3:H" and 0.5 in got["b_r-3"].atoms.occupancy


def _iotbx_hklf(text):
    import io

    import iotbx.shelx.hklf

    r = iotbx.shelx.hklf.reader(file_object=io.StringIO(text))
    return (np.array(r.indices(), dtype=int).reshape(-1, 3), np.array(r.data()), np.array(r.sigmas()))


@pytest.mark.parametrize("name, origin, hkl_file", [
    ("p-1_organic.cif", "_shelx_hkl_file", None),
    ("p21n_aniso.cif", "paired p21n_aniso.hkl", "p21n_aniso.hkl"),
])
def test_reflections_equal_iotbx_shelx_reader(test_data, name, origin, hkl_file):
    """Embedded and paired HKLF 4 reflections, as iotbx's SHELX reader reads them."""
    import gemmi

    s = read_cif(test_data(name))[0]
    obs = s.observations
    assert obs is not None and obs.origin == origin and obs.kind == "F2"
    if hkl_file:
        text = test_data(hkl_file).read_text()
    else:
        text = gemmi.cif.as_string(gemmi.cif.read(str(test_data(name))).sole_block()
                                   .find_value("_shelx_hkl_file")).lstrip("\n")
    hkl, i, sigma = _iotbx_hklf(text)
    assert len(hkl) > 1000
    assert np.array_equal(obs.hkl, hkl)
    # (iotbx's C++ number parser may differ from Python's in the last bit)
    np.testing.assert_allclose(obs.value, i, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(obs.sigma, sigma, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", ["p-1_organic.cif", "p21n_aniso.cif"])
def test_measured_intensities_fit_their_model(test_data, name):
    """The intensities were computed by cctbx from the model with 2 % noise: merged onto
    phasenet's grid they correlate with phasenet's I_calc (and equivalents merge)."""
    from phasenet.pipeline.records import compute_record
    from phasenet.reflections import canonical_hkl

    s = read_cif(test_data(name))[0]
    rec = compute_record(s, canonical_hkl())
    m = rec.merged
    assert m.n_on_grid > 500
    if name.startswith("p21n"):  # measured with symmetry mates: fewer unique than measured
        assert m.n_unique < m.n_measured
    assert rec.norm.obs_calc_corr > 0.999, rec.norm.obs_calc_corr


@pytest.mark.parametrize("name, kind, words", [
    ("damaged_no_cell.cif", "no-cell", "unit cell"),
    ("damaged_bad_symmetry.cif", "bad-symmetry", "do not form a group"),
])
def test_damaged_files(test_data, name, kind, words):
    path = test_data(name)
    items = read_cif(path)
    assert len(items) == 1 and isinstance(items[0], ReadFailure)
    f = items[0]
    assert (f.kind, f.source) == (kind, str(path)), str(f)
    assert words in f.reason and str(path) in str(f)


def test_data_files_are_what_the_script_makes(test_data, tmp_path):
    """tests/data is reproducible: make_test_data.py writes the same bytes again."""
    import subprocess
    import sys

    script = test_data("make_test_data.py")
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in script.parent.iterdir()
                          if p.suffix in (".cif", ".hkl"))
    for name in made:
        assert (tmp_path / name).read_bytes() == test_data(name).read_bytes(), name
