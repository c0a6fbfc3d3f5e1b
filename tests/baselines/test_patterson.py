"""Patterson maps, peaks, Harker sections and the heavy-atom baseline on real structures."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.evaluation.maps import min_distances
from phasenet.evaluation.metrics import score_phases
from phasenet.baselines.patterson import (HeavyAtomOptions, NotApplicable, PattersonOptions, harker_sections,
                                heavy_atom_phases, heavy_atom_plan, match_heavy_atoms, patterson_from_cif,
                                patterson_map)
from phasenet.evaluation.problem import problem_from_structure

P21C = ("x,y,z", "-x,y+1/2,-z+1/2", "-x,-y,-z", "x,-y+1/2,z+1/2")


def test_harker_sections():
    assert harker_sections(P21C) == [{"axis": "v", "value": 0.5, "operator": "-x,y+1/2,-z+1/2"}]
    assert harker_sections(("x,y,z", "-x,-y,-z")) == []  # P-1: Harker vectors 2x fill space
    p212121 = ("x,y,z", "-x+1/2,-y,z+1/2", "-x,y+1/2,-z+1/2", "x+1/2,-y+1/2,-z")
    assert sorted((h["axis"], h["value"]) for h in harker_sections(p212121)) == [
        ("u", 0.5), ("v", 0.5), ("w", 0.5)]


@pytest.fixture(scope="module")
def iodo(structure_of):
    """P-1 with one I and one Cu per asymmetric unit (cod-tools_2231779), exact data to 1 Å."""
    s = structure_of("cod-tools_2231779.cif")
    return s, problem_from_structure(s, 1.0).truncate(None)


def test_map_symmetry_and_origin(iodo):
    s, p = iodo
    raw = patterson_map(p.hkl, p.amplitude**2, p.cell, p.symops, PattersonOptions(sharpen=False, remove_origin=False))
    v = raw.values
    assert np.allclose(v, np.roll(v[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)), atol=1e-6 * np.abs(v).max())
    assert v[0, 0, 0] == pytest.approx(v.max())  # the origin peak dominates the plain map
    sharp = patterson_map(p.hkl, p.amplitude**2, p.cell, p.symops)  # |E|²−1
    assert sharp.values[0, 0, 0] < 0.5 * sharp.values.max() or sharp.values[0, 0, 0] < 20
    # the strongest non-origin peak of the origin-free map is the I–I vector 2x_I
    pm = patterson_map(p.hkl, p.amplitude**2, p.cell, p.symops, PattersonOptions(sharpen=False))
    peaks = pm.peaks(10)
    assert list(peaks.columns) == ["x", "y", "z", "height", "relative_height", "length", "multiplicity"]
    x_i = s.atoms.frac[s.atoms.element == "I"][0]
    d = min_distances(peaks[["x", "y", "z"]].to_numpy()[:1], np.array([2 * x_i, -2 * x_i]), p.cell)
    assert d.min() < 0.3
    assert (peaks.multiplicity == 2).all() or peaks.multiplicity.iloc[0] == 1  # P-1 Patterson: u, −u


def test_sections_and_plot(structure_of, tmp_path):
    p = problem_from_structure(structure_of("cod-tools_2204271.cif"), 1.2)
    pm = patterson_map(p.hkl, p.amplitude**2, p.cell, p.symops)
    (h,) = pm.harker_sections()
    sec = pm.section(h["axis"], h["value"])
    assert sec.shape == (pm.grid[0], pm.grid[2])
    # 2₁ symmetry of the Patterson (2/m Laue): P(x, y, z) = P(−x, y, −z)
    v = pm.values
    assert np.allclose(v, np.roll(v[::-1, :, ::-1], (1, 0, 1), axis=(0, 1, 2)), atol=1e-6 * np.abs(v).max())
    out = pm.plot_section(tmp_path / "harker.png", h["axis"], h["value"], peaks=pm.peaks(20))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="axis"):
        pm.section("q", 0.5)


def test_patterson_from_measured_cif(real_cif):
    pm = patterson_from_cif(real_cif("StructureFinder_P-1.cif"))  # paired .fcf: measured F²
    assert np.isfinite(pm.values).all() and min(pm.grid) > 8
    assert len(pm.peaks(5)) == 5


def test_patterson_from_cif_without_data(real_cif):
    with pytest.raises(ValueError, match="no measured reflections"):
        patterson_from_cif(real_cif("cod-tools_2204271.cif"))


@pytest.mark.parametrize("name,element", [
    ("cod-tools_2231779.cif", "I"),          # P-1
    ("FinalCif_Esser_JW367_0m.cif", "Br"),   # P2₁/n
    ("cod-tools_1512116.cif", "Cl"),         # P2₁/c, C19H26ClNO2
    ("FinalCif_1508702.cif", "S"),           # P2₁/n, C16H22N2O3S
])
def test_heavy_atom_found(structure_of, name, element):
    s = structure_of(name)
    p = problem_from_structure(s, 1.0).truncate(None)
    phases, sol = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms)
    assert sol.element == element
    true = s.atoms.frac[s.atoms.element == element]
    d = match_heavy_atoms(sol.frac, true, p.cell, p.symops)
    assert (d < 0.5).all(), d
    score, _ = score_phases(p.hkl, p.amplitude, p.phase_true, phases, p.symops)
    assert score.phase_error < 60  # far better than random (90°)


def test_heavy_atom_not_applicable(structure_of):
    s = structure_of("NoSpherA2_epoxide.cif")  # C2H4O
    plan = heavy_atom_plan(s.atoms)
    assert not plan.applicable and "no heavy atom" in plan.reason
    p = problem_from_structure(s, 1.0)
    with pytest.raises(NotApplicable, match="heaviest element O"):
        heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms)
    # the ratio rule: S in a big organic molecule is below a strict threshold
    s2 = structure_of("FinalCif_1508702.cif")
    assert heavy_atom_plan(s2.atoms).ratio == pytest.approx(256 / (256 + 16 * 36 + 2 * 49 + 3 * 64), rel=1e-6)
    assert not heavy_atom_plan(s2.atoms, HeavyAtomOptions(min_ratio=0.3)).applicable
