"""Variable-cell relaxation of rigid molecules under pressure (compiled with numba).

Growth jams molecules in a loose packing, and shrinking the cell edge by edge with
random rigid-body moves (an earlier release) stalled near 21 Å³ per non-H atom. Real crystals are denser because the cell *shape* and the
molecules settle together. :func:`relax_cell` minimises

    H = U + P·V,   U = ¼ Σ_i Σ_j' max(0, lim_ij − d_ij')²

over the rigid-body positions and orientations of the molecules of the asymmetric
unit and the cell itself: i runs over the atoms of the asymmetric unit, j' over every
symmetry and lattice image of every atom (a molecule's own atoms at the identity
excluded), lim_ij is the van der Waals contact limit. The cell changes by symmetric
strains allowed by its crystal system (``strain_mask``: all six components in
triclinic, xx, yy, zz, xz in monoclinic b-unique with b along y, the diagonal in
orthorhombic), which keeps every symmetry operation exact. A pressure phase packs
the molecules (overlaps up to a few tenths of an Å are allowed there), then a phase
at P = 0 with the limits raised by ``margin`` removes them; the returned U, from a
fresh pair list with the limits + ``eps``, says whether any overlap is left (the
caller then keeps the unrelaxed crystal).

Steps are steepest descent with a backtracking step size on H (a step is kept only
when H falls), so the result never depends on anything but the inputs. Pairs come
from a Verlet list (cut-off = largest limit + ``skin``) rebuilt whenever the
accumulated motion may exceed half the skin.

Forces: for the asymmetric-unit energy above, the derivative with respect to an
atom i of the asymmetric unit (moving every image of i with it) is the sum of the
pair terms in which i is the first index, ``(lim − d) r/d`` with r = x_i − x_j'; a
molecule's force and torque (about its centroid) sum those. The cell stress is
∂U/∂ε = −½ Σ (lim − d)/d · r ⊗ (C_i − C_j'), C the centroids (the molecules stay
rigid, their centroids follow the strain).
"""

from __future__ import annotations

import numpy as np

from numba import njit

#: Allowed strain components (symmetric 3x3 masks) per crystal system, in the frame
#: where b is along y and a, c lie in the xz plane for monoclinic cells (gemmi's).
STRAIN_MASKS = {
    "triclinic": np.ones((3, 3)),
    "monoclinic": np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]),
    "orthorhombic": np.eye(3),
}


@njit(cache=True)
def _pair_list(cf, body, mol_of, starts, ends, radm, m, rot, trans, qk, rad, is_h, tol, htol, skin):
    """Every (atom i of the asymmetric unit, image of atom j) pair closer than its
    limit + ``skin``: i, j, op k, lattice n (P, 3), limit."""
    M = starts.shape[0]
    Z = rot.shape[0]
    minv = np.linalg.inv(m)
    spacing = np.empty(3)
    for a in range(3):
        spacing[a] = 1.0 / np.sqrt(minv[a, 0] ** 2 + minv[a, 1] ** 2 + minv[a, 2] ** 2)
    rmax = rad.max()
    cap = 1024
    pi = np.empty(cap, dtype=np.int64)
    pj = np.empty(cap, dtype=np.int64)
    pk = np.empty(cap, dtype=np.int64)
    pn = np.empty((cap, 3), dtype=np.int64)
    plim = np.empty(cap)
    cnt = 0
    cut = 2.0 * rmax - min(tol, htol) + skin
    ca = np.empty(3)
    g = np.empty(3)
    cb = np.empty(3)
    nmax = 0
    for b in range(M):
        nmax = max(nmax, ends[b] - starts[b])
    lst = np.empty(nmax, dtype=np.int64)
    lpos = np.empty((nmax, 3))
    n = body.shape[0]
    qb = np.empty((Z, n, 3))  # rotated bodies Q_k body_j
    for k in range(Z):
        for j in range(n):
            for a in range(3):
                qb[k, j, a] = qk[k, a, 0] * body[j, 0] + qk[k, a, 1] * body[j, 1] + qk[k, a, 2] * body[j, 2]
    for b in range(M):
        for a in range(3):
            ca[a] = m[a, 0] * cf[b, 0] + m[a, 1] * cf[b, 1] + m[a, 2] * cf[b, 2]
        for c in range(M):
            reach = radm[b] + radm[c] + cut
            for k in range(Z):
                for a in range(3):
                    g[a] = rot[k, a, 0] * cf[c, 0] + rot[k, a, 1] * cf[c, 1] + rot[k, a, 2] * cf[c, 2] + trans[k, a]
                lo0 = int(np.ceil(cf[b, 0] - g[0] - reach / spacing[0]))
                hi0 = int(np.floor(cf[b, 0] - g[0] + reach / spacing[0]))
                lo1 = int(np.ceil(cf[b, 1] - g[1] - reach / spacing[1]))
                hi1 = int(np.floor(cf[b, 1] - g[1] + reach / spacing[1]))
                lo2 = int(np.ceil(cf[b, 2] - g[2] - reach / spacing[2]))
                hi2 = int(np.floor(cf[b, 2] - g[2] + reach / spacing[2]))
                for n0 in range(lo0, hi0 + 1):
                    for n1 in range(lo1, hi1 + 1):
                        for n2 in range(lo2, hi2 + 1):
                            if c == b and k == 0 and n0 == 0 and n1 == 0 and n2 == 0:
                                continue
                            x, y, z = g[0] + n0, g[1] + n1, g[2] + n2
                            for a in range(3):
                                cb[a] = m[a, 0] * x + m[a, 1] * y + m[a, 2] * z
                            dx, dy, dz = cb[0] - ca[0], cb[1] - ca[1], cb[2] - ca[2]
                            if dx * dx + dy * dy + dz * dz >= reach * reach:
                                continue
                            # atoms of the image that can reach b's sphere, then b's atoms near the image
                            nl = 0
                            ra = radm[b] + cut
                            for j in range(starts[c], ends[c]):
                                qx = cb[0] + qb[k, j, 0]
                                qy = cb[1] + qb[k, j, 1]
                                qz = cb[2] + qb[k, j, 2]
                                ex, ey, ez = qx - ca[0], qy - ca[1], qz - ca[2]
                                if ex * ex + ey * ey + ez * ez < ra * ra:
                                    lst[nl] = j
                                    lpos[nl, 0], lpos[nl, 1], lpos[nl, 2] = qx, qy, qz
                                    nl += 1
                            if nl == 0:
                                continue
                            rb = radm[c] + cut
                            for i in range(starts[b], ends[b]):
                                px = ca[0] + body[i, 0]
                                py = ca[1] + body[i, 1]
                                pz = ca[2] + body[i, 2]
                                ex, ey, ez = px - cb[0], py - cb[1], pz - cb[2]
                                if ex * ex + ey * ey + ez * ez >= rb * rb:
                                    continue
                                for li in range(nl):
                                    j = lst[li]
                                    qx, qy, qz = lpos[li, 0], lpos[li, 1], lpos[li, 2]
                                    lim = rad[i] + rad[j] - (htol if (is_h[i] or is_h[j]) else tol)
                                    r = lim + skin
                                    ex, ey, ez = px - qx, py - qy, pz - qz
                                    if ex * ex + ey * ey + ez * ez >= r * r:
                                        continue
                                    if cnt == cap:
                                        cap *= 2
                                        pi2 = np.empty(cap, dtype=np.int64)
                                        pj2 = np.empty(cap, dtype=np.int64)
                                        pk2 = np.empty(cap, dtype=np.int64)
                                        pn2 = np.empty((cap, 3), dtype=np.int64)
                                        plim2 = np.empty(cap)
                                        pi2[:cnt] = pi[:cnt]
                                        pj2[:cnt] = pj[:cnt]
                                        pk2[:cnt] = pk[:cnt]
                                        pn2[:cnt] = pn[:cnt]
                                        plim2[:cnt] = plim[:cnt]
                                        pi, pj, pk, pn, plim = pi2, pj2, pk2, pn2, plim2
                                    pi[cnt] = i
                                    pj[cnt] = j
                                    pk[cnt] = k
                                    pn[cnt, 0], pn[cnt, 1], pn[cnt, 2] = n0, n1, n2
                                    plim[cnt] = lim
                                    cnt += 1
    return pi[:cnt], pj[:cnt], pk[:cnt], pn[:cnt], plim[:cnt]


@njit(cache=True)
def _energy(cf, body, mol_of, m, rot, trans, qk, pi, pj, pk, pn, plim, add, force, torque, stress,
            curv, want_grad):
    """U (and, with ``want_grad``, per-molecule force, torque and the cell stress, and in
    ``curv`` (M + 1, 2) the diagonal curvatures used to precondition the step: per
    molecule, overlapping pairs and Σ|body|² over them; last row, Σ|ΔC|² for the cell)."""
    U = 0.0
    if want_grad:
        force[:] = 0.0
        torque[:] = 0.0
        stress[:] = 0.0
        curv[:] = 0.0
    M = cf.shape[0]
    Z = rot.shape[0]
    # per evaluation: fractional centroid differences cf_b - (R_k cf_c + t_k) and the
    # rotated bodies Q_k body_j, so that a pair costs a few flops
    dfr = np.empty((M, M, Z, 3))
    for b in range(M):
        for c in range(M):
            for k in range(Z):
                for a in range(3):
                    dfr[b, c, k, a] = cf[b, a] - (rot[k, a, 0] * cf[c, 0] + rot[k, a, 1] * cf[c, 1]
                                                  + rot[k, a, 2] * cf[c, 2] + trans[k, a])
    n = body.shape[0]
    qb = np.empty((Z, n, 3))
    for k in range(Z):
        for j in range(n):
            for a in range(3):
                qb[k, j, a] = qk[k, a, 0] * body[j, 0] + qk[k, a, 1] * body[j, 1] + qk[k, a, 2] * body[j, 2]
    for p in range(pi.shape[0]):
        i, j, k = pi[p], pj[p], pk[p]
        b, c = mol_of[i], mol_of[j]
        fx = dfr[b, c, k, 0] - pn[p, 0]
        fy = dfr[b, c, k, 1] - pn[p, 1]
        fz = dfr[b, c, k, 2] - pn[p, 2]
        dcx = m[0, 0] * fx + m[0, 1] * fy + m[0, 2] * fz  # C_i - C_j' (Cartesian)
        dcy = m[1, 0] * fx + m[1, 1] * fy + m[1, 2] * fz
        dcz = m[2, 0] * fx + m[2, 1] * fy + m[2, 2] * fz
        rx = dcx + body[i, 0] - qb[k, j, 0]
        ry = dcy + body[i, 1] - qb[k, j, 1]
        rz = dcz + body[i, 2] - qb[k, j, 2]
        d2 = rx * rx + ry * ry + rz * rz
        lim = plim[p] + add
        if d2 >= lim * lim:
            continue
        d = np.sqrt(d2) + 1e-12
        ov = lim - d
        U += 0.25 * ov * ov
        if want_grad:
            w = ov / d
            fx, fy, fz = rx * w, ry * w, rz * w
            force[b, 0] += fx
            force[b, 1] += fy
            force[b, 2] += fz
            bx, by, bz = body[i, 0], body[i, 1], body[i, 2]
            torque[b, 0] += by * fz - bz * fy
            torque[b, 1] += bz * fx - bx * fz
            torque[b, 2] += bx * fy - by * fx
            curv[b, 0] += 1.0
            curv[b, 1] += bx * bx + by * by + bz * bz
            curv[-1, 0] += 0.5 * (dcx * dcx + dcy * dcy + dcz * dcz)
            h = -0.5 * w
            stress[0, 0] += h * rx * dcx
            stress[0, 1] += h * rx * dcy
            stress[0, 2] += h * rx * dcz
            stress[1, 0] += h * ry * dcx
            stress[1, 1] += h * ry * dcy
            stress[1, 2] += h * ry * dcz
            stress[2, 0] += h * rz * dcx
            stress[2, 1] += h * rz * dcy
            stress[2, 2] += h * rz * dcz
    return U


@njit(cache=True)
def _det3(m):
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
            - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))


@njit(cache=True)
def _inv3(m):
    """Inverse of a 3x3 matrix (closed form: no LAPACK call in the inner loop)."""
    d = _det3(m)
    r = np.empty((3, 3))
    r[0, 0] = (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) / d
    r[0, 1] = (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) / d
    r[0, 2] = (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) / d
    r[1, 0] = (m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]) / d
    r[1, 1] = (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) / d
    r[1, 2] = (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) / d
    r[2, 0] = (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]) / d
    r[2, 1] = (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) / d
    r[2, 2] = (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) / d
    return r


@njit(cache=True)
def _matmul3(a, b):
    r = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            r[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return r


@njit(cache=True)
def _rotation(ax, ay, az, angle):
    """Rotation by ``angle`` about the axis (ax, ay, az) (Rodrigues)."""
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
def _cell_ok(m, m_prev, min_edge, max_edge, min_shape):
    """Edges within [min_edge, max_edge] (an edge already longer than max_edge in
    ``m_prev`` may only shrink) and the cell not flatter than ``min_shape`` (V / (a b c),
    1 for a rectangular box)."""
    prod = 1.0
    for a in range(3):
        e = np.sqrt(m[0, a] ** 2 + m[1, a] ** 2 + m[2, a] ** 2)
        e0 = np.sqrt(m_prev[0, a] ** 2 + m_prev[1, a] ** 2 + m_prev[2, a] ** 2)
        if e < min_edge or e > max(max_edge, e0):
            return False
        prod *= e
    return abs(_det3(m)) >= min_shape * prod


@njit(cache=True)
def relax_cell(xyz, starts, ends, m0, rot, trans, rad, is_h, tol, htol, strain_mask, pressure,
               n_press, n_release, eps, min_edge, max_edge, min_shape, min_volume, skin=1.5,
               margin=0.05, press_margin=0.0):
    """Relax rigid molecules (atoms ``xyz`` (n, 3) Cartesian in the frame of the cell
    matrix ``m0`` (columns a, b, c), molecule b = rows starts[b]:ends[b]) and the cell
    under ``pressure`` for ``n_press`` steps, then at zero pressure against the limits
    + ``margin`` for up to ``n_release`` steps, stopping as soon as no pair is closer
    than its limit + ``eps``. The cell
    keeps edges in [min_edge, max_edge] (edges that start longer only shrink), V/(abc) >= ``min_shape`` and V >= ``min_volume``.
    Returns (cell matrix (3, 3), xyz (n, 3), U against the limits + ``eps`` at the end
    (0: no overlap left; from a fresh pair list), counts: steps, energy evaluations,
    pair-list builds, pairs in the last list)."""
    n = xyz.shape[0]
    M = starts.shape[0]
    Z = rot.shape[0]
    m = m0.copy()
    minv0 = np.linalg.inv(m0)
    qk = np.empty((Z, 3, 3))  # Cartesian parts of the operations (unchanged by allowed strains)
    for k in range(Z):
        qk[k] = m0 @ rot[k] @ minv0
    mol_of = np.empty(n, dtype=np.int64)
    cf = np.empty((M, 3))
    body = np.empty((n, 3))
    radm = np.zeros(M)
    for b in range(M):
        c = np.zeros(3)
        for j in range(starts[b], ends[b]):
            c += xyz[j]
            mol_of[j] = b
        c /= ends[b] - starts[b]
        cf[b] = minv0 @ c
        for j in range(starts[b], ends[b]):
            body[j] = xyz[j] - c
            radm[b] = max(radm[b], np.sqrt((body[j] ** 2).sum()))
    force = np.empty((M, 3))
    torque = np.empty((M, 3))
    stress = np.empty((3, 3))
    f2 = np.empty((M, 3))
    t2 = np.empty((M, 3))
    s2 = np.empty((3, 3))
    curv = np.zeros((M + 1, 2))
    curv2 = np.zeros((M + 1, 2))
    cfn = np.empty((M, 3))  # trial state
    bodyn = np.empty((n, 3))
    rlen = radm.max() * 2.0 + 2.0 * rad.max() + skin  # reach of a strain on pair vectors
    pi, pj, pk, pn, plim = _pair_list(cf, body, mol_of, starts, ends, radm, m, rot, trans, qk, rad,
                                      is_h, tol, htol, skin)
    moved = 0.0
    step = 0.5
    counts = np.zeros(4, dtype=np.int64)
    counts[2] = 1
    U = 0.0
    total = n_press + n_release
    for it in range(total):
        press = it < n_press
        P = pressure if press else 0.0
        add = press_margin if press else margin
        if moved + 0.1 > 0.5 * skin:  # a pair vector may have changed by up to 2 x moved
            pi, pj, pk, pn, plim = _pair_list(cf, body, mol_of, starts, ends, radm, m, rot, trans, qk,
                                              rad, is_h, tol, htol, skin)
            moved = 0.0
            counts[2] += 1
        counts[0] += 1
        counts[1] += 1
        vol = abs(_det3(m))
        U = _energy(cf, body, mol_of, m, rot, trans, qk, pi, pj, pk, pn, plim, add, force, torque,
                    stress, curv, True)
        if not press and _energy(cf, body, mol_of, m, rot, trans, qk, pi, pj, pk, pn, plim, eps, f2,
                                 t2, s2, curv2, False) == 0.0:
            break
        H = U + P * vol
        # strain direction: -(stress + P V I), masked, symmetrised, per unit of pair reach
        eps_dir = np.zeros((3, 3))
        for a in range(3):
            for c in range(3):
                s = 0.5 * (stress[a, c] + stress[c, a])
                if a == c:
                    s += P * vol
                eps_dir[a, c] = -s * strain_mask[a, c]
        # preconditioned directions (force / curvature): shifts, rotation vectors, strain
        sh_dir = np.empty((M, 3))
        rt_dir = np.empty((M, 3))
        for b in range(M):
            for a in range(3):
                sh_dir[b, a] = force[b, a] / (curv[b, 0] + 1.0)
                rt_dir[b, a] = torque[b, a] / (curv[b, 1] + radm[b] ** 2 + 1.0)
        ke = curv[M, 0] + vol ** (2.0 / 3.0)
        for a in range(3):
            for c in range(3):
                eps_dir[a, c] /= ke
        accepted = False
        for _ in range(12):
            # largest displacement of any pair vector this step would cause
            dmax = 0.0
            for b in range(M):
                fn = np.sqrt(sh_dir[b, 0] ** 2 + sh_dir[b, 1] ** 2 + sh_dir[b, 2] ** 2) * step
                tn = np.sqrt(rt_dir[b, 0] ** 2 + rt_dir[b, 1] ** 2 + rt_dir[b, 2] ** 2) * step
                dmax = max(dmax, fn + tn * radm[b])
            en = 0.0
            for a in range(3):
                for c in range(3):
                    en = max(en, abs(eps_dir[a, c]) * step)
            dmax = max(dmax, en * rlen)
            f = 1.0
            if dmax > 0.1:  # at most 0.1 Å of motion per step
                f = 0.1 / dmax
            s = step * f
            de = np.eye(3)
            for a in range(3):
                for c in range(3):
                    de[a, c] += eps_dir[a, c] * s
            mnew = _matmul3(de, m)
            vnew = abs(_det3(mnew))
            if not _cell_ok(mnew, m, min_edge, max_edge, min_shape) or vnew < min_volume:
                step *= 0.5
                continue
            minvn = _inv3(mnew)
            for b in range(M):
                # centroid: follows the strain (fixed fractional) plus the shift
                for a in range(3):
                    cfn[b, a] = cf[b, a] + s * (minvn[a, 0] * sh_dir[b, 0] + minvn[a, 1] * sh_dir[b, 1]
                                                + minvn[a, 2] * sh_dir[b, 2])
                tn = np.sqrt(rt_dir[b, 0] ** 2 + rt_dir[b, 1] ** 2 + rt_dir[b, 2] ** 2)
                if tn > 0.0:
                    r = _rotation(rt_dir[b, 0], rt_dir[b, 1], rt_dir[b, 2], s * tn)
                else:
                    r = np.eye(3)
                for j in range(starts[b], ends[b]):
                    for a in range(3):
                        bodyn[j, a] = r[a, 0] * body[j, 0] + r[a, 1] * body[j, 1] + r[a, 2] * body[j, 2]
            counts[1] += 1
            Un = _energy(cfn, bodyn, mol_of, mnew, rot, trans, qk, pi, pj, pk, pn, plim, add, f2, t2,
                         s2, curv2, False)
            if Un + P * vnew < H:
                m = mnew
                cf, cfn = cfn, cf  # swap buffers: the trial state becomes the current one
                body, bodyn = bodyn, body
                moved += dmax * f
                U = Un
                step = min(step * 1.3, 4.0)
                accepted = True
                break
            step *= 0.5
        if not accepted:
            if not press:
                break
            step = 0.5
    # the verdict from a fresh pair list: overlaps beyond the limits + eps
    pi, pj, pk, pn, plim = _pair_list(cf, body, mol_of, starts, ends, radm, m, rot, trans, qk, rad,
                                      is_h, tol, htol, skin)
    counts[2] += 1
    U = _energy(cf, body, mol_of, m, rot, trans, qk, pi, pj, pk, pn, plim, eps, f2, t2, s2, curv2, False)
    out = np.empty((n, 3))
    for b in range(M):
        c = m @ cf[b]
        for j in range(starts[b], ends[b]):
            out[j] = c + body[j]
    counts[3] = pi.shape[0]
    return m, out, U, counts
