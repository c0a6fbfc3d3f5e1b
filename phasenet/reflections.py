"""The canonical reflection set and index bookkeeping on it.

Every dataset stores the same reflections in the same order: all (h, k, l) with
|h|, |k|, |l| <= max_index, without (0, 0, 0), keeping one reflection of each
Friedel pair (h and -h), optionally cut to a sphere h²+k²+l² < r2_max. The
representative of a Friedel pair is the one whose first non-zero index is
positive. Order: by h²+k²+l², then h, then k, then l.

max_index 10 gives 4630 reflections; adding r2_max=50 gives the study's 709.

Also here, for any reflection list: the one |s|² = 1/d² (:func:`reciprocal_s2`)
and d-spacing (:func:`d_spacings`) of phasenet, resolution cuts
(:func:`resolution_mask`, :func:`sphere_hkl`: the complete sphere to d_min),
Friedel representatives, integer keys (:func:`hkl_keys`, :func:`laue_asu_keys`),
:func:`lookup` of rows in a list, and :func:`hkl_token` (a cache key for a list).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

import gemmi

DEFAULT_MAX_INDEX = 10


def is_representative(hkl: np.ndarray) -> np.ndarray:
    """True where the first non-zero index is positive (one of each Friedel pair)."""
    h, k, l = hkl[:, 0], hkl[:, 1], hkl[:, 2]
    return (h > 0) | ((h == 0) & (k > 0)) | ((h == 0) & (k == 0) & (l > 0))


@lru_cache(maxsize=16)
def _canonical_hkl_cached(max_index: int, r2_max: int | None) -> np.ndarray:
    r = np.arange(-max_index, max_index + 1)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    hkl = hkl[is_representative(hkl)]
    r2 = (hkl**2).sum(axis=1)
    if r2_max is not None:
        hkl, r2 = hkl[r2 < r2_max], r2[r2 < r2_max]
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0], r2))
    out = np.ascontiguousarray(hkl[order].astype(np.int32))
    out.setflags(write=False)
    return out


def canonical_hkl(max_index: int = DEFAULT_MAX_INDEX, r2_max: int | None = None) -> np.ndarray:
    """The canonical reflection list, shape (R, 3), int32, read-only.

    >>> canonical_hkl().shape
    (4630, 3)
    >>> canonical_hkl(r2_max=50).shape
    (709, 3)
    >>> canonical_hkl()[:3].tolist()
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    """
    if max_index < 1:
        raise ValueError(f"max_index must be >= 1, got {max_index}")
    if r2_max is not None and r2_max < 2:
        raise ValueError(f"r2_max must be >= 2 (or None for no sphere cut), got {r2_max}")
    return _canonical_hkl_cached(int(max_index), None if r2_max is None else int(r2_max))


def friedel_representative(hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map each row to its Friedel representative; also return which rows were flipped."""
    hkl = np.asarray(hkl)
    flipped = ~is_representative(hkl)
    rep = np.where(flipped[:, None], -hkl, hkl)
    return rep, flipped


def hkl_keys(hkl: np.ndarray, offset: int = 512) -> np.ndarray:
    """Pack integer (h, k, l) rows into one int64 key each (for lookups and merging)."""
    hkl = np.asarray(hkl, dtype=np.int64) + offset
    return (hkl[:, 0] * 1024 + hkl[:, 1]) * 1024 + hkl[:, 2]


def laue_asu_keys(hkl: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """A key per reflection that is equal for all symmetry equivalents and Friedel mates.

    ``rotations`` (m, 3, 3) are the rotation parts of the space-group operators acting
    on fractional coordinates (x' = R x + t); reflections transform as h' = h R.
    The key is the largest packed key over the orbit {±h R}.
    """
    # The packed key is linear in (h, k, l): key(h R) = h · (R c) + K0 with
    # c = (1024², 1024, 1), and key(-h R) = K0 - h · (R c). The largest key of the
    # orbit is therefore K0 + max over the distinct R of |h · R c|: one small matrix
    # product (exact in float64 for |index| < 512), no orbit materialised.
    hkl = np.asarray(hkl, dtype=np.int64)
    if len(hkl) == 0:
        return np.zeros(0, dtype=np.int64)
    k0 = int(hkl_keys(np.zeros((1, 3), dtype=np.int64))[0])
    coef = _orbit_key_coefficients(np.asarray(rotations, dtype=np.int64))  # (3, md) float64
    h = hkl.astype(np.float64).T  # (3, n): rows contiguous, so the max runs over rows
    best = np.zeros(len(hkl))
    for r in coef.T:
        np.maximum(best, np.abs(r[0] * h[0] + r[1] * h[1] + r[2] * h[2]), out=best)
    return best.astype(np.int64) + k0


_PACK = np.array([1024 * 1024, 1024, 1], dtype=np.int64)


def _orbit_key_coefficients(rotations: np.ndarray) -> np.ndarray:
    """(3, md) float64: R c for each distinct rotation R (c packs an index into a key)."""
    rots = np.unique(rotations.reshape(-1, 9), axis=0).reshape(-1, 3, 3)
    return (rots @ _PACK).T.astype(np.float64)


def lookup(grid_hkl: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """Positions of ``hkl`` rows in ``grid_hkl`` (-1 where absent)."""
    gk = hkl_keys(grid_hkl)
    order = np.argsort(gk)
    sk = gk[order]
    q = hkl_keys(hkl)
    pos = np.searchsorted(sk, q)
    pos = np.clip(pos, 0, len(sk) - 1)
    found = sk[pos] == q
    return np.where(found, order[pos], -1)


def reciprocal_metric(cell) -> np.ndarray:
    """Reciprocal metric tensor G* (3x3) of a gemmi.UnitCell: s² = hᵀ G* h."""
    frac = np.array(cell.frac.mat.tolist())  # fractionalisation matrix
    return frac @ frac.T


@lru_cache(maxsize=4096)
def _gstar(cell: tuple[float, ...]) -> np.ndarray:
    g = reciprocal_metric(gemmi.UnitCell(*cell))
    g.setflags(write=False)
    return g


def _metric(cell) -> np.ndarray:
    if isinstance(cell, gemmi.UnitCell):
        return reciprocal_metric(cell)
    return _gstar(tuple(float(x) for x in cell))


def reciprocal_s2(hkl: np.ndarray, cell) -> np.ndarray:
    """|s|² = 1/d² = hᵀ G* h of each reflection; ``cell`` is (a, b, c, α, β, γ) or a
    gemmi.UnitCell. (sin θ/λ)² is a quarter of it. The one s² of phasenet.

    >>> reciprocal_s2([[1, 0, 0], [1, 1, 0]], (5, 10, 10, 90, 90, 90)).round(4).tolist()
    [0.04, 0.05]
    """
    g = _metric(cell)
    h = np.asarray(hkl, dtype=np.float64).reshape(-1, 3).T  # columns: no reductions over a short axis
    return (g[0, 0] * h[0] ** 2 + g[1, 1] * h[1] ** 2 + g[2, 2] * h[2] ** 2
            + 2 * (g[0, 1] * h[0] * h[1] + g[0, 2] * h[0] * h[2] + g[1, 2] * h[1] * h[2]))


def d_spacings(hkl: np.ndarray, cell) -> np.ndarray:
    """d (Å) of each reflection (inf for (0, 0, 0)); ``cell`` as for :func:`reciprocal_s2`."""
    s2 = reciprocal_s2(hkl, cell)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(s2)


def resolution_mask(hkl: np.ndarray, cell, d_min: float | None) -> np.ndarray:
    """True for reflections with d ≥ d_min (all if d_min is None)."""
    if d_min is None:
        return np.ones(len(hkl), dtype=bool)
    if d_min <= 0:
        raise ValueError(f"d_min must be positive, got {d_min}")
    return d_spacings(hkl, cell) >= d_min - 1e-9


def sphere_hkl(cell, d_min: float) -> np.ndarray:
    """All (h, k, l) with d ≥ d_min, one of each Friedel pair, without (0, 0, 0)."""
    # h = a·s: on the sphere |s| <= 1/d_min, |h| <= |a| / d_min (the direct edge, not
    # 1/|a*|, which is shorter than |a| in oblique cells)
    hmax = [int(np.floor(float(edge) / d_min)) + 1 for edge in cell[:3]]
    r = [np.arange(-m, m + 1) for m in hmax]
    hkl = np.stack(np.meshgrid(*r, indexing="ij"), axis=-1).reshape(-1, 3)
    hkl = hkl[is_representative(hkl)]
    return hkl[resolution_mask(hkl, cell, d_min)].astype(np.int32)


#: read-only reflection arrays (canonical_hkl) seen so far, by id: kept alive so that
#: the id stays theirs; their bytes need not be hashed on every call
_HKL_BY_ID: dict[int, np.ndarray] = {}


def hkl_token(hkl: np.ndarray) -> tuple:
    """(key, n) identifying a reflection list for caches: the id of a read-only array
    that owns its data (canonical_hkl's), else the indices' bytes."""
    if (isinstance(hkl, np.ndarray) and hkl.base is None and not hkl.flags.writeable
            and hkl.ndim == 2):
        if id(hkl) not in _HKL_BY_ID and len(_HKL_BY_ID) < 64:
            _HKL_BY_ID[id(hkl)] = hkl  # kept alive: the id stays this array's
        if _HKL_BY_ID.get(id(hkl)) is hkl:
            return ("id", id(hkl)), len(hkl)
    arr = np.ascontiguousarray(hkl, dtype=np.int64)
    return ("bytes", arr.tobytes()), len(arr)


def hkl_from_token(token: tuple, n: int) -> np.ndarray:
    """The reflections (n, 3) int64 of a :func:`hkl_token`."""
    kind, value = token
    if kind == "id":
        return np.asarray(_HKL_BY_ID[value], dtype=np.int64).reshape(n, 3)
    return np.frombuffer(value, dtype=np.int64).reshape(n, 3)


#: The 8 origin shifts t ∈ {0, ½}³ of a centrosymmetric cell, as 2t ∈ {0, 1}³.
ORIGIN_SHIFTS_2T = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                            dtype=np.int64)


def origin_sign_flips(hkl: np.ndarray) -> np.ndarray:
    """(8, R) array of ±1: the factor (-1)^(2h·t) that moving the origin by t multiplies F(h) by.

    Row 0 is t = 0 (all +1); rows follow ``ORIGIN_SHIFTS_2T``. A sign label s ∈ {0, 1}
    (1 = phase 0) at origin t is ``s`` where the factor is +1 and ``1 - s`` where it is -1.

    >>> flips = origin_sign_flips(canonical_hkl())
    >>> flips.shape, int(flips[0].min())
    ((8, 4630), 1)
    """
    parity = (np.asarray(hkl, dtype=np.int64) @ ORIGIN_SHIFTS_2T.T) % 2   # (R, 8)
    return np.ascontiguousarray((1 - 2 * parity).T.astype(np.int8))
