"""Variable-cell relaxation under pressure (phasenet.synth.relax), on cases with a
known answer: spheres in P1 pack towards the densest lattice packing (face-centred
cubic, V = d³/√2 per sphere), never closer than the contact limit; the strain masks
keep the crystal system; results are exactly repeatable."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.synth.relax import STRAIN_MASKS, relax_cell

TOL = 0.2  # contact limit C···C = 2 x 1.70 - 0.2 = 3.2 Å
LIMIT = 3.2


def _min_distance(m, xyz, frac_ops=None):
    """Shortest distance between different lattice images of the atoms (P1)."""
    f = xyz @ np.linalg.inv(m).T
    grid = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    best = np.inf
    for n in grid:
        y = (f + n) @ m.T
        d = np.linalg.norm(xyz[:, None] - y[None], axis=2)
        if not n.any():
            d = d + np.eye(len(xyz)) * 1e9
        best = min(best, d.min())
    return best


def _relax(m0, xyz, system="triclinic", pressure=0.05, min_shape=0.5, steps=(400, 200)):
    rot, trans = np.eye(3)[None], np.zeros((1, 3))
    n = len(xyz)
    return relax_cell(xyz, np.arange(n), np.arange(1, n + 1), m0, rot, trans, np.full(n, 1.70),
                      np.zeros(n, dtype=bool), TOL, 0.3, STRAIN_MASKS[system], pressure, steps[0],
                      steps[1], 0.003, 2.0, 15.0, min_shape, 0.0)


def test_one_sphere_packs_like_fcc():
    rng = np.random.default_rng(0)
    m0 = np.diag([6.0, 6.5, 7.0]) + rng.normal(0, 0.4, (3, 3))
    m, xyz, u, counts = _relax(m0, np.zeros((1, 3)))
    vol = abs(np.linalg.det(m))
    assert u == 0.0 and counts[0] > 0
    assert _min_distance(m, xyz) >= LIMIT  # the contact limit holds
    # denser than simple cubic (d³) and body-centred cubic (0.770 d³): towards fcc ...
    assert vol < 0.75 * LIMIT**3
    assert vol >= LIMIT**3 / np.sqrt(2) * 0.999  # ... and never beyond fcc (Gauss)


def test_orthorhombic_mask_keeps_right_angles_and_reaches_the_box():
    """A single sphere with only the diagonal strain free ends as the cube of edge
    d: simple cubic is the densest rectangular lattice of spheres."""
    m0 = np.diag([6.0, 7.0, 8.0])
    m, xyz, u, _ = _relax(m0, np.zeros((1, 3)), system="orthorhombic")
    assert u == 0.0
    assert np.allclose(m - np.diag(np.diag(m)), 0.0)
    assert np.allclose(np.diag(m), LIMIT + 0.003, atol=0.02)


def test_monoclinic_mask_keeps_b_unique():
    rng = np.random.default_rng(1)
    m0 = np.array([[6.0, 0.0, -1.5], [0.0, 6.5, 0.0], [0.0, 0.0, 6.8]])
    xyz = rng.normal(0, 1.5, (3, 3))
    m, _, u, _ = _relax(m0, xyz, system="monoclinic", min_shape=0.75)
    assert u == 0.0
    assert m[1, 0] == 0.0 and m[1, 2] == 0.0 and m[0, 1] == 0.0 and m[2, 1] == 0.0
    assert abs(np.linalg.det(m)) < abs(np.linalg.det(m0))


def test_repeatable_and_volume_floor():
    rng = np.random.default_rng(2)
    m0 = np.diag([7.0, 7.0, 7.0]) + rng.normal(0, 0.3, (3, 3))
    xyz = rng.normal(0, 1.0, (2, 3))
    a = _relax(m0, xyz)
    b = _relax(m0, xyz)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rot, trans = np.eye(3)[None], np.zeros((1, 3))
    floor = 0.9 * abs(np.linalg.det(m0))
    m, _, _, _ = relax_cell(xyz, np.arange(2), np.arange(1, 3), m0, rot, trans, np.full(2, 1.7),
                            np.zeros(2, dtype=bool), TOL, 0.3, STRAIN_MASKS["triclinic"], 0.05, 200,
                            100, 0.003, 2.0, 15.0, 0.5, floor)
    assert abs(np.linalg.det(m)) >= floor


@pytest.mark.parametrize("system", sorted(STRAIN_MASKS))
def test_masks_are_symmetric(system):
    mask = STRAIN_MASKS[system]
    assert np.array_equal(mask, mask.T)
