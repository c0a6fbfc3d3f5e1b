"""Fixtures of the structure-factor tests: cctbx references and the agreement the
documentation claims.

``cctbx_ref.from_file`` reads a CIF with iotbx (no phasenet code involved), so that
a reading error shows; ``cctbx_ref.from_structure`` builds the cctbx structure from
phasenet's parsed Structure (for in-memory structures, and where only the summation
is under test). Both use the IT92 form factors phasenet uses.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

from types import SimpleNamespace

import numpy as np
import pytest


#: What the documentation (README, structure factors) claims against cctbx's direct
#: summation with the same IT92 form factors: amplitude R at most 5e-4 and complex R
#: at most 7e-4 (the largest for cells that contradict their operators). Typical
#: values are ~1e-6.
AMPLITUDE_R_MAX = 5e-4
COMPLEX_R_MAX = 7e-4


def from_structure(s):
    """A cctbx xray.structure built from phasenet's parsed Structure."""
    from cctbx import adptbx, crystal, sgtbx, uctbx, xray
    from cctbx.array_family import flex

    from phasenet.physics.structure_factors import it92_coefficients

    sg = sgtbx.space_group()
    for t in s.symops:
        sg.expand_smx(t)
    cs = crystal.symmetry(unit_cell=s.cell, space_group=sg)
    uc = uctbx.unit_cell(s.cell)
    scatterers = flex.xray_scatterer()
    a = s.atoms
    for i in range(len(a)):
        el, ch = str(a.element[i]), int(a.charge[i])
        label = el + (f"{abs(ch)}{'+' if ch > 0 else '-'}" if ch else "")
        try:  # the ion's table where IT92 has one, as phasenet documents
            it92_coefficients(el, ch)
        except ValueError:
            label = el
        kw = dict(label=str(a.label[i]), site=tuple(float(v) for v in a.frac[i]),
                  occupancy=float(a.occupancy[i]), scattering_type=label)
        if np.isfinite(a.u_aniso[i]).all():
            kw["u"] = adptbx.u_cif_as_u_star(uc, tuple(float(v) for v in a.u_aniso[i]))
        else:
            kw["u"] = float(a.u_iso[i])
        scatterers.append(xray.scatterer(**kw))
    xs = xray.structure(crystal.special_position_settings(cs, min_distance_sym_equiv=0.05),
                        scatterers=scatterers)
    xs.scattering_type_registry(table="it1992")
    return xs


def from_file(path, block=None, default_u=None):
    """The cctbx xray.structure iotbx reads from a CIF block (the first if None), with
    IT92 form factors (charged type symbols such as Na1+ use the ion's table; ions
    IT92 lacks use the neutral atom, phasenet's documented rule). ``default_u``: the
    U_iso given to atoms iotbx read without displacement parameters (U = 0), as
    phasenet's reader gives them DEFAULT_U_ISO."""
    import iotbx.cif

    structures = iotbx.cif.reader(file_path=str(path)).build_crystal_structures()
    if not structures:
        pytest.fail(f"iotbx read no structure from {path}")
    xs = structures[block] if block is not None else next(iter(structures.values()))
    from cctbx.eltbx import xray_scattering

    for sc in xs.scatterers():  # ions IT92 lacks (N3-, H1+): the neutral atom, as documented
        try:
            xray_scattering.it1992(sc.scattering_type, True)
        except (RuntimeError, ValueError):
            sc.scattering_type = xray_scattering.get_standard_label(sc.scattering_type).rstrip("+-0123456789")
        if default_u is not None and not sc.flags.use_u_aniso() and sc.u_iso == 0:
            sc.u_iso = default_u
    xs.scattering_type_registry(table="it1992")
    return xs


def fcalc(xs, hkl):
    """(F_calc, systematically-absent flags) from cctbx's direct summation."""
    from cctbx import miller
    from cctbx.array_family import flex

    ms = miller.set(xs.crystal_symmetry(), flex.miller_index([tuple(map(int, h)) for h in hkl]),
                    anomalous_flag=False)
    fc = np.array(ms.structure_factors_from_scatterers(xs, algorithm="direct").f_calc().data())
    return fc, np.array(ms.sys_absent_flags().data(), dtype=bool)


def r_factors(f, fc):
    """(amplitude R, complex R) of f against the reference fc."""
    scale = np.abs(fc).sum()
    return np.abs(np.abs(f) - np.abs(fc)).sum() / scale, np.abs(f - fc).sum() / scale


def assert_agrees(f, fc, what, keep=None):
    """f agrees with cctbx's fc as closely as the documentation claims."""
    if keep is not None:
        f, fc = f[keep], fc[keep]
    r_amp, r_complex = r_factors(f, fc)
    assert r_amp <= AMPLITUDE_R_MAX, f"{what}: amplitude R = {r_amp:.3g} against cctbx"
    assert r_complex <= COMPLEX_R_MAX, f"{what}: complex R = {r_complex:.3g} against cctbx"
    return r_amp, r_complex


@pytest.fixture(scope="session")
def cctbx_ref():
    """cctbx references: from_structure(s), from_file(path, block), fcalc(xs, hkl),
    r_factors(f, fc), assert_agrees(f, fc, what, keep) and the claimed maxima."""
    return SimpleNamespace(from_structure=from_structure, from_file=from_file, fcalc=fcalc,
                           r_factors=r_factors, assert_agrees=assert_agrees,
                           amplitude_r_max=AMPLITUDE_R_MAX, complex_r_max=COMPLEX_R_MAX)
