"""Compiled (numba) inner loops of the synthetic-structure generator.

Growth: fragment coordinates (:func:`star_xyz`, :func:`orient`, :func:`rigid`), the
bond graph (:func:`link`, :func:`unlink`), one call per placement that tests the
candidate torsions of a fragment against the molecule and the image cloud of the cell
(:func:`first_free`, through :func:`cloud_ok` and :func:`own_ok`;
:class:`phasenet.synth.packing.CellEnv`), the images themselves (:func:`images_into`)
and the closing of blocked growth sites (:func:`close_sites`); squeezing a grown
crystal is :mod:`phasenet.synth.relax`. Nothing here draws random numbers: the callers
pass draws made with the structure's own ``numpy.random.Generator``, so results depend
only on (seed, index). :func:`warm_up` compiles everything (or loads numba's cache) once,
in the parent before a worker pool forks.
"""

from __future__ import annotations

import numpy as np

from numba import njit


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


def warm_up() -> None:
    """Compile every kernel (or load it from numba's cache) in this process, so that
    forked workers inherit compiled code instead of each compiling it again."""
    from phasenet.synth.relax import relax_cell

    kernels = (cloud_ok, own_ok, images, blocked, link, unlink, star_xyz, orient, first_free,
               rigid, close_sites, images_into, relax_cell)
    if all(f.signatures for f in kernels):
        return
    from phasenet.numba_cache import announce_compilation

    announce_compilation(kernels, "the synthetic-structure kernels", "60 s")
    from phasenet.synth.generate import SynthOptions, generate_structure

    for i in range(4):
        try:
            generate_structure(i, SynthOptions(seed=0, space_groups=("C2/c",), atoms=(6, 12),
                                               compress_rounds=1))
        except Exception:  # only compilation matters here
            pass


# --------------------------------------------------------------------------- molecule growth


@njit(cache=True)
def link(nb, deg, bonds, i0, parent):
    """Add bonds to the adjacency rows ``nb`` (n, w) / ``deg`` (n,): ``bonds`` (B, 2)
    rows offset by ``i0`` (a new fragment), then ``parent``-``i0`` if parent >= 0."""
    for b in range(bonds.shape[0]):
        i, j = i0 + bonds[b, 0], i0 + bonds[b, 1]
        nb[i, deg[i]] = j
        deg[i] += 1
        nb[j, deg[j]] = i
        deg[j] += 1
    if parent >= 0:
        nb[parent, deg[parent]] = i0
        deg[parent] += 1
        nb[i0, deg[i0]] = parent
        deg[i0] += 1


@njit(cache=True)
def unlink(nb, deg, i):
    """Remove every bond of atom ``i`` (the other atoms keep their order of neighbours)."""
    for t in range(deg[i]):
        j = nb[i, t]
        c = 0
        for s in range(deg[j]):
            if nb[j, s] != i:
                nb[j, c] = nb[j, s]
                c += 1
        deg[j] = c
    deg[i] = 0


@njit(cache=True)
def _perp_unit(ux, uy, uz):
    """A unit vector perpendicular to the unit vector u (x or y axis crossed with u)."""
    if abs(ux) < 0.9:  # u x (1, 0, 0)
        px, py, pz = 0.0, uz, -uy
    else:  # u x (0, 1, 0)
        px, py, pz = -uz, 0.0, ux
    n = np.sqrt(px * px + py * py + pz * pz)
    return px / n, py / n, pz / n


@njit(cache=True)
def star_xyz(p0, d, length, hyb, n_out, staggered, parent, nb, deg, axyz, slot_len, u, g, angle_sigma):
    """Coordinates (1 + n_out, 3) of an atom bonded to atom ``parent`` (at ``p0``) along
    the unit vector ``d`` at ``length``, then its first ``n_out`` substituents at
    ``slot_len`` along the ideal bond directions of hybridisation ``hyb`` (0 sp3:
    tetrahedral, 1 sp2: trigonal, 2 sp: linear). The substituent torsion is measured
    from the parent's first other bond not parallel to ``d``: staggered (60° + k 120°
    ± 8°) when ``staggered`` (sp3-sp3), uniform otherwise; without such a bond, from
    a random perpendicular. Bond angles spread by ``angle_sigma`` degrees. Draws:
    ``u`` (3,) uniform [0, 1), ``g`` (4,) standard normal."""
    out = np.empty((1 + n_out, 3))
    for i in range(3):
        out[0, i] = p0[i] + d[i] * length
    if n_out == 0:
        return out
    if hyb == 2:  # linear: straight on
        for s in range(n_out):
            for i in range(3):
                out[1 + s, i] = out[0, i] + d[i] * slot_len[s]
        return out
    bx, by, bz = -d[0], -d[1], -d[2]  # towards the parent
    found = False
    rx, ry, rz = 0.0, 0.0, 0.0
    for t in range(deg[parent]):
        j = nb[parent, t]
        vx, vy, vz = axyz[j, 0] - p0[0], axyz[j, 1] - p0[1], axyz[j, 2] - p0[2]
        if abs(vx * bx + vy * by + vz * bz) < 0.98 * np.sqrt(vx * vx + vy * vy + vz * vz):
            rx, ry, rz = vx, vy, vz
            found = True
            break
    if not found:  # a random perpendicular
        px, py, pz = _perp_unit(bx, by, bz)
        qx, qy, qz = by * pz - bz * py, bz * px - bx * pz, bx * py - by * px
        a = 2.0 * np.pi * u[0]
        rx, ry, rz = np.cos(a) * px + np.sin(a) * qx, np.cos(a) * py + np.sin(a) * qy, np.cos(a) * pz + np.sin(a) * qz
        t0 = 0.0
    elif staggered:
        t0 = 60.0 + 120.0 * np.floor(3.0 * u[1]) + 8.0 * g[0]
    else:
        t0 = 360.0 * u[2]
    dot = rx * bx + ry * by + rz * bz
    rx, ry, rz = rx - dot * bx, ry - dot * by, rz - dot * bz
    n = np.sqrt(rx * rx + ry * ry + rz * rz)
    rx, ry, rz = rx / n, ry / n, rz / n
    qx, qy, qz = by * rz - bz * ry, bz * rx - bx * rz, bx * ry - by * rx
    if hyb == 0:
        ideal, step = np.degrees(np.arccos(-1.0 / 3.0)), 120.0
    else:
        ideal, step = 120.0, 180.0
    for s in range(n_out):
        a = np.radians(ideal + angle_sigma * g[1 + s])
        t = np.radians(t0 + step * s)
        ca, sa, ct, st = np.cos(a), np.sin(a), np.cos(t), np.sin(t)
        vx = ca * bx + sa * (ct * rx + st * qx)
        vy = ca * by + sa * (ct * ry + st * qy)
        vz = ca * bz + sa * (ct * rz + st * qz)
        out[1 + s, 0] = out[0, 0] + vx * slot_len[s]
        out[1 + s, 1] = out[0, 1] + vy * slot_len[s]
        out[1 + s, 2] = out[0, 2] + vz * slot_len[s]
    return out


@njit(cache=True)
def _transform(r, local, shift):
    """local (k, 3) rotated by r (3, 3), then shifted: r @ x + shift for every row."""
    out = np.empty_like(local)
    for j in range(local.shape[0]):
        for i in range(3):
            out[j, i] = r[i, 0] * local[j, 0] + r[i, 1] * local[j, 1] + r[i, 2] * local[j, 2] + shift[i]
    return out


@njit(cache=True)
def orient(local, a, b, origin):
    """``local`` (k, 3) turned by the smallest rotation taking the unit vector ``a``
    onto the unit vector ``b`` (a half turn about a perpendicular if they are
    opposite), then moved by ``origin``."""
    vx, vy, vz = a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]
    c = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    s = np.sqrt(vx * vx + vy * vy + vz * vz)
    r = np.eye(3)
    if s < 1e-9:
        if c <= 0:
            kx, ky, kz = _perp_unit(a[0], a[1], a[2])
            ang = np.pi
        else:
            kx, ky, kz, ang = 1.0, 0.0, 0.0, 0.0
    else:
        kx, ky, kz, ang = vx / s, vy / s, vz / s, np.arctan2(s, c)
    if ang != 0.0:
        k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
        r = r + np.sin(ang) * k + (1.0 - np.cos(ang)) * (k @ k)
    return _transform(r, local, origin)


@njit(cache=True)
def first_free(xyz0, rad, is_h, step, p0, axis, tors, parent, n, nb, deg, alive, arad, ais_h, amol,
               rad_max, cart, atom, kn, nc, m, minv, rot, trans, shifts, shifts_cart, env_reach,
               tol, htol, clash_heavy, clash_h, clash_hh):
    """Place a fragment: ``xyz0`` (k, 3) turned about the unit vector ``axis`` through
    ``p0`` (its bond to atom ``parent``) by each torsion of ``tors`` (P,) gives P
    candidates; returns (index, coordinates (k, 3)) of the first that is clear of
    the molecule and of every image in the cell (:func:`cloud_ok`; ``step``: bonds
    from the parent of each fragment atom, topological distances in the molecule
    by breadth-first search over the adjacency rows ``nb``/``deg``) and of its own
    symmetry images (:func:`own_ok`, through the operations and lattice ``shifts``
    that can bring the fragment near itself), or (-1, xyz0) if none is (or the
    fragment reaches beyond ``env_reach``). ``parent`` < 0: a new molecule, no axis
    (a single candidate)."""
    k = xyz0.shape[0]
    P = tors.shape[0]
    cands = np.empty((P, k, 3))
    ax, ay, az = axis[0], axis[1], axis[2]
    for p in range(P):
        s, c1 = np.sin(tors[p]), 1.0 - np.cos(tors[p])
        for a in range(k):
            vx, vy, vz = xyz0[a, 0] - p0[0], xyz0[a, 1] - p0[1], xyz0[a, 2] - p0[2]
            wx, wy, wz = ay * vz - az * vy, az * vx - ax * vz, ax * vy - ay * vx  # axis x v
            ux, uy, uz = ay * wz - az * wy, az * wx - ax * wz, ax * wy - ay * wx  # axis x (axis x v)
            cands[p, a, 0] = vx + s * wx + c1 * ux + p0[0]
            cands[p, a, 1] = vy + s * wy + c1 * uy + p0[1]
            cands[p, a, 2] = vz + s * wz + c1 * uz + p0[2]
    # a sphere (centre, radius) holding every candidate: centre on the axis
    centre = np.zeros(3)
    for a in range(k):
        for i in range(3):
            centre[i] += cands[0, a, i]
    centre /= k
    if parent >= 0:
        t = (centre[0] - p0[0]) * ax + (centre[1] - p0[1]) * ay + (centre[2] - p0[2]) * az
        for i in range(3):
            centre[i] = p0[i] + axis[i] * t
    r2 = 0.0
    rmax = 0.0
    for a in range(k):
        dx, dy, dz = cands[0, a, 0] - centre[0], cands[0, a, 1] - centre[1], cands[0, a, 2] - centre[2]
        r2 = max(r2, dx * dx + dy * dy + dz * dz)
        rmax = max(rmax, rad[a])
    radius = np.sqrt(r2)
    reach = radius + rmax + max(rad_max, 1.0)
    if reach > env_reach:
        return -1, xyz0
    # topological distances from the parent (0, 1, 2; 9 beyond)
    dist_p = np.full(n, 9, dtype=np.int64)
    pmol = -1
    if parent >= 0:
        pmol = amol[parent]
        dist_p[parent] = 0
        for t1 in range(deg[parent]):
            dist_p[nb[parent, t1]] = 1
        for t1 in range(deg[parent]):
            a1 = nb[parent, t1]
            for t2 in range(deg[a1]):
                b2 = nb[a1, t2]
                if dist_p[b2] == 9:
                    dist_p[b2] = 2
    w = np.empty(3)
    cw = np.empty(3)
    for i in range(3):
        w[i] = np.floor(minv[i, 0] * centre[0] + minv[i, 1] * centre[1] + minv[i, 2] * centre[2])
    for i in range(3):
        cw[i] = centre[i] - (m[i, 0] * w[0] + m[i, 1] * w[1] + m[i, 2] * w[2])
    ok = cloud_ok(cands, rad, is_h, step, cart, atom, kn, nc, alive, arad, ais_h, amol, pmol, dist_p,
                  centre, cw, w, reach, tol, htol, clash_heavy, clash_h, clash_hh)
    if ok.any():
        # own images: operations (and lattice shifts) that bring the centre within
        # reach of itself, identity excluded
        fc = minv @ centre
        lim = 2.0 * radius + 4.0
        Z, S = rot.shape[0], shifts.shape[0]
        dd = np.empty((Z, 3))
        n0 = np.empty((Z, 3))
        dc = np.empty((Z, 3))
        sel = np.zeros((Z, S), dtype=np.bool_)
        cnt = 0
        for z in range(Z):
            for i in range(3):
                dd[z, i] = fc[i] - (rot[z, i, 0] * fc[0] + rot[z, i, 1] * fc[1] + rot[z, i, 2] * fc[2] + trans[z, i])
                n0[z, i] = np.rint(dd[z, i])
                dd[z, i] -= n0[z, i]
            for i in range(3):
                dc[z, i] = m[i, 0] * dd[z, 0] + m[i, 1] * dd[z, 1] + m[i, 2] * dd[z, 2]
            for s in range(S):
                if z == 0 and s == 0:
                    continue
                ex = dc[z, 0] - shifts_cart[s, 0]
                ey = dc[z, 1] - shifts_cart[s, 1]
                ez = dc[z, 2] - shifts_cart[s, 2]
                if ex * ex + ey * ey + ez * ez < lim * lim:
                    sel[z, s] = True
                    cnt += 1
        if cnt:
            rots = np.empty((cnt, 3, 3))
            tr = np.empty((cnt, 3))
            c = 0
            for z in range(Z):
                for s in range(S):
                    if sel[z, s]:
                        rots[c] = rot[z]
                        for i in range(3):
                            tr[c, i] = trans[z, i] + n0[z, i] + shifts[s, i]
                        c += 1
            ok &= own_ok(cands, rad, is_h, rots, tr, m, minv, tol, htol)
    for p in range(P):
        if ok[p]:
            return p, cands[p].copy()
    return -1, xyz0


@njit(cache=True)
def rigid(local, q, shift):
    """``local`` (k, 3) turned by the rotation of the quaternion ``q`` (4,), normalised
    here (from 4 normal draws: a uniformly random rotation), then moved by ``shift``."""
    n = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    w, x, y, z = q[0] / n, q[1] / n, q[2] / n, q[3] / n
    r = np.empty((3, 3))
    r[0, 0], r[0, 1], r[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)
    r[1, 0], r[1, 1], r[1, 2] = 2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)
    r[2, 0], r[2, 1], r[2, 2] = 2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)
    return _transform(r, local, shift)


@njit(cache=True)
def close_sites(n, alive, is_h, closed, hpar, xyz, amol, arad, cart, atom, kn, nc, m, minv,
                length, radius, tol, htol, clash_heavy, clash_h):
    """Close (set ``closed``) every open hydrogen (alive, not closed, among the first
    ``n`` atoms) where a probe atom at ``length`` along its X-H bond, of radius
    ``radius``, touches an image or a non-neighbouring part of its own molecule
    (:func:`blocked`). Returns the number closed."""
    S = 0
    for i in range(n):
        if alive[i] and is_h[i] and not closed[i]:
            S += 1
    if S == 0:
        return 0
    hs = np.empty(S, dtype=np.int64)
    q = np.empty((S, 3))
    w = np.empty((S, 3))
    cw = np.empty((S, 3))
    pmol = np.empty(S, dtype=np.int64)
    pxyz = np.empty((S, 3))
    s = 0
    for i in range(n):
        if not (alive[i] and is_h[i] and not closed[i]):
            continue
        p = hpar[i]
        dx, dy, dz = xyz[i, 0] - xyz[p, 0], xyz[i, 1] - xyz[p, 1], xyz[i, 2] - xyz[p, 2]
        f = length / np.sqrt(dx * dx + dy * dy + dz * dz)
        q[s, 0], q[s, 1], q[s, 2] = xyz[p, 0] + f * dx, xyz[p, 1] + f * dy, xyz[p, 2] + f * dz
        for a in range(3):
            w[s, a] = np.floor(minv[a, 0] * q[s, 0] + minv[a, 1] * q[s, 1] + minv[a, 2] * q[s, 2])
        for a in range(3):
            cw[s, a] = q[s, a] - (m[a, 0] * w[s, 0] + m[a, 1] * w[s, 1] + m[a, 2] * w[s, 2])
        pmol[s] = amol[p]
        pxyz[s] = xyz[p]
        hs[s] = i
        s += 1
    out = blocked(q, w, cw, pmol, pxyz, cart, atom, kn, nc, alive, arad, is_h, amol, xyz, radius,
                  tol, htol, clash_heavy, clash_h)
    c = 0
    for s in range(S):
        if out[s]:
            closed[hs[s]] = True
            c += 1
    return c


@njit(cache=True)
def images_into(xyz, i0, rot, trans, margin, m, minv, cart, atom, kn, nc):
    """Append the images (as :func:`images`) of Cartesian points ``xyz`` (k, 3), atoms
    ``i0``.., to the cloud ``cart``/``atom``/``kn`` holding ``nc`` points. Returns the
    new count, or -1 (nothing written) if the arrays are too small."""
    k = xyz.shape[0]
    f = np.empty((k, 3))
    for a in range(k):
        for i in range(3):
            f[a, i] = minv[i, 0] * xyz[a, 0] + minv[i, 1] * xyz[a, 1] + minv[i, 2] * xyz[a, 2]
    c, row, knn = images(f, rot, trans, margin, m)
    if nc + row.shape[0] > cart.shape[0]:  # the caller grows the cloud and calls again
        return -1
    for t in range(row.shape[0]):
        cart[nc + t] = c[t]
        atom[nc + t] = i0 + row[t]
        kn[nc + t] = knn[t]
    return nc + row.shape[0]
