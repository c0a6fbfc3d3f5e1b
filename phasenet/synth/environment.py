"""The crystal a molecule grows in: a group's operations and the images of placed atoms.

:class:`CellEnv` keeps every symmetry and lattice image of the atoms placed so far
as a flat point cloud covering the unit cell plus the reach of a contact, for the
vectorised contact checks of candidate fragments (:mod:`phasenet.synth.molecules`
grows molecules against it; :mod:`phasenet.synth.packing` chooses the cells).
:class:`PackingOptions` holds the van der Waals contact limits; :func:`group_ops`
the operations of a space group, identity first. The images are written by a
compiled kernel (:mod:`phasenet.synth.kernels`, loaded on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

import gemmi


@dataclass(frozen=True)
class GroupOps:
    """A group's operations as arrays, identity first (the order generated structures use)."""

    rot: np.ndarray  # (Z, 3, 3) rotation parts (fractional)
    trans: np.ndarray  # (Z, 3)
    triplets: tuple[str, ...]


@lru_cache(maxsize=None)
def group_ops(hm: str) -> GroupOps:
    """The operations of a group, identity first."""
    sg = gemmi.find_spacegroup_by_name(hm)
    rots, trans, trip = [], [], []
    for op in sg.operations():
        rots.append(np.array(op.rot, dtype=float) / gemmi.Op.DEN)
        trans.append(np.array(op.tran, dtype=float) / gemmi.Op.DEN)
        trip.append(op.triplet())
    order = sorted(range(len(rots)), key=lambda k: not (np.array_equal(rots[k], np.eye(3))
                                                         and not np.any(trans[k] % 1.0)))
    return GroupOps(np.array([rots[k] for k in order]), np.array([trans[k] for k in order]) % 1.0,
                     tuple(trip[k] for k in order))


@dataclass(frozen=True)
class PackingOptions:
    """Contact limits: r_i + r_j - tolerance (Bondi radii; pairs with H get their own
    tolerance): C···C 3.2 Å, H···H 2.1 Å, C···H 2.6 Å with the defaults. ``min_edge``:
    shortest cell edge; ``shape_sigma``: spread of log edge ratios of random cells."""

    contact_tolerance: float = 0.2
    h_contact_tolerance: float = 0.3
    min_edge: float = 4.5
    shape_sigma: float = 0.3


@lru_cache(maxsize=None)
def _near_shifts(n0: int, n1: int, n2: int) -> np.ndarray:
    """Lattice shifts (S, 3) (fractional, whole numbers, |shift_i| <= n_i), shortest first
    (0 first; cached, shared: do not modify)."""
    near = np.stack(np.meshgrid(np.arange(-n0, n0 + 1), np.arange(-n1, n1 + 1), np.arange(-n2, n2 + 1),
                                indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    return near[np.argsort((near**2).sum(axis=1), kind="stable")]


class CellEnv:
    """Placed atoms and all their symmetry and lattice images in a cell, for
    vectorised contact checks of candidate fragments while molecules grow.

    Every image ``R_k f_j + t_k + n`` of a placed atom j whose fractional coordinates
    fall in the unit cell widened by ``reach`` (Å, per axis reach / interplanar
    spacing) is kept in a flat point cloud (Cartesian, preallocated, appended as
    atoms are added). Any point within ``reach`` of a point of the unit cell is in
    the cloud, so a query is one distance test of the wrapped centre against the
    cloud, whatever the cell shape. Images of the growing molecule with k = 0 and
    n = 0 are the molecule itself (flagged ``ident``): the builder gives those pairs
    intramolecular limits by topological distance; all others get the van der
    Waals contact limits. A fragment near a symmetry element is also tested against
    its own images (special positions).
    """

    def __init__(self, cell, hm: str, options: PackingOptions, reach: float = 6.5, capacity: int = 2048):
        uc = gemmi.UnitCell(*cell)
        self.cell = tuple(map(float, cell))
        self.m = np.array(uc.orth.mat.tolist())
        self.minv = np.array(uc.frac.mat.tolist())
        ops = group_ops(hm)
        self.rot, self.trans = ops.rot, ops.trans
        self.z = len(self.rot)
        self.tol, self.htol = options.contact_tolerance, options.h_contact_tolerance
        self.reach = reach
        spacing = 1.0 / np.linalg.norm(self.minv, axis=1)  # interplanar spacings
        self.margin = reach / spacing
        # shifts for the centre-to-own-image test (a fragment reaches < reach)
        self.shifts = _near_shifts(*(int(k) for k in np.ceil(reach / spacing - 0.5)))
        self.shifts_cart = self.shifts @ self.m.T
        self.nc = 0
        self.cart = np.zeros((capacity, 3))
        self.atom = np.zeros(capacity, dtype=np.int64)
        self.kn = np.zeros((capacity, 4))  # op k, lattice translation n of each point
        self.rad = np.zeros(256)
        self.is_h = np.zeros(256, dtype=bool)

    def add(self, i0: int, xyz: np.ndarray, rad: np.ndarray, is_h: np.ndarray) -> None:
        k = len(xyz)
        if i0 + k > len(self.rad):
            extra = i0 + k + 256
            self.rad = np.concatenate([self.rad, np.zeros(extra)])
            self.is_h = np.concatenate([self.is_h, np.zeros(extra, dtype=bool)])
        self.rad[i0:i0 + k] = rad
        self.is_h[i0:i0 + k] = is_h
        from phasenet.synth.kernels import images_into  # numba: loaded on first use only

        while True:  # images written straight into the cloud, grown when full
            nc = images_into(xyz, i0, self.rot, self.trans, self.margin, self.m, self.minv,
                                self.cart, self.atom, self.kn, self.nc)
            if nc >= 0:
                self.nc = nc
                return
            cap = 2 * len(self.cart) + 27 * self.z * k
            for name in ("cart", "atom", "kn"):
                old = getattr(self, name)
                new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
                new[:self.nc] = old[:self.nc]
                setattr(self, name, new)
