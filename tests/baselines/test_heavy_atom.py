"""The heavy-atom method on real structures: heavy atoms on special positions, the scattering
share over the unit cell, and E-Fourier recycling (issue 12)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.baselines.patterson import (HeavyAtomOptions, HeavyAtomMethod, PattersonMap, PattersonOptions,
                                          harker_search_map,
                                          heavy_atom_phases, heavy_atom_plan, match_heavy_atoms, origin_radius,
                                          patterson_map)
from phasenet.baselines.recycling import RecyclingOptions, recycle
from phasenet.baselines.registry import problem_for
from phasenet.evaluation.evaluate import EvaluateOptions, run_task
from phasenet.evaluation.metrics import score_phases
from phasenet.evaluation.problem import problem_from_structure

NO_RECYCLING = RecyclingOptions(cycles=0)
#: the method before issue 12: plain minimum function, asymmetric-unit rows, no recycling
BEFORE = HeavyAtomOptions(special_positions=False, recycling=NO_RECYCLING)
SPECIAL_ONLY = HeavyAtomOptions(recycling=NO_RECYCLING)

#: (file, element, site, d_min): heavy atoms on special positions
SPECIAL_CASES = [
    ("cod-tools_1100974.cif", "Zn", "2-fold axis, C2/c", 1.5),
    ("cod-tools_2204271.cif", "Co", "inversion centre, P2₁/c", 2.0),
    ("cod-tools_1100711.cif", "Pt", "inversion centre, P-1", 1.5),
]


def heavy_sites(structure, element):
    return structure.atoms.frac[structure.atoms.element == element]


@pytest.mark.parametrize("name,element,site,d_min", SPECIAL_CASES)
def test_special_position_found(structure_of, name, element, site, d_min):
    s = structure_of(name)
    p = problem_from_structure(s, d_min).truncate(None)
    true = heavy_sites(s, element)
    phases, sol = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms, SPECIAL_ONLY)
    assert sol.element == element
    assert (match_heavy_atoms(sol.frac, true, p.cell, p.symops) < 0.5).all(), site
    assert sol.multiplicity is not None and (sol.multiplicity < len(p.symops)).all()  # a special position
    # the method before the fix places it more than 0.5 Å off
    _, old = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms, BEFORE)
    assert (match_heavy_atoms(old.frac, true, p.cell, p.symops) > 0.5).any(), site
    score, _ = score_phases(p.hkl, p.amplitude, p.phase_true, phases, p.symops)
    assert score.phase_error < 60


@pytest.mark.parametrize("name,element", [("cod-tools_1100974.cif", "Zn"), ("cod-tools_2204271.cif", "Co")])
def test_minimum_function_at_special_site(structure_of, name, element):
    """Without leaving out the Harker vectors in the origin peak, the minimum function is ~0
    at the true site (the origin of the origin-removed map); with it, the site is a strong peak."""
    s = structure_of(name)
    p = problem_from_structure(s, 1.5).truncate(None)
    pm = patterson_map(p.hkl, p.amplitude**2, p.cell, p.symops, PattersonOptions(sharpen=False))
    x = heavy_sites(s, element)[:1]
    plain = harker_search_map(pm)
    fixed = harker_search_map(pm, exclude_origin=origin_radius(pm))

    def at(smf):
        return float(PattersonMap(smf, pm.cell, pm.symops, pm.d_min).value_at(x)[0])

    assert at(plain) < 0.05 * plain.max()
    assert at(fixed) > 0.5 * fixed.max()


def test_share_over_the_cell(structure_of):
    """Co on an inversion centre of P2₁/c: 2 Co in the cell, not 4 (the rows count it as general)."""
    s = structure_of("cod-tools_2204271.cif")
    cell_plan = heavy_atom_plan(s.atoms, symops=s.symops, cell=s.cell)
    rows_plan = heavy_atom_plan(s.atoms)
    assert cell_plan.n_cell == pytest.approx(2.0)
    assert cell_plan.n_asu == pytest.approx(0.5)
    comp = cell_plan.composition
    assert comp["Co"] == pytest.approx(2.0)
    z2 = {"Co": 27**2, "O": 8**2, "C": 6**2, "N": 7**2, "Cl": 17**2}
    expected = comp["Co"] * z2["Co"] / sum(comp[e] * z2[e] for e in z2)
    assert cell_plan.ratio == pytest.approx(expected, rel=1e-9)
    assert rows_plan.ratio > cell_plan.ratio * 1.3  # the asymmetric-unit rows overstate it
    # what a phasing method sees in the evaluation (no positions) gives the same plan
    p = problem_from_structure(s, 1.5)
    seen = problem_for(HeavyAtomMethod(), p, EvaluateOptions())
    assert not np.isfinite(seen.atoms.frac).any()
    plan_seen = heavy_atom_plan(seen.atoms, symops=seen.symops, cell=seen.cell)
    assert plan_seen.n_cell == pytest.approx(cell_plan.n_cell)
    assert plan_seen.ratio == pytest.approx(cell_plan.ratio)


@pytest.mark.parametrize("name,element", [("cod-tools_1512116.cif", "Cl"), ("FinalCif_1508702.cif", "S")])
def test_recycling_completes_light_heavy_atom(structure_of, name, element):
    """S or Cl placed right caps the map CC below 0.7; E-Fourier recycling gets past it."""
    s = structure_of(name)
    p = problem_from_structure(s, 1.0).truncate(None)
    ph0, sol0 = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms, SPECIAL_ONLY)
    assert (match_heavy_atoms(sol0.frac, heavy_sites(s, element), p.cell, p.symops) < 0.5).all()
    before, _ = score_phases(p.hkl, p.amplitude, p.phase_true, ph0, p.symops)
    assert before.map_cc < 0.8
    ph1, sol1 = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, s.atoms)  # recycling on by default
    after, _ = score_phases(p.hkl, p.amplitude, p.phase_true, ph1, p.symops)
    assert after.map_cc > 0.85 and after.map_cc > before.map_cc + 0.15
    rec = sol1.recycling
    assert rec is not None and rec.best_cycle > 0 and rec.fom[rec.best_cycle] >= rec.fom[0]
    assert len(rec.frac) > len(sol1.frac)  # atoms were added


def test_recycling_keeps_the_best_cycle(structure_of):
    """From a wrong start the figure of merit decides; the phases are those of its best cycle."""
    s = structure_of("cod-tools_1512116.cif")
    p = problem_from_structure(s, 1.5).truncate(None)
    plan = heavy_atom_plan(s.atoms, symops=s.symops, cell=s.cell)
    wrong = np.array([[0.11, 0.37, 0.23]])
    r = recycle(p.hkl, p.amplitude, p.cell, p.symops, plan.composition, "Cl", wrong, RecyclingOptions(cycles=3))
    assert len(r.fom) == 4 and r.fom[r.best_cycle] == pytest.approx(r.fom.max())
    assert r.phases.shape == (len(p),) and np.isfinite(r.phases).all()


def test_heavy_found_in_the_evaluation_row(structure_of):
    s = structure_of("cod-tools_2204271.cif")
    p = problem_from_structure(s, 2.0)
    row = run_task(p, "patterson", 2.0, 0, EvaluateOptions(reflections="sphere", atom_recovery=False))
    assert row["status"] == "ok", row["reason"]
    assert row["heavy_found"] == pytest.approx(1.0)
    assert "recycling" in row["reason"]
