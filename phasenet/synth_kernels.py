"""Compiled (numba) inner loops of the synthetic-structure generator.

Contact tests of candidate fragments against the image cloud of a cell
(:class:`phasenet.synth_packing.CellEnv`), the images themselves, the closing of
blocked growth sites, and the rigid-body compression of a grown crystal
(:func:`compress`). Nothing here draws random numbers: the callers pass draws made
with the structure's own ``numpy.random.Generator``, so results depend only on
(seed, index). :func:`warm_up` compiles everything (or loads numba's cache) once,
in the parent before a worker pool forks.
"""

from __future__ import annotations

import numpy as np

from phasenet import _cctbx_first  # noqa: F401
from numba import njit  # noqa: E402


@njit(cache=True)
def cloud_ok(cands, rad, is_h, step, cart, atom, kn, nc, alive, arad, ais_h, amol, pmol, dist_p,
             centre, cw, w, reach, tol, htol, clash_heavy, clash_h, clash_hh):
    """(P,) candidates (P, k, 3) clear of every image in the cloud within ``reach`` of
    ``centre`` (``cw``: the centre wrapped into the cell, ``w`` the shift). Identity
    images of the candidate's own molecule (``amol == pmol``) get intramolecular
    limits by topological distance (``step`` + ``dist_p``; <= 3 bonds: no limit)."""
    P, k = cands.shape[0], cands.shape[1]
    ok = np.ones(P, dtype=np.bool_)
    n_ok = P
    r2 = reach * reach
    for c in range(nc):
        dx = cart[c, 0] - cw[0]
        dy = cart[c, 1] - cw[1]
        dz = cart[c, 2] - cw[2]
        if dx * dx + dy * dy + dz * dz >= r2:
            continue
        j = atom[c]
        if not alive[j]:
            continue
        px, py, pz = dx + centre[0], dy + centre[1], dz + centre[2]
        ident = (kn[c, 0] == 0 and kn[c, 1] + w[0] == 0 and kn[c, 2] + w[1] == 0
                 and kn[c, 3] + w[2] == 0 and amol[j] == pmol)
        for a in range(k):
            if ident:
                if step[a] + dist_p[j] <= 3:
                    continue
                if is_h[a] and ais_h[j]:
                    lim = clash_hh
                elif is_h[a] or ais_h[j]:
                    lim = clash_h
                else:
                    lim = clash_heavy
            else:
                lim = rad[a] + arad[j] - (htol if (is_h[a] or ais_h[j]) else tol)
            l2 = lim * lim
            for p in range(P):
                if not ok[p]:
                    continue
                ex = cands[p, a, 0] - px
                ey = cands[p, a, 1] - py
                ez = cands[p, a, 2] - pz
                if ex * ex + ey * ey + ez * ez < l2:
                    ok[p] = False
                    n_ok -= 1
            if n_ok == 0:
                return ok
    return ok


@njit(cache=True)
def own_ok(cands, rad, is_h, rots, trans, m, minv, tol, htol):
    """(P,) candidates (P, k, 3) clear of their own images through (rots, trans)."""
    P, k = cands.shape[0], cands.shape[1]
    M = rots.shape[0]
    ok = np.ones(P, dtype=np.bool_)
    img = np.empty((k, 3))
    f = np.empty(3)
    g = np.empty(3)
    for p in range(P):
        for mm in range(M):
            for a in range(k):
                for i in range(3):
                    f[i] = minv[i, 0] * cands[p, a, 0] + minv[i, 1] * cands[p, a, 1] + minv[i, 2] * cands[p, a, 2]
                for i in range(3):
                    g[i] = rots[mm, i, 0] * f[0] + rots[mm, i, 1] * f[1] + rots[mm, i, 2] * f[2] + trans[mm, i]
                for i in range(3):
                    img[a, i] = m[i, 0] * g[0] + m[i, 1] * g[1] + m[i, 2] * g[2]
            for a in range(k):
                for b in range(k):
                    lim = rad[a] + rad[b] - (htol if (is_h[a] or is_h[b]) else tol)
                    ex = cands[p, a, 0] - img[b, 0]
                    ey = cands[p, a, 1] - img[b, 1]
                    ez = cands[p, a, 2] - img[b, 2]
                    if ex * ex + ey * ey + ez * ez < lim * lim:
                        ok[p] = False
                        break
                if not ok[p]:
                    break
            if not ok[p]:
                break
    return ok


@njit(cache=True)
def images(f, rot, trans, margin, m):
    """Every image R_k f_j + t_k + n of fractional points f (k, 3) inside the unit
    cell widened by ``margin`` (per axis, fractional): Cartesian (N, 3), row j (N,),
    and (op k, n) as (N, 4) floats."""
    Z, k = rot.shape[0], f.shape[0]
    lo = np.empty((Z, k, 3), dtype=np.int64)
    hi = np.empty((Z, k, 3), dtype=np.int64)
    g = np.empty((Z, k, 3))
    total = 0
    for z in range(Z):
        for a in range(k):
            cnt = 1
            for i in range(3):
                v = rot[z, i, 0] * f[a, 0] + rot[z, i, 1] * f[a, 1] + rot[z, i, 2] * f[a, 2] + trans[z, i]
                g[z, a, i] = v
                lo[z, a, i] = int(np.ceil(-margin[i] - v))
                hi[z, a, i] = int(np.floor(1.0 + margin[i] - v))
                cnt *= max(0, hi[z, a, i] - lo[z, a, i] + 1)
            total += cnt
    cart = np.empty((total, 3))
    row = np.empty(total, dtype=np.int64)
    kn = np.empty((total, 4))
    c = 0
    for z in range(Z):
        for a in range(k):
            for n0 in range(lo[z, a, 0], hi[z, a, 0] + 1):
                for n1 in range(lo[z, a, 1], hi[z, a, 1] + 1):
                    for n2 in range(lo[z, a, 2], hi[z, a, 2] + 1):
                        x = g[z, a, 0] + n0
                        y = g[z, a, 1] + n1
                        zz = g[z, a, 2] + n2
                        for i in range(3):
                            cart[c, i] = m[i, 0] * x + m[i, 1] * y + m[i, 2] * zz
                        row[c] = a
                        kn[c, 0] = z
                        kn[c, 1] = n0
                        kn[c, 2] = n1
                        kn[c, 3] = n2
                        c += 1
    return cart, row, kn


@njit(cache=True)
def blocked(q, w, cw, pmol, pxyz, cart, atom, kn, nc, alive, arad, ais_h, amol, axyz, radius,
            tol, htol, clash_heavy, clash_h):
    """(S,) probe atoms q (radius ``radius``, the first atom of a fragment at each open
    site) that touch an image or a non-neighbouring part of their own molecule."""
    S = q.shape[0]
    out = np.zeros(S, dtype=np.bool_)
    for s in range(S):
        for c in range(nc):
            j = atom[c]
            if not alive[j]:
                continue
            dx = cart[c, 0] - cw[s, 0]
            dy = cart[c, 1] - cw[s, 1]
            dz = cart[c, 2] - cw[s, 2]
            d2 = dx * dx + dy * dy + dz * dz
            if d2 > 16.0:
                continue
            ident = (kn[c, 0] == 0 and kn[c, 1] + w[s, 0] == 0 and kn[c, 2] + w[s, 1] == 0
                     and kn[c, 3] + w[s, 2] == 0 and amol[j] == pmol[s])
            if ident:
                ex = axyz[j, 0] - pxyz[s, 0]
                ey = axyz[j, 1] - pxyz[s, 1]
                ez = axyz[j, 2] - pxyz[s, 2]
                if ex * ex + ey * ey + ez * ez < 2.6 * 2.6:
                    continue
                lim = clash_h if ais_h[j] else clash_heavy
            else:
                lim = radius + arad[j] - (htol if ais_h[j] else tol)
            if d2 < lim * lim:
                out[s] = True
                break
    return out


# --------------------------------------------------------------------------- compression


@njit(cache=True)
def _overlap(a, cfa, qba, cf, qb, starts, ends, radm, m, minv, rot, trans, rad, is_h, tol, htol,
             cut, eps, spacing, ft, bound=np.inf):
    """Summed overlap (Å, sum of limit + eps - distance over pairs closer than that)
    of molecule ``a`` (fractional centroid ``cfa``, image offsets ``qba`` (Z, na, 3))
    with every symmetry and lattice image of every molecule (its own too, except
    itself). Molecule b's atoms are rows starts[b]:ends[b]; qb (Z, n, 3) holds
    Q_k (x_j - centroid) of every atom for every operation k. ``ft`` (6,) receives
    the force and torque (about the centroid) pushing the overlaps apart. Stops early
    (returning a partial sum) once the sum reaches ``bound``."""
    ft[:] = 0.0
    Z = rot.shape[0]
    M = starts.shape[0]
    a0, a1 = starts[a], ends[a]
    na = a1 - a0
    ca = np.empty(3)
    for i in range(3):
        ca[i] = m[i, 0] * cfa[0] + m[i, 1] * cfa[1] + m[i, 2] * cfa[2]
    total = 0.0
    g = np.empty(3)
    ctr = np.empty(3)
    nmax = 0
    for b in range(M):
        nmax = max(nmax, ends[b] - starts[b])
    lst = np.empty(nmax, dtype=np.int64)
    lpos = np.empty((nmax, 3))
    for b in range(M):
        reach = radm[a] + radm[b] + cut
        same = b == a
        for k in range(Z):
            for i in range(3):
                if same:
                    v = cfa
                else:
                    v = cf[b]
                g[i] = rot[k, i, 0] * v[0] + rot[k, i, 1] * v[1] + rot[k, i, 2] * v[2] + trans[k, i]
            lo0 = int(np.ceil(cfa[0] - g[0] - reach / spacing[0]))
            hi0 = int(np.floor(cfa[0] - g[0] + reach / spacing[0]))
            lo1 = int(np.ceil(cfa[1] - g[1] - reach / spacing[1]))
            hi1 = int(np.floor(cfa[1] - g[1] + reach / spacing[1]))
            lo2 = int(np.ceil(cfa[2] - g[2] - reach / spacing[2]))
            hi2 = int(np.floor(cfa[2] - g[2] + reach / spacing[2]))
            for n0 in range(lo0, hi0 + 1):
                for n1 in range(lo1, hi1 + 1):
                    for n2 in range(lo2, hi2 + 1):
                        if same and k == 0 and n0 == 0 and n1 == 0 and n2 == 0:
                            continue
                        x, y, z = g[0] + n0, g[1] + n1, g[2] + n2
                        for i in range(3):
                            ctr[i] = m[i, 0] * x + m[i, 1] * y + m[i, 2] * z
                        dx, dy, dz = ctr[0] - ca[0], ctr[1] - ca[1], ctr[2] - ca[2]
                        if dx * dx + dy * dy + dz * dz >= reach * reach:
                            continue
                        # B atoms that can reach A's sphere, then A atoms that can reach B's
                        ra = radm[a] + cut
                        nl = 0
                        for jj in range(starts[b], ends[b]):
                            if same:
                                qx = ctr[0] + qba[k, jj - a0, 0]
                                qy = ctr[1] + qba[k, jj - a0, 1]
                                qz = ctr[2] + qba[k, jj - a0, 2]
                            else:
                                qx = ctr[0] + qb[k, jj, 0]
                                qy = ctr[1] + qb[k, jj, 1]
                                qz = ctr[2] + qb[k, jj, 2]
                            ex, ey, ez = qx - ca[0], qy - ca[1], qz - ca[2]
                            if ex * ex + ey * ey + ez * ez < ra * ra:
                                lst[nl] = jj
                                lpos[nl, 0], lpos[nl, 1], lpos[nl, 2] = qx, qy, qz
                                nl += 1
                        if nl == 0:
                            continue
                        rb = radm[b] + cut
                        for ii in range(na):
                            px = ca[0] + qba[0, ii, 0]
                            py = ca[1] + qba[0, ii, 1]
                            pz = ca[2] + qba[0, ii, 2]
                            ex, ey, ez = px - ctr[0], py - ctr[1], pz - ctr[2]
                            if ex * ex + ey * ey + ez * ez >= rb * rb:
                                continue
                            i_at = a0 + ii
                            for li in range(nl):
                                jj = lst[li]
                                fx = px - lpos[li, 0]
                                fy = py - lpos[li, 1]
                                fz = pz - lpos[li, 2]
                                d2 = fx * fx + fy * fy + fz * fz
                                if d2 >= cut * cut:
                                    continue
                                lim = rad[i_at] + rad[jj] - (htol if (is_h[i_at] or is_h[jj]) else tol) + eps
                                if d2 < lim * lim:
                                    d = np.sqrt(d2)
                                    total += lim - d
                                    w = (lim - d) / (d + 1e-9)
                                    fx, fy, fz = fx * w, fy * w, fz * w
                                    ft[0] += fx
                                    ft[1] += fy
                                    ft[2] += fz
                                    rx, ry, rz = qba[0, ii, 0], qba[0, ii, 1], qba[0, ii, 2]
                                    ft[3] += ry * fz - rz * fy
                                    ft[4] += rz * fx - rx * fz
                                    ft[5] += rx * fy - ry * fx
                                    if total >= bound:
                                        return total
    return total


@njit(cache=True)
def _qb_of(q, body, out, r0):
    """out[k, r0 + j] = Q_k body[j]."""
    for k in range(q.shape[0]):
        for j in range(body.shape[0]):
            for i in range(3):
                out[k, r0 + j, i] = q[k, i, 0] * body[j, 0] + q[k, i, 1] * body[j, 1] + q[k, i, 2] * body[j, 2]


@njit(cache=True)
def _small_rotation(ax, ay, az, angle):
    n = np.sqrt(ax * ax + ay * ay + az * az) + 1e-12
    ax, ay, az = ax / n, ay / n, az / n
    c, s = np.cos(angle), np.sin(angle)
    t = 1 - c
    r = np.empty((3, 3))
    r[0, 0] = c + ax * ax * t
    r[0, 1] = ax * ay * t - az * s
    r[0, 2] = ax * az * t + ay * s
    r[1, 0] = ay * ax * t + az * s
    r[1, 1] = c + ay * ay * t
    r[1, 2] = ay * az * t - ax * s
    r[2, 0] = az * ax * t - ay * s
    r[2, 1] = az * ay * t + ax * s
    r[2, 2] = c + az * az * t
    return r


@njit(cache=True)
def _cell_overlaps(m, cf, qb, starts, ends, radm, rot, trans, rad, is_h, tol, htol, cut, eps, ft):
    """For the cell matrix ``m``: its inverse, the spacings of its lattice planes, and the
    overlap of every rigid molecule with everything else."""
    minv = np.linalg.inv(m)
    spacing = np.empty(3)
    for i in range(3):
        spacing[i] = 1.0 / np.sqrt(minv[i, 0] ** 2 + minv[i, 1] ** 2 + minv[i, 2] ** 2)
    M = starts.shape[0]
    ov = np.empty(M)
    for b in range(M):
        ov[b] = _overlap(b, cf[b], qb[:, starts[b]:ends[b]], cf, qb, starts, ends, radm, m, minv,
                         rot, trans, rad, is_h, tol, htol, cut, eps, spacing, ft)
    return minv, spacing, ov


@njit(cache=True)
def compress(xyz, starts, ends, m0, rot, trans, rad, is_h, tol, htol, min_len, min_volume, axes,
             draws, step0, min_step, relax_trials, rot_sigma, shift_sigma, eps, descent, expand_step, patience):
    """Squeeze a grown crystal: shrink the cell (column scaling of ``m0``: edges along
    ``axes`` draws, 3 = all) with every molecule rigid at a fixed fractional
    centroid, then remove the new contacts by Monte Carlo rigid-body moves (a small
    rotation about the centroid and a shift; a move is kept when it lowers the
    molecule's overlap). A step that cannot be relaxed in ``relax_trials`` moves is
    undone and the step halved; ends below ``min_step``. Never below ``min_len``
    edges or ``min_volume``. ``draws`` (T, 8): uniform [0, 1) molecule picks and
    normal rotation axis/angle/shift draws, used cyclically.
    Returns (edge scale (3,), new xyz (n, 3))."""
    n = xyz.shape[0]
    M = starts.shape[0]
    Z = rot.shape[0]
    minv0 = np.linalg.inv(m0)
    q = np.empty((Z, 3, 3))
    for k in range(Z):
        q[k] = m0 @ rot[k] @ minv0
    len0 = np.empty(3)
    for i in range(3):
        len0[i] = np.sqrt(m0[0, i] ** 2 + m0[1, i] ** 2 + m0[2, i] ** 2)
    vol0 = abs(np.linalg.det(m0))
    cut = 2.0 * rad.max() - min(tol, htol) + eps
    cf = np.empty((M, 3))
    body = np.empty((n, 3))
    radm = np.zeros(M)
    for b in range(M):
        c = np.zeros(3)
        for j in range(starts[b], ends[b]):
            c += xyz[j]
        c /= ends[b] - starts[b]
        cf[b] = minv0 @ c
        for j in range(starts[b], ends[b]):
            body[j] = xyz[j] - c
            radm[b] = max(radm[b], np.sqrt((body[j] ** 2).sum()))
    qb = np.empty((Z, n, 3))
    _qb_of(q, body, qb, 0)
    scale = np.ones(3)
    ft = np.zeros(6)
    step = step0
    it = 0
    td = 0
    T = draws.shape[0]
    n_ax = axes.shape[0]
    # a start with overlaps (growth with soft limits): relax, expanding the cell
    # isotropically while the overlaps cannot be removed
    grow = 0
    while True:
        m = m0 * scale[None, :]
        minv, spacing, ov = _cell_overlaps(m, cf, qb, starts, ends, radm, rot, trans, rad, is_h, tol,
                                           htol, cut, eps, ft)
        if ov.sum() == 0.0:
            break
        for t in range(relax_trials):
            d = draws[td % T]
            td += 1
            b = int(d[0] * M)
            if ov[b] == 0.0:
                continue
            r = _small_rotation(d[1], d[2], d[3], d[4] * rot_sigma)
            nb = ends[b] - starts[b]
            nbody = np.empty((nb, 3))
            for j in range(nb):
                nbody[j] = r @ body[starts[b] + j]
            nqb = np.empty((Z, nb, 3))
            _qb_of(q, nbody, nqb, 0)
            shift = np.empty(3)
            shift[0], shift[1], shift[2] = d[5] * shift_sigma, d[6] * shift_sigma, d[7] * shift_sigma
            ncf = cf[b] + minv @ shift
            new = _overlap(b, ncf, nqb, cf, qb, starts, ends, radm, m, minv, rot, trans, rad, is_h,
                           tol, htol, cut, eps, spacing, ft, ov[b])
            if new < ov[b]:
                cf[b] = ncf
                body[starts[b]:ends[b]] = nbody
                qb[:, starts[b]:ends[b]] = nqb
                for c in range(M):
                    ov[c] = _overlap(c, cf[c], qb[:, starts[c]:ends[c]], cf, qb, starts, ends,
                                     radm, m, minv, rot, trans, rad, is_h, tol, htol, cut, eps,
                                     spacing, ft)
                if ov.sum() == 0.0:
                    break
        if ov.sum() == 0.0:
            break
        scale *= 1.0 + expand_step
        grow += 1
        if grow > 60:
            break
    while step >= min_step:
        ax = axes[it % n_ax]
        it += 1
        trial = scale.copy()
        if ax == 3:
            trial *= 1.0 - step
        else:
            trial[ax] *= 1.0 - step
        if (trial * len0).min() < min_len or vol0 * trial.prod() < min_volume:
            step *= 0.5
            continue
        m = m0 * trial[None, :]
        minv, spacing, ov = _cell_overlaps(m, cf, qb, starts, ends, radm, rot, trans, rad, is_h, tol,
                                           htol, cut, eps, ft)
        if ov.sum() > 0.0:
            cf_save, body_save, qb_save = cf.copy(), body.copy(), qb.copy()
            gain = np.full(M, 1.0)
            stale = 0
            for t in range(relax_trials):
                if stale >= patience:
                    break
                stale += 1
                d = draws[td % T]
                td += 1
                b = int(d[0] * M)
                if ov[b] == 0.0:
                    continue
                shift = np.empty(3)
                if descent and gain[b] > 0.05:  # steepest descent on the overlap, adaptive step
                    _overlap(b, cf[b], qb[:, starts[b]:ends[b]], cf, qb, starts, ends, radm, m, minv,
                             rot, trans, rad, is_h, tol, htol, cut, eps, spacing, ft)
                    fn = np.sqrt(ft[0] ** 2 + ft[1] ** 2 + ft[2] ** 2) + 1e-12
                    s_len = min(gain[b] * fn, 0.3)
                    shift[0], shift[1], shift[2] = ft[0] / fn * s_len, ft[1] / fn * s_len, ft[2] / fn * s_len
                    tn = np.sqrt(ft[3] ** 2 + ft[4] ** 2 + ft[5] ** 2) + 1e-12
                    ang = min(gain[b] * tn / (radm[b] * radm[b] + 1.0), 0.1)
                    r = _small_rotation(ft[3], ft[4], ft[5], ang)
                else:  # stuck: a random move
                    r = _small_rotation(d[1], d[2], d[3], d[4] * rot_sigma)
                    shift[0], shift[1], shift[2] = d[5] * shift_sigma, d[6] * shift_sigma, d[7] * shift_sigma
                nb = ends[b] - starts[b]
                nbody = np.empty((nb, 3))
                for j in range(nb):
                    nbody[j] = r @ body[starts[b] + j]
                nqb = np.empty((Z, nb, 3))
                _qb_of(q, nbody, nqb, 0)
                ncf = cf[b] + minv @ shift
                new = _overlap(b, ncf, nqb, cf, qb, starts, ends, radm, m, minv, rot, trans, rad, is_h,
                               tol, htol, cut, eps, spacing, ft, ov[b])
                if new < ov[b]:
                    stale = 0
                    gain[b] = min(gain[b] * 1.5, 4.0)
                    cf[b] = ncf
                    body[starts[b]:ends[b]] = nbody
                    qb[:, starts[b]:ends[b]] = nqb
                    if M == 1:
                        ov[b] = new
                    else:
                        for c in range(M):
                            ov[c] = _overlap(c, cf[c], qb[:, starts[c]:ends[c]], cf, qb, starts, ends,
                                             radm, m, minv, rot, trans, rad, is_h, tol, htol, cut, eps,
                                             spacing, ft)
                    if ov.sum() == 0.0:
                        break
                else:
                    gain[b] = gain[b] * 0.4 if gain[b] > 0.05 else 1.0
                    if not descent:
                        gain[b] = 0.0
            if ov.sum() > 0.0:
                cf, body, qb = cf_save, body_save, qb_save
                step *= 0.5
                continue
        scale = trial
    m = m0 * scale[None, :]
    out = np.empty((n, 3))
    for b in range(M):
        c = m @ cf[b]
        for j in range(starts[b], ends[b]):
            out[j] = c + body[j]
    return scale, out


def warm_up() -> None:
    """Compile every kernel (or load it from numba's cache) in this process, so that
    forked workers inherit compiled code instead of each compiling it again."""
    if all(f.signatures for f in (cloud_ok, own_ok, images, blocked, compress)):
        return
    from phasenet.synth import SynthOptions, generate_structure

    for i in range(4):
        try:
            generate_structure(i, SynthOptions(seed=0, space_groups=("C2/c",), atoms=(6, 12),
                                               compress_rounds=1))
        except Exception:  # only compilation matters here
            pass
