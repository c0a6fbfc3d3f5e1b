import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.reflections import (
    canonical_hkl,
    friedel_representative,
    hkl_keys,
    laue_asu_keys,
    lookup,
)


def test_sizes():
    assert canonical_hkl().shape == (4630, 3)
    assert canonical_hkl(10).shape == (4630, 3)
    assert canonical_hkl(10, r2_max=50).shape == (709, 3)
    # (2n+1)³ - 1 points without 000, half of them
    for n in (1, 2, 5):
        assert len(canonical_hkl(n)) == ((2 * n + 1) ** 3 - 1) // 2


def test_dtype_and_read_only():
    hkl = canonical_hkl()
    assert hkl.dtype == np.int32
    assert not hkl.flags.writeable
    with pytest.raises(ValueError):
        hkl[0, 0] = 5


@pytest.mark.parametrize("kwargs", [{}, {"r2_max": 50}, {"max_index": 4}])
def test_no_origin_and_bounds(kwargs):
    hkl = canonical_hkl(**kwargs)
    assert not np.any(np.all(hkl == 0, axis=1))
    m = kwargs.get("max_index", 10)
    assert np.abs(hkl).max() == m or "r2_max" in kwargs
    assert np.abs(hkl).max() <= m
    if "r2_max" in kwargs:
        assert (hkl**2).sum(axis=1).max() < kwargs["r2_max"]


@pytest.mark.parametrize("kwargs", [{}, {"r2_max": 50}])
def test_one_of_each_friedel_pair(kwargs):
    hkl = canonical_hkl(**kwargs)
    keys = set(map(tuple, hkl.tolist()))
    assert len(keys) == len(hkl), "duplicate reflections"
    mates = set(map(tuple, (-hkl).tolist()))
    assert not keys & mates, "a reflection and its Friedel mate are both present"
    # ... and together they cover the whole box (or sphere) without 000
    r = np.arange(-10, 11)
    box = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    box = box[np.any(box != 0, axis=1)]
    if "r2_max" in kwargs:
        box = box[(box**2).sum(1) < kwargs["r2_max"]]
    assert keys | mates == set(map(tuple, box.tolist()))


def test_representative_first_nonzero_positive():
    hkl = canonical_hkl()
    first_nonzero = np.array([row[np.flatnonzero(row)[0]] for row in hkl])
    assert np.all(first_nonzero > 0)


@pytest.mark.parametrize("kwargs", [{}, {"r2_max": 50}])
def test_sorted(kwargs):
    hkl = canonical_hkl(**kwargs).astype(int)
    keys = [((h * h + k * k + l * l), h, k, l) for h, k, l in hkl.tolist()]
    assert keys == sorted(keys)
    assert hkl[:3].tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="max_index"):
        canonical_hkl(0)
    with pytest.raises(ValueError, match="r2_max"):
        canonical_hkl(10, r2_max=1)


def test_friedel_representative():
    hkl = np.array([[1, 2, 3], [-1, -2, -3], [0, -1, 4], [0, 0, -2], [0, 0, 2]])
    rep, flipped = friedel_representative(hkl)
    assert rep.tolist() == [[1, 2, 3], [1, 2, 3], [0, 1, -4], [0, 0, 2], [0, 0, 2]]
    assert flipped.tolist() == [False, True, True, True, False]


def test_lookup_and_keys():
    grid = canonical_hkl(4)
    assert len(np.unique(hkl_keys(grid))) == len(grid)
    idx = np.array([5, 0, len(grid) - 1, 17])
    assert lookup(grid, grid[idx]).tolist() == idx.tolist()
    assert lookup(grid, np.array([[0, 0, 0], [9, 9, 9], [-1, 0, 0]])).tolist() == [-1, -1, -1]


# Rotation parts of P2/m (unique axis b) acting on fractional coordinates.
P2M = np.array([
    np.eye(3),
    np.diag([-1, 1, -1]),  # 2-fold along b
    -np.eye(3),  # inversion
    np.diag([1, -1, 1]),  # mirror perpendicular to b
], dtype=int)


def test_laue_keys_equal_for_equivalents_and_friedel_mates():
    hkl = canonical_hkl(5).astype(int)
    base = laue_asu_keys(hkl, P2M)
    for r in P2M:
        assert np.array_equal(laue_asu_keys(hkl @ r, P2M), base)  # h' = h R
    assert np.array_equal(laue_asu_keys(-hkl, P2M), base)  # Friedel mates
    # With only the identity, Friedel mates still merge: key(h) == key(-h)
    ident = np.eye(3, dtype=int)[None]
    assert np.array_equal(laue_asu_keys(hkl, ident), laue_asu_keys(-hkl, ident))


def test_laue_keys_separate_non_equivalents():
    hkl = np.array([[1, 2, 3], [1, -2, 3], [-1, 2, 3], [1, 2, -3], [2, 1, 3], [3, 2, 1]])
    keys = laue_asu_keys(hkl, P2M)
    # in 2/m: (h k l) ~ (-h k -l) ~ (h -k l) ~ (-h -k -l)
    assert keys[0] == keys[1]  # mirror
    assert keys[2] == keys[3]  # (-1 2 3) = -(1 -2 -3) = mirror of (1 2 -3)
    assert keys[0] != keys[2]
    assert len({keys[0], keys[2], keys[4], keys[5]}) == 4
    # number of classes in the 2/m Laue group over a small box
    grid = canonical_hkl(3).astype(int)
    n_classes = len(np.unique(laue_asu_keys(grid, P2M)))
    full = set()
    for h in grid.tolist():
        orbit = {tuple(np.array(h) @ r) for r in P2M} | {tuple(-np.array(h) @ r) for r in P2M}
        full.add(min(orbit))
    assert n_classes == len(full)


CELLS = [(10.0, 10.0, 10.0, 90.0, 90.0, 90.0), (7.3, 11.2, 15.9, 90.0, 104.5, 90.0),
         (6.1, 8.4, 9.7, 71.2, 83.9, 102.3), (12.0, 12.0, 7.0, 90.0, 90.0, 120.0)]


@pytest.mark.parametrize("cell", CELLS)
def test_s2_and_d_spacings_agree_with_cctbx(cell):
    import gemmi
    from cctbx import uctbx

    from phasenet.reflections import d_spacings, reciprocal_s2

    hkl = canonical_hkl(6)
    uc = uctbx.unit_cell(cell)
    d_cctbx = np.array([uc.d(tuple(int(v) for v in h)) for h in hkl])
    assert np.allclose(d_spacings(hkl, cell), d_cctbx, rtol=1e-12)
    # the same numbers for a gemmi.UnitCell, a list and a tuple
    for c in (gemmi.UnitCell(*cell), list(cell)):
        assert np.array_equal(reciprocal_s2(hkl, c), reciprocal_s2(hkl, cell))
    assert np.allclose(reciprocal_s2(hkl, cell), 1 / d_cctbx**2, rtol=1e-12)
    assert d_spacings([[0, 0, 0]], cell)[0] == np.inf


@pytest.mark.parametrize("cell", CELLS)
def test_sphere_is_complete_to_d_min(cell):
    from phasenet.reflections import d_spacings, is_representative, resolution_mask, sphere_hkl

    d_min = 1.5
    hkl = sphere_hkl(cell, d_min)
    assert hkl.dtype == np.int32 and is_representative(hkl).all()
    assert (d_spacings(hkl, cell) >= d_min - 1e-9).all()
    # every reflection of a box twice as large that reaches d_min is in the sphere
    m = 2 * np.abs(hkl).max(axis=0) + 1
    box = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in m), indexing="ij"), -1).reshape(-1, 3)
    box = box[is_representative(box) & resolution_mask(box, cell, d_min)]
    assert len(box) == len(hkl)
    assert (lookup(hkl, box) >= 0).all()
    with pytest.raises(ValueError, match="d_min must be positive"):
        resolution_mask(hkl, cell, 0.0)


def test_hkl_token_identifies_a_reflection_list():
    from phasenet.reflections import hkl_from_token, hkl_token

    grid = canonical_hkl(5)
    token = hkl_token(grid)
    assert token == hkl_token(grid) and token[0][0] == "id"  # read-only canonical array: by id
    assert np.array_equal(hkl_from_token(*token), grid)
    copy = np.array(grid)
    assert hkl_token(copy)[0][0] == "bytes" and hkl_token(copy) == hkl_token(copy.astype(np.int64))
    assert np.array_equal(hkl_from_token(*hkl_token(copy)), grid)
