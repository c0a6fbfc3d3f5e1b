"""The symmetry object (phasenet.symmetry): one object whatever it is built from, and
its centric flags, absences, epsilon factors and origin shifts against cctbx's sgtbx."""

import phasenet  # noqa: F401  (first: cctbx import order)

import pickle

import gemmi
import numpy as np
import pytest
from cctbx import sgtbx

from phasenet.reflections import canonical_hkl
from phasenet.symmetry import Symmetry, symmetry

P21C = ("x,y,z", "-x,y+1/2,-z+1/2", "-x,-y,-z", "x,-y+1/2,z+1/2")
PCA21 = ("x,y,z", "-x,-y,z+1/2", "x+1/2,-y,z", "-x+1/2,y,z+1/2")
#: (gemmi H-M, number) of the groups checked against cctbx
GROUPS = [("P -1", 2), ("P 1 21/c 1", 14), ("P 1 21/n 1", 14), ("C 1 2/c 1", 15), ("P b c a", 61),
          ("P 63/m", 176), ("I 41/a:1", 88), ("F d -3 m:2", 227), ("R 3 :H", 146), ("P 21 21 21", 19)]


def _cctbx_group(sym: Symmetry):
    g = sgtbx.space_group()
    for t in sym.triplets:
        g.expand_smx(sgtbx.rt_mx(t))
    return g


def test_every_kind_of_input_gives_the_same_object():
    sg = gemmi.find_spacegroup_by_name("P 21/c")
    triplets = [op.triplet() for op in sg.operations()]
    ref = symmetry(triplets)
    same = [
        "P 21/c", "P 1 21/c 1", "P21/c", 14, np.int64(14), "-P 2ybc", sg, sg.operations(),
        tuple(triplets), triplets[::-1], ";".join(triplets), P21C,
        ("X, Y, Z", "-x, 1/2+y, 1/2-z", "-X,-Y,-Z", "x+1, -y+1/2, z+1/2"),  # spaces, case, unwrapped
        ref,
    ]
    for x in same:
        s = symmetry(x)
        assert s == ref and hash(s) == hash(ref), x
        assert s is ref, x  # one cached instance per group and setting
        assert np.array_equal(s.rotations, ref.rotations) and np.array_equal(s.translations, ref.translations)
    assert ref.number == 14 and ref.hm == "P 1 21/c 1" and len(ref) == 4
    assert symmetry("P 1 21/n 1") != ref  # another setting is another object
    assert symmetry(("x,y,z", "-x,-y,-z")) == symmetry(2) == symmetry("-P 1")
    assert pickle.loads(pickle.dumps(ref)) is ref
    assert {ref: 1}[symmetry(14)] == 1


def test_arrays_are_read_only_and_object_immutable():
    s = symmetry("C 1 2/c 1")
    for arr in (s.rotations, s.translations, s.translations_den, s.centring_den, s.proper):
        with pytest.raises(ValueError):
            arr[0] = 0
    with pytest.raises(AttributeError):
        s.triplets = ()
    assert not s.systematic_absences(canonical_hkl(3)).flags.writeable


@pytest.mark.parametrize("bad,match", [
    ("Q 99", "unknown space group 'Q 99'"), (0, "1..230"), (231, "1..230"),
    (("x,y,z", "x,y,q"), "cannot parse symmetry operator 'x,y,q'"), ((), "no symmetry operators"),
    (3.5, "cannot make a space-group symmetry from float"), (None, "from NoneType"),
])
def test_bad_input_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        symmetry(bad)


@pytest.mark.parametrize("hm,number", GROUPS, ids=[g[0].replace(" ", "") for g in GROUPS])
def test_group_facts_agree_with_cctbx(hm, number):
    sym = symmetry(hm)
    g = _cctbx_group(sym)
    assert sym.number == number == g.type().number()
    assert len(sym) == g.order_z()
    assert len(sym.centring) == g.n_ltr()
    assert sym.is_centrosymmetric == g.is_centric()
    assert sym.has_origin_inversion == g.is_origin_centric()
    hkl = canonical_hkl(6)
    cc = [tuple(int(v) for v in h) for h in hkl]
    assert np.array_equal(sym.is_centric(hkl), [g.is_centric(h) for h in cc])
    assert np.array_equal(sym.systematic_absences(hkl), [g.is_sys_absent(h) for h in cc])
    # gemmi's epsilon counts the centring translations too
    assert np.array_equal(sym.epsilon(hkl), [g.epsilon(h) * g.n_ltr() for h in cc])
    assert sym.systematic_absences(hkl).any() == (hm not in ("P -1",))


def test_operators_in_a_canonical_order():
    a = symmetry(["x,y,z", "-x,-y,-z", "-x,y+1/2,-z+1/2", "x,-y+1/2,z+1/2"])
    b = Symmetry(a.triplets)  # rebuilt, not from the cache
    assert np.array_equal(a.rotations, b.rotations) and np.array_equal(a.translations, b.translations)
    assert a.triplets == tuple(sorted(a.triplets))
    assert np.array_equal(symmetry("C 1 2/c 1").centring, [[0, 0, 0], [0.5, 0.5, 0]])
    off = symmetry("F d -3 m:1")  # origin choice 1: inversion centre at (1/8, 1/8, 1/8)
    assert off.is_centrosymmetric and not off.has_origin_inversion
    assert np.array_equal(off.inversion_den, [6, 6, 6])  # x -> -x + 1/4 (24ths)


@pytest.mark.parametrize("group", ["P -1", "P 1 21/c 1"])
def test_eight_origin_shifts_for_p1bar_and_p21c(group):
    shifts = symmetry(group).origin_shifts()
    assert shifts.shape == (8, 3)
    assert {tuple(t) for t in shifts * 2} == {(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)}


@pytest.mark.parametrize("symops,hall", [
    (("x,y,z", "-x,-y,-z"), "-P 1"), (P21C, "-P 2ybc"), (PCA21, "P 2c -2ac"),
    (("x,y,z", "-x+1/2,-y,z+1/2", "-x,y+1/2,-z+1/2", "x+1/2,-y+1/2,-z"), "P 2ac 2ab"),
    (("x,y,z", "-x,y+1/2,-z"), "P 2yb"),
])
def test_permissible_shifts_agree_with_cctbx(symops, hall):
    sgi = sgtbx.space_group_info(symbol=f"Hall: {hall}")
    ours = symmetry(symops).origin_shifts()
    g = np.arange(24) / 24
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    sample = grid[::7]  # every 7th point of the 1/24 grid, plus all of ours
    theirs = {tuple(t) for t in sample if sgi.is_allowed_origin_shift(tuple(t), 1e-6)}
    ours_set = {tuple(t) for t in ours}
    assert theirs == {t for t in map(tuple, sample) if t in ours_set}
    for t in ours:
        assert sgi.is_allowed_origin_shift(tuple(t), 1e-6)


def test_enantiomorph_shifts():
    # P3_1 inverted is P3_2: no shift maps it back; P2_12_12_1 inverted is itself
    assert len(symmetry("P 31").origin_shifts(inverted=True)) == 0
    assert len(symmetry("P 21 21 21").origin_shifts(inverted=True)) == 8


def test_polar_directions():
    assert symmetry(P21C).continuous_origin_directions().shape == (0, 3)
    d = symmetry(("x,y,z", "-x,y+1/2,-z")).continuous_origin_directions()
    assert d.shape == (1, 3) and abs(abs(d[0, 1]) - 1) < 1e-9
    assert symmetry(("x,y,z",)).continuous_origin_directions().shape == (3, 3)


def test_module_doctests():
    import doctest

    import phasenet.symmetry

    result = doctest.testmod(phasenet.symmetry, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_functions_accept_anything_symmetry_accepts():
    """Converted once at the edge: the same result for triplets, a symbol, a number or a Symmetry."""
    from phasenet.baselines.patterson import patterson_map
    from phasenet.evaluation.metrics import score_phases

    rng = np.random.default_rng(1)
    hkl = canonical_hkl(4)
    keep = ~symmetry(P21C).systematic_absences(hkl)
    hkl = hkl[keep]
    amp = rng.random(len(hkl)) + 0.1
    true = np.where(rng.random(len(hkl)) < 0.5, 0.0, np.pi)
    est = np.where(rng.random(len(hkl)) < 0.8, true, true + np.pi)
    cell = (8.0, 9.0, 10.0, 90.0, 100.0, 90.0)
    ref_score, ref_aligned = score_phases(hkl, amp, true, est, P21C)
    ref_map = patterson_map(hkl, amp**2, cell, P21C).values
    for x in ("P 21/c", 14, symmetry(P21C), ";".join(P21C)):
        score, aligned = score_phases(hkl, amp, true, est, x)
        assert score == ref_score and np.array_equal(aligned, ref_aligned)
        assert np.array_equal(patterson_map(hkl, amp**2, cell, x).values, ref_map)
