"""The solution files (phasenet.io.solution) on real structures with their exact phases.

F is computed from the CIF's atoms on the 1.0 Å sphere and written with the true phases;
each file is then read back by gemmi (MTZ, CCP4) or by the small SHELX reader below (gemmi
does not read .res) and compared with what was written and with the true atoms.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import re
from collections import Counter

import numpy as np
import pytest

from phasenet.evaluation.maps import min_distances
from phasenet.io import solution
from phasenet.physics.structure_factors import structure_factors
from phasenet.reflections import sphere_hkl
from phasenet.symmetry import DEN, symmetry

import gemmi

CASES = {"P-1": "StructureFinder_P-1.cif", "P21/n": "StructureFinder_1000000.cif"}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, structure_of):
    s = structure_of(CASES[request.param])
    hkl = sphere_hkl(s.cell, 1.0)
    f = structure_factors(s, hkl)
    sym = symmetry(s.symops)
    heavy = s.atoms.element != "H"
    return dict(s=s, hkl=hkl, amp=np.abs(f).astype(float), phase=np.angle(f).astype(float),
                sym=sym, cell=s.cell, atoms=s.atoms.frac[heavy], elements=s.atoms.element[heavy],
                composition=dict(Counter(s.atoms.element[heavy])))


def _cell_images(frac, sym):
    return (np.einsum("oij,nj->noi", sym.rotations, frac) + sym.translations[None]).reshape(-1, 3) % 1.0


def test_mtz_round_trip(case, tmp_path):
    hkl, amp, phase_deg = case["hkl"], case["amp"], np.degrees(case["phase"])
    fom = np.linspace(0.1, 1.0, len(hkl))
    e = amp / amp.mean()
    path = solution.write_mtz(tmp_path / "s.mtz", hkl, case["cell"], case["sym"], amp, phase_deg,
                              fom=fom, e=e)
    assert [p.name for p in tmp_path.iterdir()] == ["s.mtz"]
    mtz = gemmi.read_mtz_file(str(path))
    assert [c.label for c in mtz.columns] == ["H", "K", "L", "F", "PHI", "FOM", "E"]
    assert [c.type for c in mtz.columns] == ["H", "H", "H", "F", "P", "W", "F"]
    assert np.allclose(mtz.cell.parameters, case["cell"], atol=1e-4)
    assert symmetry(mtz.spacegroup) == case["sym"]
    data = np.array(mtz, copy=False)
    assert (data[:, :3].astype(int) == hkl).all()
    for col, values in zip(range(3, 7), (amp, phase_deg, fom, e)):
        np.testing.assert_allclose(data[:, col], values.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_mtz_optional_columns_left_out(case, tmp_path):
    solution.write_mtz(tmp_path / "s.mtz", case["hkl"], case["cell"], case["sym"], case["amp"],
                       np.degrees(case["phase"]))
    assert [c.label for c in gemmi.read_mtz_file(str(tmp_path / "s.mtz")).columns] == \
        ["H", "K", "L", "F", "PHI"]


def test_ccp4_map_matches_gemmi_map_of_the_mtz(case, tmp_path):
    """Two routes to the density: phasenet's FFT of the sphere (the written map) and
    gemmi's symmetry-expanding FFT of the written MTZ."""
    args = (case["hkl"], case["cell"], case["sym"], case["amp"])
    solution.write_mtz(tmp_path / "s.mtz", *args, np.degrees(case["phase"]))
    solution.write_ccp4_map(tmp_path / "s.ccp4", case["hkl"], case["amp"], case["phase"],
                            case["cell"], case["sym"])
    ccp4 = gemmi.read_ccp4_map(str(tmp_path / "s.ccp4"))
    ccp4.setup(float("nan"))
    ours = np.array(ccp4.grid, copy=False)
    assert np.allclose(ccp4.grid.unit_cell.parameters, case["cell"], atol=1e-3)
    assert symmetry(ccp4.grid.spacegroup) == case["sym"]
    theirs = np.array(gemmi.read_mtz_file(str(tmp_path / "s.mtz"))
                      .transform_f_phi_to_map("F", "PHI", exact_size=list(ours.shape)), copy=False)
    assert np.isfinite(ours).all()
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99
    # gemmi scales by 1/V too: the same e/Å³
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.02)


def test_peaks_lie_on_the_true_atoms(case):
    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"],
                                composition=case["composition"])
    n = len(case["atoms"])
    assert len(table) == n  # one peak per non-H atom of the asymmetric unit
    assert list(table.columns) == solution.PEAK_COLUMNS
    truth = _cell_images(case["atoms"], case["sym"])
    d = min_distances(table[["x", "y", "z"]].to_numpy(), truth, case["cell"])
    assert (d <= 0.3).mean() >= 0.9, np.round(d, 2)
    assert (np.diff(table["height"]) <= 0).all()
    # symmetry-independent peaks: no two are images of each other
    assert (table["nearest"] > solution.PEAK_MERGE_DISTANCE).all()
    # Cartesian = orthogonalised fractional
    orth = np.array(gemmi.UnitCell(*case["cell"]).orth.mat.tolist())
    np.testing.assert_allclose(table[["x_cart", "y_cart", "z_cart"]].to_numpy(),
                               table[["x", "y", "z"]].to_numpy() @ orth.T, atol=1e-9)
    # the composition is assigned in full; the heaviest element takes the highest peaks,
    # which lie on atoms of that element (most of them: O against N or C is a close call)
    assert Counter(table["element"]) == Counter(case["composition"])
    heaviest = max(case["composition"], key=lambda el: gemmi.Element(el).atomic_number)
    top = table[table["element"] == heaviest][["x", "y", "z"]].to_numpy()
    own = _cell_images(case["atoms"][case["elements"] == heaviest], case["sym"])
    assert (min_distances(top, own, case["cell"]) <= 0.3).mean() >= 0.75


def test_peak_nearest_is_a_bond_length(case):
    """Nearest-peak distances of a molecular crystal's atoms: bonds, 1.1-2.0 Å mostly."""
    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"],
                                composition=case["composition"])
    assert ((table["nearest"] > 1.1) & (table["nearest"] < 2.0)).mean() >= 0.9
    # brute force over the cell: the same numbers
    frac = table[["x", "y", "z"]].to_numpy()
    imgs = _cell_images(frac, case["sym"]).reshape(len(frac), -1, 3)
    for i in range(len(frac)):
        others = np.delete(imgs, i, axis=0).reshape(-1, 3)
        assert table["nearest"][i] == pytest.approx(min_distances(frac[i:i + 1], others, case["cell"])[0])


def test_peaks_without_composition_are_carbon(case):
    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"],
                                n_peaks=5)
    assert len(table) == 5 and set(table["element"]) == {"C"}
    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"])
    assert (table["height"] >= solution.DEFAULT_MIN_SIGMA).all() and len(table) >= 5


def test_peaks_csv(case, tmp_path):
    import pandas as pd

    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"],
                                n_peaks=6)
    solution.write_peaks_csv(tmp_path / "p.csv", table)
    back = pd.read_csv(tmp_path / "p.csv")
    assert list(back.columns) == solution.PEAK_COLUMNS
    np.testing.assert_allclose(back[["x", "y", "z"]], table[["x", "y", "z"]], atol=1e-5)


# -- SHELX .res


def read_res(path):
    """A small .res reader: cell, the full operator list LATT and SYMM imply, the atoms."""
    cell, latt, symm, sfac, atoms = None, None, [], [], []
    keywords = {"TITL", "CELL", "ZERR", "LATT", "SYMM", "SFAC", "UNIT", "HKLF", "END"}
    for line in path.read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word == "CELL":
            cell = [float(v) for v in rest.split()[1:]]
        elif word == "LATT":
            latt = int(rest)
        elif word == "SYMM":
            symm.append(rest)
        elif word == "SFAC":
            sfac = rest.split()
        elif word and word not in keywords:
            f = rest.split()
            atoms.append((word, sfac[int(f[0]) - 1], [float(v) for v in f[1:4]], float(f[4]), float(f[5])))
    ops = [gemmi.Op("x,y,z")] + [gemmi.Op(_triplet(s)) for s in symm]
    if latt > 0:
        ops += [gemmi.Op("-x,-y,-z") * op for op in ops]
    centring = {1: [], 2: ["1/2,1/2,1/2"], 3: ["2/3,1/3,1/3", "1/3,2/3,2/3"],
                4: ["0,1/2,1/2", "1/2,0,1/2", "1/2,1/2,0"], 5: ["0,1/2,1/2"], 6: ["1/2,0,1/2"],
                7: ["1/2,1/2,0"]}[abs(latt)]
    for c in centring:
        t = [int(round(eval(v) * DEN)) for v in c.split(",")]  # noqa: S307 (our own fractions)
        ops += [op.translated(t).wrap() for op in ops[:len(ops)]]
    return cell, symmetry(tuple(op.wrap().triplet() for op in ops)), atoms


def _triplet(shelx: str) -> str:
    """'0.5-X, 0.5+Y, 0.5-Z' -> '1/2-x,1/2+y,1/2-z' (decimals to 1/24 fractions)."""
    def frac(m):
        n = int(round(float(m.group(0)) * DEN))
        g = np.gcd(n, DEN)
        return f"{n // g}/{DEN // g}"
    return ",".join(re.sub(r"\d*\.\d+", frac, p.strip()).lower() for p in shelx.split(","))


@pytest.mark.parametrize("name,latt,n_symm", [
    ("P -1", 1, 0), ("P 1 21/n 1", 1, 1), ("P 21 21 21", -1, 3), ("C 1 2/c 1", 7, 1),
    ("I 41/a:2", 2, 3), ("I 41/a:1", -2, 7), ("F d d 2", -4, 3), ("R -3 :H", 3, 2), ("P 1 21 1", -1, 1)])
def test_shelx_symmetry_convention(name, latt, n_symm, tmp_path):
    """LATT and SYMM as SHELX writes them; reading them back gives the group."""
    import pandas as pd

    sym = symmetry(name)
    got_latt, symm = solution.shelx_symmetry(sym)
    assert (got_latt, len(symm)) == (latt, n_symm)
    table = pd.DataFrame({"x": [0.1], "y": [0.2], "z": [0.3], "element": ["C"]})
    solution.write_res(tmp_path / "s.res", table, (10, 11, 12, 90, 90, 120) if "R" in name
                       else (10, 11, 12, 90, 90, 90), sym)
    assert read_res(tmp_path / "s.res")[1] == sym


def test_shelx_p21n_card():
    assert solution.shelx_symmetry("P 1 21/n 1") == (1, ["0.5-X, 0.5+Y, 0.5-Z"])


def test_res_round_trip(case, tmp_path):
    table = solution.peak_table(case["hkl"], case["amp"], case["phase"], case["cell"], case["sym"],
                                composition=case["composition"])
    text = solution.write_res(tmp_path / "s.res", table, case["cell"], case["sym"], title="test  run")
    lines = text.read_text().splitlines()
    assert lines[0] == "TITL test run" and lines[-2:] == ["HKLF 4", "END"]
    cell, sym, atoms = read_res(tmp_path / "s.res")
    np.testing.assert_allclose(cell, case["cell"], atol=1e-3)
    assert sym == case["sym"]
    assert [a[1] for a in atoms] == list(table["element"])
    np.testing.assert_allclose([a[2] for a in atoms], table[["x", "y", "z"]], atol=1e-5)
    assert all(a[3] == 11.0 and a[4] == 0.05 for a in atoms)
    assert len({a[0] for a in atoms}) == len(atoms) and all(len(a[0]) <= 4 for a in atoms)
    unit = next(line for line in lines if line.startswith("UNIT")).split()[1:]
    sfac = next(line for line in lines if line.startswith("SFAC")).split()[1:]
    counts = Counter(table["element"])
    assert [int(u) for u in unit] == [counts[el] * len(case["sym"]) for el in sfac]


# -- failures leave nothing behind


def _writers(case, path):
    hkl, cell, sym, amp, ph = case["hkl"], case["cell"], case["sym"], case["amp"], case["phase"]
    table = solution.peak_table(hkl, amp, ph, cell, sym, n_peaks=3)
    return {
        "mtz": lambda **kw: solution.write_mtz(path, kw.get("hkl", hkl), cell, sym, kw.get("amp", amp),
                                               np.degrees(ph)),
        "map": lambda **kw: solution.write_ccp4_map(path, kw.get("hkl", hkl), kw.get("amp", amp), ph,
                                                    cell, sym),
        "csv": lambda **kw: solution.write_peaks_csv(path, kw.get("table", table)),
        "res": lambda **kw: solution.write_res(path, kw.get("table", table), cell, sym),
    }


@pytest.mark.parametrize("kind", ["mtz", "map", "csv", "res"])
def test_failures_leave_no_file(case, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"s.{kind}"
    write = _writers(case, target)[kind]
    bad = {"mtz": dict(amp=case["amp"][:-1]), "map": dict(amp=case["amp"][:-1]),
           "csv": dict(table=[1, 2]), "res": dict(table=[1, 2])}[kind]
    named = {"mtz": "amplitude", "map": "amplitude", "csv": "table", "res": "table"}[kind]
    with pytest.raises(ValueError, match=named):
        write(**bad)
    assert list(out.iterdir()) == []
    # a folder that does not exist
    missing = _writers(case, out / "no" / f"s.{kind}")[kind]
    with pytest.raises(ValueError, match="path"):
        missing()
    assert list(out.iterdir()) == []
    # the target name is a folder's: refused, nothing written
    (out / f"s.{kind}").mkdir()
    with pytest.raises(ValueError, match="path"):
        write()
    assert [p.name for p in out.iterdir()] == [f"s.{kind}"]
    # and a successful write leaves exactly the file
    (out / f"s.{kind}").rmdir()
    write()
    assert [p.name for p in out.iterdir()] == [f"s.{kind}"]


def test_failure_during_write_removes_the_temporary(tmp_path, monkeypatch):
    """An exception raised while the temporary file is being written leaves nothing."""
    import pandas as pd

    table = pd.DataFrame({"x": [0.1], "y": [0.2], "z": [0.3], "element": ["C"]})

    def boom(self, *a, **kw):
        Path_write(self, "half")
        raise OSError("disk full")

    from pathlib import Path
    Path_write = Path.write_text
    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        solution.write_res(tmp_path / "s.res", table, (10, 10, 10, 90, 90, 90), "P 1")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(tmp_path):
    hkl = np.array([[1, 0, 0], [0, 1, 0]])
    good = dict(hkl=hkl, cell=(10, 10, 10, 90, 90, 90), sym="P 1", amplitude=[1.0, 2.0],
                phase_deg=[0.0, 90.0])
    for arg, value in [("hkl", np.zeros((2, 2))), ("cell", (10, 10)), ("sym", "not a group"),
                       ("phase_deg", [0.0, np.nan]), ("fom", [1.0])]:
        with pytest.raises(ValueError, match=arg):
            solution.write_mtz(tmp_path / "s.mtz", **{**good, arg: value})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="composition"):
        solution.peak_table(hkl, [1.0, 2.0], [0.0, 1.0], good["cell"], "P 1", composition={"Xx": 2})


def test_res_names_fit_shelx(tmp_path):
    """Names are at most 4 characters; a table SHELX cannot name is refused, nothing written."""
    import pandas as pd

    def table(el, n):
        return pd.DataFrame({"x": np.linspace(0, 1, n), "y": 0.0, "z": 0.0, "element": [el] * n})

    solution.write_res(tmp_path / "ok.res", table("Cl", 99), (10, 10, 10, 90, 90, 90), "P 1")
    assert "Cl99 " in (tmp_path / "ok.res").read_text()
    with pytest.raises(ValueError, match="table: more Cl atoms"):
        solution.write_res(tmp_path / "bad.res", table("Cl", 100), (10, 10, 10, 90, 90, 90), "P 1")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.res"]
