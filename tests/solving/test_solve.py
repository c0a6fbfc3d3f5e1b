"""``phasenet solve`` end to end on real measured data (P-1 and P2₁/n), its files read
back with gemmi, the errors it gives for bad inputs, truncation and reindexing."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import shutil

import gemmi
import numpy as np
import pytest

from phasenet.cli import solve as solve_cli
from phasenet.cli.common import EXIT_ERROR, EXIT_OK
from phasenet.baselines.registry import PhasingMethod, method_names, register_method, unregister_method
from phasenet.evaluation.metrics import score_phases
from phasenet.physics.structure_factors import structure_factors
from phasenet.solving.errors import SolveError
from phasenet.solving.inputs import read_input
from phasenet.solving.methods import unavailable
from phasenet.solving.prepare import MIN_REFLECTIONS
from phasenet.solving.solver import solve
from phasenet.symmetry import symmetry
from tests.conftest import first_structure
from tests.io.test_solution import read_res

#: small real structures whose measured data fit the model (manifest: data_fits_model_R1 < 0.15)
REAL = {"P -1": "cod-tools_2242045.cif", "P 1 21/n 1": "ccdc-bestcsp_MCE-PNA_manual.cif"}
#: a real structure with a heavy atom (Au, P2₁/c, R1 0.017 against its measured data)
HEAVY = "cod-tools_1518592.cif"


def read_mtz(path):
    mtz = gemmi.read_mtz_file(str(path))
    labels = [c.label for c in mtz.columns]
    data = np.array(mtz, copy=False)
    return mtz, labels, data[:, :3].astype(int), data[:, labels.index("F")], np.radians(data[:, labels.index("PHI")])


@pytest.fixture(scope="module", params=sorted(REAL))
def solved(request, real_cif, tmp_path_factory):
    path = real_cif(REAL[request.param])
    out = tmp_path_factory.mktemp("solve") / "out"
    assert solve_cli.run([str(path), "-o", str(out), "--quiet"]) == EXIT_OK
    return request.param, path, out


def test_charge_flipping_solves_real_data_at_full_resolution(solved):
    sg, path, out = solved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "charge-flipping" and summary["d_min_requested"] is None
    assert summary["d_min"] == pytest.approx(summary["d_min_data"])
    mtz, labels, hkl, f, phi = read_mtz(out / "solution.mtz")
    assert labels[:3] == ["H", "K", "L"] and {"F", "PHI", "E"} <= set(labels)
    assert mtz.spacegroup.xhm() == sg  # the input's setting
    s = first_structure(path)
    np.testing.assert_allclose(mtz.cell.parameters, s.cell, atol=1e-3)
    f_true = structure_factors(s, hkl, dtype=np.float64)
    score, _ = score_phases(hkl, f, np.angle(f_true), phi, s.symops)
    assert score.map_cc >= 0.7, (sg, score)
    # map and .res read back
    ccp4 = gemmi.read_ccp4_map(str(out / "map.ccp4"))
    np.testing.assert_allclose(ccp4.grid.unit_cell.parameters, s.cell, atol=1e-3)
    assert ccp4.grid.spacegroup.xhm() == sg
    rho = np.array(ccp4.grid, copy=False)
    assert rho.max() > 5 * rho.std()
    cell, res_sym, atoms = read_res(out / "solution.res")
    np.testing.assert_allclose(cell, s.cell, atol=1e-3)
    assert res_sym == symmetry(s.symops)  # CELL and SYMM are the input's (P2₁/n stays P2₁/n)
    assert len(atoms) == summary["n_peaks"] > 5
    # the peaks lie on atoms of the published structure (at the best origin the CC found)
    true = s.atoms.frac[~np.isin(s.atoms.element, ["H", "D"])]
    peaks = np.array([a[2] for a in atoms])
    shift = np.array(score.origin_shift)
    sym = symmetry(s.symops)
    imgs = (np.einsum("oij,nj->noi", sym.rotations, true) + sym.translations[None]).reshape(-1, 3)
    if score.inverted:
        peaks = -peaks
    from phasenet.evaluation.maps import min_distances

    d = min_distances(peaks - shift, imgs, s.cell)
    assert np.mean(d < 0.5) >= 0.6, np.round(d, 2)


def test_summary_text_and_files(solved):
    sg, _, out = solved
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["solution.mtz", "map.ccp4", "peaks.csv", "solution.res", "summary.txt", "summary.json"])
    text = (out / "summary.txt").read_text()
    assert "charge-flipping" in text and "fom" in text and "completeness" in text
    if sg == "P 1 21/n 1":
        assert "reindexed P 1 21/n 1 -> P 1 21/c 1" in text
    assert not list(out.parent.glob(".out.partial-*"))


def test_truncated_run_says_what_it_did(real_cif, tmp_path, capsys):
    path = real_cif(REAL["P 1 21/n 1"])
    assert solve_cli.run([str(path), "-o", str(tmp_path / "t"), "--d-min", "2.0", "--quiet"]) == EXIT_OK
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["d_min_requested"] == 2.0 and summary["d_min"] >= 2.0 - 1e-9
    dropped = summary["counts"]["dropped_by_d_min"]
    assert dropped > 0.5 * summary["counts"]["unique"]
    note = next(n for n in summary["notes"] if n.startswith("truncated at d_min 2 Å"))
    assert f"{dropped} of" in note and note in printed
    # coarse data, no heavy atom: net if registered, charge flipping when nothing else phases
    assert summary["methods_why"].startswith("data reach only")
    runs = {r["method"]: r for r in summary["runs"]}
    assert summary["method"] in runs and runs[summary["method"]]["status"] == "ok"
    if "net" in method_names() and unavailable("net"):
        assert summary["methods"] == ["net", "charge-flipping"]
        assert runs["net"]["status"] == "not-applicable" and runs["net"]["note"] == unavailable("net")
        assert "charge-flipping as the fallback: net not-applicable" in summary["methods_why"]
    _, _, hkl, _, _ = read_mtz(tmp_path / "t" / "solution.mtz")
    c = summary["counts"]
    assert len(hkl) == summary["n_reflections"] == c["unique"] - c["absent_measured"] - dropped


def test_python_api_returns_phases_map_and_peaks(test_data, tmp_path):
    sol = solve(test_data("p21n_aniso.cif"), seed=1)
    assert sol.method == "charge-flipping" and np.isfinite(sol.phases).all()
    assert sol.density().max() > 5 * sol.density().std()
    assert len(sol.peaks) > 5
    files = sol.write(tmp_path / "o")
    assert json.loads(open(files["summary.json"]).read())["seed"] == 1
    with pytest.raises(SolveError, match="exists and is not empty"):
        sol.write(tmp_path / "o")


# -- bad inputs


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 'unterminated\n")
    assert solve_cli.run([str(bad), "-o", str(tmp_path / "o"), "--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "broken.cif" in err and "error" in err
    with pytest.raises(SolveError) as exc:
        solve(tmp_path / "missing.hkl")
    assert exc.value.kind == "unreadable" and "missing.hkl" in str(exc.value)
    assert not (tmp_path / "o").exists()


def write_hkl(path, hkl, i, sigma):
    path.write_text("".join(f"{h:4d}{k:4d}{l:4d}{a:8.2f}{s:8.2f}\n" for (h, k, l), a, s in zip(hkl, i, sigma))
                    + "   0   0   0    0.00    0.00\n")


@pytest.fixture(scope="module")
def p21n_hkl(test_data):
    """(path of the paired HKLF 4 file, cell) of tests/data/p21n_aniso."""
    s = first_structure(test_data("p21n_aniso.cif"))
    return test_data("p21n_aniso.hkl"), s.cell


def test_hkl_with_options_and_ins(p21n_hkl, tmp_path):
    path, cell = p21n_hkl
    cell_text = " ".join(map(str, cell))
    sol = solve(path, cell=cell_text, space_group="P 1 21/n 1", composition="C10 H10 N2 O S")
    assert sol.summary["setting"]["input"] == "P 1 21/n 1"
    ins = tmp_path / "x.ins"
    ins.write_text(f"TITL x\nCELL 0.71073 {cell_text}\nLATT 1\nSYMM 0.5-X, 0.5+Y, 0.5-Z\n"
                   "SFAC C H N O S\nUNIT 40 40 8 4 4\nHKLF 4\nEND\n")
    sol2 = solve(path, ins=ins)
    assert symmetry(sol2.symops) == symmetry("P 1 21/n 1")
    assert sol2.composition == {"C": 40, "H": 40, "N": 8, "O": 4, "S": 4}
    with pytest.raises(SolveError, match="give --cell or --ins"):
        solve(path, space_group=14)


def test_unsupported_space_group(p21n_hkl):
    path, cell = p21n_hkl
    with pytest.raises(SolveError) as exc:
        solve(path, cell=" ".join(map(str, cell)), space_group="P 99/z")
    assert exc.value.kind == "unsupported-space-group" and "p21n_aniso.hkl" in str(exc.value)


def test_too_few_reflections(p21n_hkl, tmp_path):
    path, cell = p21n_hkl
    lines = path.read_text().splitlines()[:60]
    small = tmp_path / "few.hkl"
    small.write_text("\n".join(lines) + "\n   0   0   0    0.00    0.00\n")
    with pytest.raises(SolveError) as exc:
        solve(small, cell=" ".join(map(str, cell)), space_group="P 1 21/n 1")
    assert exc.value.kind == "too-few-reflections" and "few.hkl" in str(exc.value)
    assert f"at least {MIN_REFLECTIONS}" in str(exc.value)


def test_inconsistent_cell(p21n_hkl, tmp_path):
    """Data declared in a group whose absences they violate (C2/c: h+k odd must be
    absent; in these P2₁/n data they are strong), and a cell far too small for the indices."""
    path, cell = p21n_hkl
    with pytest.raises(SolveError) as exc:  # a C-centred group: h+k odd must be absent, they are strong
        solve(path, cell=" ".join(map(str, cell)), space_group="C 1 2/c 1")
    assert exc.value.kind == "inconsistent-cell" and "p21n_aniso.hkl" in str(exc.value)
    assert "systematically absent are strong" in str(exc.value)
    with pytest.raises(SolveError) as exc:  # a cell far too small for the indices
        solve(path, cell="1.5 1.5 1.5 90 90 90", space_group="P 1 21/n 1")
    assert exc.value.kind == "inconsistent-cell" and "no diffraction experiment" in str(exc.value)


def test_cli_errors_name_the_file(p21n_hkl, tmp_path, capsys):
    path, _ = p21n_hkl
    assert solve_cli.run([str(path), "-o", str(tmp_path / "o"), "--space-group", "14", "--quiet"]) == EXIT_ERROR
    assert "p21n_aniso.hkl: a SHELX .hkl holds no cell" in capsys.readouterr().err
    assert solve_cli.run([str(path), "-o", str(tmp_path / "o"), "--method", "nonesuch", "--quiet"]) == EXIT_ERROR
    assert "Unknown phasing method 'nonesuch'" in capsys.readouterr().err


# -- MTZ input


def write_merged_mtz(cif, path):
    """An MTZ of the merged measured data of a real CIF, read as ``solve`` reads a CIF:
    H K L, FP SIGFP (F, Q) and then I-obs SIGI-obs (J, Q), with its cell and space group.
    Returns the number of unique reflections written."""
    from phasenet.physics.merging import merge_onto_grid
    from phasenet.reflections import d_spacings, laue_asu_keys, sphere_hkl

    data = read_input(cif)
    sym = symmetry(data.symops)
    hkl = np.asarray(data.observations.hkl, dtype=np.int64)
    hkl = hkl[~(hkl == 0).all(axis=1)]
    grid = sphere_hkl(data.cell, float(d_spacings(hkl, data.cell).min()) * (1 - 1e-9))
    _, first = np.unique(laue_asu_keys(grid, sym.rotations), return_index=True)
    grid = grid[first]
    merged = merge_onto_grid(data.observations, sym.rotations, grid)
    ok = np.isfinite(merged.intensity)
    grid, i, sig_i = grid[ok], merged.intensity[ok], merged.sigma[ok]
    assert np.isfinite(sig_i).all() and (sig_i > 0).all()
    f = np.sqrt(np.maximum(i, 0))
    sig_f = np.where(f > 0, sig_i / (2 * np.maximum(f, 1e-9)), np.sqrt(sig_i))
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(t) for t in data.symops]))
    mtz.set_cell_for_all(gemmi.UnitCell(*data.cell))
    mtz.add_dataset("measured").wavelength = data.wavelength
    for label, kind in (("FP", "F"), ("SIGFP", "Q"), ("I-obs", "J"), ("SIGI-obs", "Q")):
        mtz.add_column(label, kind)
    mtz.set_data(np.column_stack([grid, f, sig_f, i, sig_i]).astype(np.float32))
    mtz.update_reso()
    mtz.write_to_file(str(path))
    return len(grid)


@pytest.mark.parametrize("sg", sorted(REAL))
def test_mtz_input_solves_with_named_columns(sg, real_cif, tmp_path):
    """Merged real data written to an MTZ (intensities after an amplitude column, so that
    the intensity column must be named) solve by charge flipping as the CIF does."""
    path = real_cif(REAL[sg])
    mtz_path = tmp_path / "merged.mtz"
    n_written = write_merged_mtz(path, mtz_path)
    out = tmp_path / "out"
    assert solve_cli.run([str(mtz_path), "-o", str(out), "--mtz-column", "I-obs", "--mtz-sigma", "SIGI-obs",
                          "--quiet"]) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "charge-flipping" and summary["space_group"] == sg
    assert summary["counts"]["measured"] == n_written == summary["counts"]["unique"]
    # the dataset's wavelength (Cu Kα for the P2₁/n data) reaches solution.res
    wavelength = float(next(line for line in (out / "solution.res").read_text().splitlines()
                            if line.startswith("CELL")).split()[1])
    assert wavelength == pytest.approx(read_input(path).wavelength, abs=1e-4)
    mtz, _, hkl, f, phi = read_mtz(out / "solution.mtz")
    assert mtz.spacegroup.xhm() == sg
    s = first_structure(path)
    np.testing.assert_allclose(mtz.cell.parameters, s.cell, atol=1e-3)
    score, _ = score_phases(hkl, f, np.angle(structure_factors(s, hkl, dtype=np.float64)), phi, s.symops)
    assert score.map_cc >= 0.7, (sg, score)
    # the amplitude column, named, gives the same amplitudes
    sol_f = solve(mtz_path, mtz_column="FP", mtz_sigma="SIGFP")
    sol_i = solve(mtz_path)  # default: the first J column, and the Q column after it
    assert sol_i.summary["n_reflections"] == sol_f.summary["n_reflections"] == len(hkl)
    np.testing.assert_allclose(sol_f.amplitude, sol_i.amplitude, rtol=1e-4, atol=1e-3)


def test_mtz_wrong_column_names_the_file_and_the_columns(real_cif, tmp_path, capsys):
    mtz_path = tmp_path / "merged.mtz"
    write_merged_mtz(real_cif(REAL["P -1"]), mtz_path)
    with pytest.raises(SolveError) as exc:
        solve(mtz_path, mtz_column="IMEAN")
    assert exc.value.kind == "bad-option"
    assert str(exc.value).startswith(f"{mtz_path}: no column 'IMEAN'")
    assert "columns: H, K, L, FP, SIGFP, I-obs, SIGI-obs" in str(exc.value)
    with pytest.raises(SolveError, match=r"merged.mtz: no sigma column 'SIGIMEAN' \(columns: H, K, L, FP"):
        solve(mtz_path, mtz_column="I-obs", mtz_sigma="SIGIMEAN")
    with pytest.raises(SolveError, match="merged.mtz: column SIGFP has type Q, not J"):
        solve(mtz_path, mtz_column="SIGFP")
    assert solve_cli.run([str(mtz_path), "-o", str(tmp_path / "o"), "--mtz-column", "IMEAN", "--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "merged.mtz: no column 'IMEAN' (columns: H, K, L, FP, SIGFP, I-obs, SIGI-obs)" in err
    assert not (tmp_path / "o").exists()


# -- the heavy-atom method and the default rule at low resolution


def map_cc(path, out):
    """Map CC of solution.mtz's phases against the published structure of ``path``."""
    _, _, hkl, f, phi = read_mtz(out / "solution.mtz")
    s = first_structure(path)
    score, _ = score_phases(hkl, f, np.angle(structure_factors(s, hkl, dtype=np.float64)), phi, s.symops)
    return score.map_cc


def test_heavy_atom_method_phases_real_data_at_2_angstrom(real_cif, tmp_path, capsys):
    path = real_cif(HEAVY)
    out = tmp_path / "pat"
    assert solve_cli.run([str(path), "-o", str(out), "--method", "patterson", "--d-min", "2.0",
                          "--quiet"]) == EXIT_OK
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["patterson"] and summary["methods_why"] == "given"
    assert summary["method"] == "patterson" and summary["d_min"] >= 2.0 - 1e-9
    (run,) = summary["runs"]
    assert run["status"] == "ok" and run["fom"] == pytest.approx(summary["fom"], abs=1e-4) and run["fom"] > 0.5
    assert "Au placed" in run["note"]
    line = next(x for x in printed.splitlines() if x.strip().startswith("patterson"))
    assert f"fom {run['fom']:.3f}" in line and f"skewness {run['skewness']:.2f}" in line
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])
    assert map_cc(path, out) >= 0.7


def test_default_rule_below_atomic_resolution_runs_net_and_patterson(real_cif, tmp_path):
    """Data cut at 2 Å with gold in the composition: the rule picks net (when registered)
    and patterson; net without its shipped model is reported not-applicable, with the
    reason, and the run goes on."""
    path = real_cif(HEAVY)
    out = tmp_path / "rule"
    assert solve_cli.run([str(path), "-o", str(out), "--d-min", "2.0", "--quiet"]) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    expected = (["net"] if "net" in method_names() else []) + ["patterson"]
    assert summary["methods"] == expected
    assert summary["methods_why"].startswith("data reach only 2.00 A") and "heavy atoms Au" in summary["methods_why"]
    runs = {r["method"]: r for r in summary["runs"]}
    assert list(runs) == expected and runs["patterson"]["status"] == "ok"
    text = (out / "summary.txt").read_text()
    for name, run in runs.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(name + " "))
        assert run["status"] in line
        if run["status"] == "ok":
            assert f"fom {run['fom']:.3f}" in line
        else:
            assert run["fom"] is None and "fom -" in line and run["note"] in line
    if "net" in runs:
        if unavailable("net"):
            assert runs["net"]["status"] == "not-applicable"
            assert "phasing-net" in runs["net"]["note"] and "net:RUN_DIR" in runs["net"]["note"]
        else:  # the shipped model is there: it runs
            assert runs["net"]["status"] == "ok" and runs["net"]["fom"] is not None
    ok = [r for r in runs.values() if r["status"] == "ok"]
    assert summary["method"] == max(ok, key=lambda r: r["fom"])["method"]
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])
    assert map_cc(path, out) >= 0.7


# -- solution.mtz's FOM column


class ChargeFlippingWithFom(PhasingMethod):
    """Charge flipping that also gives a per-reflection figure of merit, F / max F (a
    real method with a made-up but checkable weight)."""

    name = "cf-with-fom"

    def phases(self, problem, seed, options):
        from phasenet.baselines.charge_flipping import ChargeFlippingMethod

        phases, note = ChargeFlippingMethod().phases(problem, seed, options)[:2]
        return phases, note, {"fom": problem.amplitude / problem.amplitude.max()}


@pytest.fixture
def cf_with_fom():
    register_method(ChargeFlippingWithFom.name, ChargeFlippingWithFom)
    yield ChargeFlippingWithFom.name
    unregister_method(ChargeFlippingWithFom.name)


def test_mtz_has_fom_only_where_the_method_gives_one(test_data, tmp_path, cf_with_fom):
    path = test_data("p21n_aniso.cif")  # P2₁/n: the rows are reindexed for the method and back
    with_fom = solve(path, methods=[cf_with_fom])
    assert with_fom.fom is not None
    with_fom.write(tmp_path / "a")
    mtz, labels, hkl, f, _ = read_mtz(tmp_path / "a" / "solution.mtz")
    assert labels == ["H", "K", "L", "F", "PHI", "FOM", "E"]
    fom = np.array(mtz, copy=False)[:, labels.index("FOM")]
    np.testing.assert_array_equal(hkl, with_fom.hkl)
    np.testing.assert_allclose(fom, f / f.max(), rtol=1e-5)  # each row's own weight
    assert fom.max() == pytest.approx(1.0) and fom.min() < 0.1
    without = solve(path, methods=["charge-flipping"])
    assert without.fom is None
    without.write(tmp_path / "b")
    _, labels, _, _, _ = read_mtz(tmp_path / "b" / "solution.mtz")
    assert labels == ["H", "K", "L", "F", "PHI", "E"]


class WrongLengthFom(ChargeFlippingWithFom):
    name = "cf-wrong-fom"

    def phases(self, problem, seed, options):
        phases, note, details = super().phases(problem, seed, options)
        return phases, note, {"fom": details["fom"][:-1]}


def test_a_wrong_length_fom_fails_the_method_only(test_data):
    register_method(WrongLengthFom.name, WrongLengthFom)
    try:
        sol = solve(test_data("p21n_aniso.cif"), methods=[WrongLengthFom.name, "charge-flipping"])
    finally:
        unregister_method(WrongLengthFom.name)
    runs = {r["method"]: r for r in sol.runs}
    assert runs[WrongLengthFom.name]["status"] == "failed"
    assert runs[WrongLengthFom.name]["note"].startswith(f"returned ({len(sol.hkl) - 1},) figures of merit for "
                                                         f"{len(sol.hkl)} reflections")
    assert sol.method == "charge-flipping" and sol.fom is None


class RefusesBatch(PhasingMethod):
    """A batched method that, like ``net``'s predict, answers a problem it cannot take with
    the NotApplicable exception in that problem's place."""

    name = "refuses-batch"
    execution = "batched"

    def phases_batch(self, problems, options):
        from phasenet.baselines.registry import NotApplicable

        return [NotApplicable(f"cannot take {len(p)} reflections") for p in problems]


def test_a_batched_methods_refusal_is_reported_not_applicable(test_data):
    register_method(RefusesBatch.name, RefusesBatch)
    try:
        sol = solve(test_data("p21n_aniso.cif"), methods=[RefusesBatch.name, "charge-flipping"])
    finally:
        unregister_method(RefusesBatch.name)
    runs = {r["method"]: r for r in sol.runs}
    assert runs[RefusesBatch.name]["status"] == "not-applicable"
    assert runs[RefusesBatch.name]["note"] == f"cannot take {len(sol.hkl)} reflections"
    assert runs[RefusesBatch.name]["fom"] is None and sol.method == "charge-flipping"
