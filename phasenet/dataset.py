"""The HDF5 dataset: schema, writing (parts and their merge), reading.

Schema version 1 (all readable with plain h5py; see README "Dataset schema"):

/hkl                (R, 3) int32     the canonical reflections, fixed order
/intensity_calc     (N, R) float32   |F_calc|²
/phase_calc         (N, R) float32   phase of F_calc, radians, CIF origin
/intensity_obs      (N, R) float32   merged measured intensities, NaN = not measured
/intensity          (N, R) float32   normalised model input
/sign               (N, R) int8      1: phase 0, 0: phase π, -1: no sign label
/structures/<col>   (N, ...)         one 1-D column per property (see STRUCTURE_COLUMNS)
/atoms/<col>        (M, ...)         atoms of all structures; structure i owns rows
                                     atoms/offset[i]:atoms/offset[i+1]
attributes: schema_version, phasenet_version, build_options (JSON), failures (JSON),
            n_structures, n_failures, n_inputs, complete (True only in a finished file)

Per-structure arrays are chunked one structure per chunk and compressed (lzf by
default); parts and the final file share that layout, so merging copies the
compressed chunks without decoding them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

SCHEMA_VERSION = 1
ROW_ARRAYS = {  # name: (dtype, fill value)
    "intensity_calc": (np.float32, np.nan),
    "phase_calc": (np.float32, np.nan),
    "intensity_obs": (np.float32, np.nan),
    "intensity": (np.float32, np.nan),
    "sign": (np.int8, -1),
}
STR = h5py.string_dtype("utf-8")
STRUCTURE_COLUMNS = {  # name: (dtype, trailing shape, meaning)
    "id": (STR, (), "file name#block, unique within a build"),
    "source": (STR, (), "input path"),
    "block": (STR, (), "CIF data block"),
    "space_group": (STR, (), "H-M symbol (extended) of the operators"),
    "sg_number": (np.int32, (), "space-group number, 0 if the operators match no table entry"),
    "symops": (STR, (), "symmetry operators, ';'-separated xyz triplets"),
    "centrosymmetric": (np.bool_, (), "the space group has an inversion centre"),
    "centric_origin": (np.bool_, (), "an inversion centre sits at the origin: sign labels exist"),
    "cell": (np.float64, (6,), "a b c (Å) alpha beta gamma (°)"),
    "n_atoms": (np.int32, (), "atom sites in the asymmetric unit"),
    "n_atoms_cell": (np.int32, (), "atoms in the unit cell"),
    "n_u_defaulted": (np.int32, (), "sites that got the default U_iso"),
    "formula": (STR, (), "Hill formula of the asymmetric unit"),
    "has_obs": (np.bool_, (), "measured reflections present"),
    "obs_kind": (STR, (), "F2 or F as read, '' without measurements"),
    "obs_origin": (STR, (), "where the measurements came from"),
    "n_obs": (np.int32, (), "measured reflections read"),
    "n_obs_grid": (np.int32, (), "grid reflections with a measured value"),
    "norm_scale": (np.float64, (), "a (linreg), statistic (max/mean/median), k (wilson)"),
    "norm_offset": (np.float64, (), "b (linreg), else 0"),
    "wilson_b": (np.float64, (), "Wilson B (Å²) for wilson normalisation, else NaN"),
    "obs_calc_corr": (np.float64, (), "Pearson r of I_obs vs I_calc, NaN without measurements"),
    "notes": (STR, (), "warnings while reading, '; '-separated"),
    "split": (STR, (), "train or test"),
}
ATOM_COLUMNS = {
    "label": (STR, ()),
    "element": (STR, ()),
    "charge": (np.int8, ()),
    "frac": (np.float64, (3,)),
    "occupancy": (np.float64, ()),
    "u_iso": (np.float64, ()),
    "u_aniso": (np.float64, (6,)),
    "u_defaulted": (np.bool_, ()),
}


class DatasetError(ValueError):
    pass


def _row_dataset(h5, name, n, r, compression):
    dtype, fill = ROW_ARRAYS[name]
    return h5.create_dataset(name, shape=(n, r), maxshape=(None, r), dtype=dtype,
                             chunks=(1, r), compression=compression, fillvalue=fill)


def _columns_from_records(records) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in STRUCTURE_COLUMNS if k != "split"}
    for rec in records:
        s = rec.structure
        m = rec.merged
        obs = s.observations
        cols["id"].append(f"{os.path.basename(s.source)}#{s.block}")
        cols["source"].append(s.source)
        cols["block"].append(s.block)
        cols["space_group"].append(s.space_group)
        cols["sg_number"].append(s.sg_number)
        cols["symops"].append(";".join(s.symops))
        cols["centrosymmetric"].append(rec.centrosymmetric)
        cols["centric_origin"].append(rec.centric_origin)
        cols["cell"].append(s.cell)
        cols["n_atoms"].append(len(s.atoms))
        cols["n_atoms_cell"].append(rec.n_atoms_cell)
        cols["n_u_defaulted"].append(int(s.atoms.u_defaulted.sum()))
        cols["formula"].append(rec.formula)
        cols["has_obs"].append(m is not None and m.n_on_grid > 0)
        cols["obs_kind"].append(obs.kind if obs is not None else "")
        cols["obs_origin"].append(obs.origin if obs is not None else "")
        cols["n_obs"].append(m.n_measured if m is not None else 0)
        cols["n_obs_grid"].append(m.n_on_grid if m is not None else 0)
        cols["norm_scale"].append(rec.norm.scale)
        cols["norm_offset"].append(rec.norm.offset)
        cols["wilson_b"].append(rec.norm.wilson_b)
        cols["obs_calc_corr"].append(rec.norm.obs_calc_corr)
        cols["notes"].append("; ".join(s.notes))
    out = {}
    for k, v in cols.items():
        dtype, shape, _ = STRUCTURE_COLUMNS[k]
        out[k] = np.array(v, dtype=object if dtype is STR else dtype).reshape((len(v),) + shape)
    return out


def write_part(path: Path, hkl: np.ndarray, records, failures, n_inputs: int,
               compression: str | None = "lzf") -> None:
    """Write one part (the records of a slice of the inputs), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    n, r = len(records), len(hkl)
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("hkl", data=hkl)
        for name in ROW_ARRAYS:
            ds = _row_dataset(h5, name, n, r, compression)
            for i, rec in enumerate(records):
                ds[i] = getattr(rec, name)
        g = h5.create_group("structures")
        for k, v in _columns_from_records(records).items():
            g.create_dataset(k, data=v, dtype=STRUCTURE_COLUMNS[k][0])
        a = h5.create_group("atoms")
        counts = [len(rec.structure.atoms) for rec in records]
        a.create_dataset("offset", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        for k, (dtype, shape) in ATOM_COLUMNS.items():
            parts = [np.asarray(getattr(rec.structure.atoms, k)) for rec in records]
            data = np.concatenate(parts) if parts else np.zeros((0,) + shape)
            a.create_dataset(k, data=data.astype(object) if dtype is STR else data.astype(dtype),
                             dtype=dtype, shape=(len(data),) + shape)
        h5.attrs["failures"] = json.dumps([f.__dict__ for f in failures])
        h5.attrs["n_inputs"] = n_inputs
        h5.attrs["complete"] = True
    os.replace(tmp, path)


def split_for_ids(ids, test_fraction: float, seed: int) -> np.ndarray:
    """Deterministic train/test assignment from a hash of (seed, id)."""
    import hashlib

    out = np.empty(len(ids), dtype=object)
    for i, sid in enumerate(ids):
        digest = hashlib.sha256(f"{seed}:{sid}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        out[i] = "test" if u < test_fraction else "train"
    return out


def merge_parts(parts: list[Path], output: Path, *, build_options: dict, test_fraction: float,
                seed: int, compression: str | None = "lzf", progress=None) -> dict:
    """Concatenate parts (in order) into ``output``; written to a temp name, then renamed."""
    from phasenet import __version__

    tmp = output.with_name(output.name + ".tmp")
    failures: list[dict] = []
    n_inputs = 0
    sizes, atom_counts = [], []
    hkl = None
    for p in parts:  # first pass: sizes only
        with h5py.File(p, "r") as h5:
            sizes.append(h5["intensity"].shape[0])
            atom_counts.append(int(h5["atoms/offset"][-1]))
            failures += json.loads(h5.attrs["failures"])
            n_inputs += int(h5.attrs["n_inputs"])
            if hkl is None:
                hkl = h5["hkl"][...]
            elif not np.array_equal(hkl, h5["hkl"][...]):
                raise DatasetError(f"{p}: reflection set differs from the other parts")
    if hkl is None:
        raise DatasetError("no parts to merge")
    n, r, m = sum(sizes), len(hkl), sum(atom_counts)
    with h5py.File(tmp, "w") as out:
        out.attrs["complete"] = False
        d = out.create_dataset("hkl", data=hkl)
        d.attrs["order"] = "h^2+k^2+l^2, then h, k, l; one of each Friedel pair; no 000"
        rows = {name: _row_dataset(out, name, n, r, compression) for name in ROW_ARRAYS}
        g = out.create_group("structures")
        for k, (dtype, shape, meaning) in STRUCTURE_COLUMNS.items():
            g.create_dataset(k, shape=(n,) + shape, dtype=dtype).attrs["meaning"] = meaning
        a = out.create_group("atoms")
        a.create_dataset("offset", shape=(n + 1,), dtype=np.int64)
        for k, (dtype, shape) in ATOM_COLUMNS.items():
            a.create_dataset(k, shape=(m,) + shape, dtype=dtype)
        start, atom_start = 0, 0
        for p, size, n_atoms in zip(parts, sizes, atom_counts):  # second pass: stream
            with h5py.File(p, "r") as h5:
                same_filter = h5["intensity"].compression == compression
                for name, ds in rows.items():
                    src = h5[name]
                    if same_filter and compression is not None:
                        for i in range(size):  # copy compressed chunks as they are
                            mask, chunk = src.id.read_direct_chunk((i, 0))
                            ds.id.write_direct_chunk((start + i, 0), chunk, mask)
                    elif size:
                        ds[start:start + size] = src[...]
                if size:
                    for k in STRUCTURE_COLUMNS:
                        if k != "split":
                            g[k][start:start + size] = h5["structures"][k][...]
                    ids = [x.decode() if isinstance(x, bytes) else x for x in h5["structures/id"][...]]
                    g["split"][start:start + size] = split_for_ids(ids, test_fraction, seed)
                a["offset"][start:start + size + 1] = h5["atoms/offset"][...] + atom_start
                if n_atoms:
                    for k in ATOM_COLUMNS:
                        a[k][atom_start:atom_start + n_atoms] = h5["atoms"][k][...]
            start += size
            atom_start += n_atoms
            if progress is not None:
                progress(size)
        out.attrs["schema_version"] = SCHEMA_VERSION
        out.attrs["phasenet_version"] = __version__
        out.attrs["build_options"] = json.dumps(build_options, sort_keys=True)
        out.attrs["failures"] = json.dumps(failures)
        out.attrs["n_structures"] = n
        out.attrs["n_failures"] = len(failures)
        out.attrs["n_inputs"] = n_inputs
        out.attrs["complete"] = True
    os.replace(tmp, output)
    return {"n_structures": n, "failures": failures, "n_inputs": n_inputs}


def _decode(arr):
    if arr.dtype == object:
        return np.array([x.decode() if isinstance(x, bytes) else x for x in arr], dtype=object)
    return arr


def open_dataset(path: str | Path) -> h5py.File:
    """Open a finished dataset read-only (refuses incomplete or foreign files)."""
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
    if "schema_version" not in h5.attrs or not h5.attrs.get("complete", False):
        h5.close()
        raise DatasetError(f"{path}: not a complete phasenet dataset")
    if int(h5.attrs["schema_version"]) > SCHEMA_VERSION:
        v = int(h5.attrs["schema_version"])
        h5.close()
        raise DatasetError(f"{path}: schema version {v} is newer than this phasenet ({SCHEMA_VERSION})")
    return h5


def read_structures_table(path: str | Path):
    """The ``structures`` group as a pandas DataFrame (cell split into a..gamma)."""
    import pandas as pd

    with open_dataset(path) as h5:
        g = h5["structures"]
        data = {}
        for k in g:
            v = g[k][...]
            if v.ndim == 2:
                for j, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
                    data[name] = v[:, j]
            else:
                data[k] = _decode(v)
    return pd.DataFrame(data)


def read_atoms(path: str | Path, index: int):
    """The atomic model of structure ``index`` as a pandas DataFrame."""
    import pandas as pd

    with open_dataset(path) as h5:
        a = h5["atoms"]
        lo, hi = a["offset"][index], a["offset"][index + 1]
        frac = a["frac"][lo:hi]
        u = a["u_aniso"][lo:hi]
        df = pd.DataFrame({"label": _decode(a["label"][lo:hi]), "element": _decode(a["element"][lo:hi]),
                           "charge": a["charge"][lo:hi], "x": frac[:, 0], "y": frac[:, 1], "z": frac[:, 2],
                           "occupancy": a["occupancy"][lo:hi], "u_iso": a["u_iso"][lo:hi]})
        for j, name in enumerate(("u11", "u22", "u33", "u12", "u13", "u23")):
            df[name] = u[:, j]
        df["u_defaulted"] = a["u_defaulted"][lo:hi]
    return df


def dataset_info(path: str | Path) -> dict:
    """Summary of a dataset: counts, space groups, splits, normalisation, failures."""
    with open_dataset(path) as h5:
        g = h5["structures"]
        sg = _decode(g["space_group"][...])
        split = _decode(g["split"][...])
        has_obs = g["has_obs"][...]
        corr = g["obs_calc_corr"][...]
        failures = json.loads(h5.attrs["failures"])
        info = {
            "path": str(path),
            "schema_version": int(h5.attrs["schema_version"]),
            "phasenet_version": str(h5.attrs["phasenet_version"]),
            "n_structures": int(h5.attrs["n_structures"]),
            "n_reflections": int(h5["hkl"].shape[0]),
            "n_inputs": int(h5.attrs["n_inputs"]),
            "n_failures": len(failures),
            "splits": dict(Counter(split)),
            "space_groups": dict(Counter(sg).most_common()),
            "n_centrosymmetric": int(g["centrosymmetric"][...].sum()),
            "n_sign_labelled": int(g["centric_origin"][...].sum()),
            "n_with_obs": int(has_obs.sum()),
            "obs_calc_corr_median": float(np.nanmedian(corr)) if has_obs.any() else None,
            "build_options": json.loads(h5.attrs["build_options"]),
            "failures_by_kind": dict(Counter(f.get("kind", "?") for f in failures)),
            "failures": failures,
        }
    return info


def format_info(info: dict, max_failures: int = 20) -> str:
    opts = info["build_options"]
    lines = [
        f"{info['path']}: phasenet dataset, schema {info['schema_version']} "
        f"(written by phasenet {info['phasenet_version']})",
        f"  structures   {info['n_structures']} from {info['n_inputs']} input files, "
        f"{info['n_reflections']} reflections each",
        "  splits       " + ", ".join(f"{k} {v}" for k, v in sorted(info["splits"].items())),
        f"  symmetry     {info['n_centrosymmetric']} centrosymmetric, "
        f"{info['n_sign_labelled']} with sign labels (inversion centre at the origin)",
        "  space groups " + ", ".join(f"{k} {v}" for k, v in list(info["space_groups"].items())[:8])
        + (" ..." if len(info["space_groups"]) > 8 else ""),
        f"  measured     {info['n_with_obs']} structures with measured reflections"
        + (f", median corr(I_obs, I_calc) {info['obs_calc_corr_median']:.3f}"
           if info["obs_calc_corr_median"] is not None else ""),
        f"  normalised   {opts.get('normalisation')}; max_index {opts.get('max_index')}, "
        f"r2_max {opts.get('r2_max')}, default U_iso {opts.get('default_u')} Å²",
        f"  failures     {info['n_failures']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(info["failures_by_kind"].items())) + ")"
           if info["n_failures"] else ""),
    ]
    for f in info["failures"][:max_failures]:
        where = f["source"] + (f" [block {f['block']}]" if f["block"] else "")
        lines.append(f"    {where}: {f['reason']}")
    if info["n_failures"] > max_failures:
        lines.append(f"    ... {info['n_failures'] - max_failures} more (phasenet info --all-failures)")
    return "\n".join(lines)
