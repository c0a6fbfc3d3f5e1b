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

Reading: :class:`DatasetReader` (validated once when opened; hkl, the structures
table, per-row arrays, atoms, splits, a row as ReflectionData); :func:`read_structures_table`,
:func:`read_atoms` and :func:`dataset_info` are one-call shortcuts over it.

Per-structure arrays are chunked one structure per chunk and compressed (lzf by
default); parts and the final file share that layout, so merging copies the
compressed chunks without decoding them.
"""

from __future__ import annotations

import json
import os
import pickle
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
    """A file is not a dataset this phasenet can read (the message names the file and why)."""


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


def prepare_parts(output: Path, state: dict, *, state_name: str, overwrite: bool, error=ValueError,
                  what: str = "run") -> Path:
    """The parts folder ``OUTPUT.parts`` of a resumable run, ready to (re)use.

    ``state["fingerprint"]`` hashes the run's inputs and options: a folder left by an
    interrupted run with the same fingerprint is kept (its finished parts are reused);
    one with another fingerprint is refused, or cleared with ``overwrite``. An existing
    ``output`` is refused, or removed with ``overwrite``. ``state`` is written to
    ``parts/state_name``. Errors are raised as ``error`` (the caller's exception type).
    """
    import shutil

    parts_dir = output.with_name(output.name + ".parts")
    if output.exists():
        if not overwrite:
            raise error(f"{output} exists; use overwrite (--overwrite) to replace it")
        output.unlink()
    state_path = parts_dir / state_name
    if parts_dir.exists():
        old = json.loads(state_path.read_text()).get("fingerprint") if state_path.exists() else None
        if old != state["fingerprint"]:
            if not overwrite:
                raise error(f"{parts_dir} holds an interrupted {what} with other inputs or options; "
                            "run with the same arguments to resume it, or use overwrite (--overwrite)")
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state))
    return parts_dir


def write_part(path: Path, hkl: np.ndarray, records, failures, n_inputs: int,
               compression: str | None = "lzf") -> None:
    """Write one part (the records of a slice of the inputs), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    n, r = len(records), len(hkl)
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("hkl", data=hkl)
        for name in ROW_ARRAYS:
            ds = _row_dataset(h5, name, n, r, compression)
            if n:  # one write: HDF5 compresses the (1, R) chunks itself
                ds[...] = np.stack([getattr(rec, name) for rec in records])
        # The structure and atom columns of a part travel as one pickled dict (parts are
        # the build's own temporary files): one dataset to write and read, not ~35.
        counts = [len(rec.structure.atoms) for rec in records]
        atoms = {"offset": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}
        for k, (dtype, shape) in ATOM_COLUMNS.items():
            parts = [np.asarray(getattr(rec.structure.atoms, k)) for rec in records]
            data = np.concatenate(parts) if parts else np.zeros((0,) + shape)
            atoms[k] = data.astype(object) if dtype is STR else data.astype(dtype)
        blob = pickle.dumps({"structures": _columns_from_records(records), "atoms": atoms},
                            protocol=pickle.HIGHEST_PROTOCOL)
        h5.create_dataset("columns", data=np.frombuffer(blob, dtype=np.uint8))
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
                seed: int, compression: str | None = "lzf", progress=None,
                extra_attrs: dict | None = None) -> dict:
    """Concatenate parts (in order) into ``output``; written to a temp name, then renamed.

    ``extra_attrs`` are written as root attributes too (shard metadata of a sharded build).
    ``progress(n)`` is called after each part with the number of structures it added.
    """
    if not parts:
        raise DatasetError("no parts to merge")
    merger = PartMerger(output, build_options=build_options, test_fraction=test_fraction,
                        seed=seed, compression=compression, extra_attrs=extra_attrs)
    try:
        for p in parts:
            size = merger.append(p)
            if progress is not None:
                progress(size)
        return merger.finish()
    except BaseException:
        merger.abort()
        raise


def _part_columns(h5) -> tuple[dict, dict]:
    """The structure and atom columns of a part ({name: array}, atoms with "offset")."""
    if "columns" in h5:
        data = pickle.loads(h5["columns"][...].tobytes())
        return data["structures"], data["atoms"]
    # parts written as groups of datasets (phasenet 0.1.0 before the pickled columns)
    cols = {k: h5["structures"][k][...] for k in h5["structures"]}
    atoms = {k: h5["atoms"][k][...] for k in h5["atoms"]}
    return cols, atoms


#: rows per HDF5 chunk of the (resizable) structure and atom columns
_COLUMN_CHUNK = 1024
#: structures (plus atoms / 16) a merge holds in memory before writing the columns
_COLUMN_BUFFER = 2048


class PartMerger:
    """Append parts, in order, to ``output``'s temporary file (``OUT.h5.tmp``), one pass
    over each part; :meth:`finish` writes the attributes and renames it to ``output``.

    A build appends each part as soon as it and all before it exist, while workers
    compute the rest. The datasets grow as parts arrive (resizable, chunked); compressed
    row chunks are copied as they are, without decoding.
    """

    def __init__(self, output: Path, *, build_options: dict, test_fraction: float, seed: int,
                 compression: str | None = "lzf", extra_attrs: dict | None = None):
        self.output = Path(output)
        self.tmp = self.output.with_name(self.output.name + ".tmp")
        self.build_options, self.test_fraction, self.seed = build_options, test_fraction, seed
        self.compression, self.extra_attrs = compression, extra_attrs
        self.failures: list[dict] = []
        self.n = self.m = self.n_inputs = 0
        self.hkl = None
        self.h5 = h5py.File(self.tmp, "w")
        self.h5.attrs["complete"] = False

    def _create(self, hkl: np.ndarray) -> None:
        out, r = self.h5, len(hkl)
        self.hkl = hkl
        d = out.create_dataset("hkl", data=hkl)
        d.attrs["order"] = "h^2+k^2+l^2, then h, k, l; one of each Friedel pair; no 000"
        self.rows = {name: _row_dataset(out, name, 0, r, self.compression) for name in ROW_ARRAYS}
        self.g = out.create_group("structures")
        for k, (dtype, shape, meaning) in STRUCTURE_COLUMNS.items():
            self.g.create_dataset(k, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype,
                                  chunks=(_COLUMN_CHUNK,) + shape).attrs["meaning"] = meaning
        self.a = out.create_group("atoms")
        self.a.create_dataset("offset", data=np.zeros(1, dtype=np.int64), maxshape=(None,),
                              chunks=(_COLUMN_CHUNK,))
        for k, (dtype, shape) in ATOM_COLUMNS.items():
            self.a.create_dataset(k, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype,
                                  chunks=(4 * _COLUMN_CHUNK,) + shape)
        # columns are buffered and written in large blocks
        self._cols = {k: [] for k in STRUCTURE_COLUMNS}
        self._atoms = {k: [] for k in ("offset",) + tuple(ATOM_COLUMNS)}
        self._buffered = 0

    def append(self, part: Path) -> int:
        """Add one part; returns the number of structures it holds."""
        with h5py.File(part, "r") as h5:
            hkl = h5["hkl"][...]
            if self.hkl is None:
                self._create(hkl)
            elif not np.array_equal(self.hkl, hkl):
                raise DatasetError(f"{part}: reflection set differs from the other parts")
            self.failures += json.loads(h5.attrs["failures"])
            self.n_inputs += int(h5.attrs["n_inputs"])
            cols, atoms = _part_columns(h5)
            offsets = atoms["offset"]
            size, n_atoms = len(offsets) - 1, int(offsets[-1])
            start = self.n
            if size:
                same_filter = h5["intensity"].compression == self.compression
                for name, ds in self.rows.items():
                    src = h5[name]
                    ds.resize(start + size, axis=0)
                    if same_filter and self.compression is not None:
                        read, write = src.id.read_direct_chunk, ds.id.write_direct_chunk
                        for i in range(size):  # copy compressed chunks as they are
                            mask, chunk = read((i, 0))
                            write((start + i, 0), chunk, mask)
                    else:
                        ds[start:start + size] = src[...]
                for k in STRUCTURE_COLUMNS:
                    if k != "split":
                        self._cols[k].append(cols[k])
                ids = [x.decode() if isinstance(x, bytes) else x for x in cols["id"]]
                self._cols["split"].append(split_for_ids(ids, self.test_fraction, self.seed))
                self._atoms["offset"].append(offsets[1:] + self.m)
            if n_atoms:
                for k in ATOM_COLUMNS:
                    self._atoms[k].append(atoms[k])
        self.n += size
        self.m += n_atoms
        self._buffered += size + n_atoms // 16
        if self._buffered >= _COLUMN_BUFFER:
            self._flush()
        return size

    def _flush(self) -> None:
        """Write the buffered column and atom rows (few large writes, not one per part)."""
        for group, buf in ((self.g, self._cols), (self.a, self._atoms)):
            for k, chunks in buf.items():
                if not chunks:
                    continue
                data = np.concatenate(chunks)
                ds = group[k]
                lo = ds.shape[0]
                ds.resize(lo + len(data), axis=0)
                ds[lo:] = data
                chunks.clear()
        self._buffered = 0

    def finish(self) -> dict:
        """Write the attributes, close, rename to ``output``."""
        from phasenet.version import __version__

        if self.hkl is None:
            self.abort()
            raise DatasetError("no parts to merge")
        self._flush()
        out = self.h5
        out.attrs["schema_version"] = SCHEMA_VERSION
        out.attrs["phasenet_version"] = __version__
        out.attrs["build_options"] = json.dumps(self.build_options, sort_keys=True)
        out.attrs["failures"] = json.dumps(self.failures)
        out.attrs["n_structures"] = self.n
        out.attrs["n_failures"] = len(self.failures)
        out.attrs["n_inputs"] = self.n_inputs
        for k, v in (self.extra_attrs or {}).items():
            out.attrs[k] = v
        out.attrs["complete"] = True
        out.close()
        os.replace(self.tmp, self.output)
        return {"n_structures": self.n, "failures": self.failures, "n_inputs": self.n_inputs}

    def abort(self) -> None:
        """Close and remove the temporary file (an interrupted build starts it anew)."""
        try:
            self.h5.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """A string column as h5py reads it (bytes or str objects) -> an object array of str;
    other arrays unchanged."""
    if arr.dtype == object:
        return np.array([x.decode() if isinstance(x, bytes) else x for x in arr], dtype=object)
    return arr


def _attr(value):
    return value.decode() if isinstance(value, bytes) else value


class DatasetReader:
    """A finished phasenet dataset (schema v1), opened read-only once.

    Opening checks that the file is HDF5, carries a ``schema_version`` this phasenet
    reads and is ``complete`` (a build that was interrupted leaves an incomplete file);
    a member that is missing raises when it is first asked for. Every failure is a
    :class:`DatasetError` naming the file and the reason.

    >>> with DatasetReader("data.h5") as ds:              # doctest: +SKIP
    ...     ds.hkl.shape, len(ds), ds.split_mask("test").sum()
    ...     r = ds.reflections(0)                         # a ReflectionData
    ...     atoms = ds.atoms(0)                           # an AtomicModel

    ``h5`` is the open ``h5py.File`` and :meth:`dataset` a validated member, for the
    readers that need the storage itself (chunk copies, the training's chunk reader).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            self.attrs = {k: _attr(v) for k, v in h5.attrs.items()}
            check_header(self.attrs, self.path)
        except BaseException:
            h5.close()
            raise
        self.h5 = h5
        self._columns: dict[str, np.ndarray] = {}
        self._hkl = None
        self._offsets = None

    # -- file ------------------------------------------------------------------------------
    def close(self) -> None:
        self.h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        """The number of structures (rows)."""
        if "intensity" in self.h5:
            return int(self.h5["intensity"].shape[0])
        return int(self.attrs.get("n_structures", 0))

    def require(self, *names: str) -> None:
        """Raise DatasetError unless every member ``names`` (e.g. "structures/cell") exists."""
        missing = [n for n in names if n not in self.h5]
        if missing:
            raise DatasetError(f"{self.path}: missing {', '.join(repr(n) for n in missing)} "
                               f"(not a complete phasenet schema-{SCHEMA_VERSION} dataset?)")

    def dataset(self, name: str) -> h5py.Dataset:
        """The member ``name`` (e.g. "intensity", "structures/cell") as an h5py Dataset."""
        self.require(name)
        return self.h5[name]

    def _index(self, i: int) -> int:
        n = len(self)
        if not 0 <= int(i) < n:
            raise IndexError(f"{self.path}: structure {i} out of range (0..{n - 1})")
        return int(i)

    # -- root attributes -------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def build_options(self) -> dict:
        return json.loads(self.attrs.get("build_options", "{}"))

    @property
    def failures(self) -> list[dict]:
        return json.loads(self.attrs.get("failures", "[]"))

    # -- reflections and per-row arrays ------------------------------------------------------
    @property
    def hkl(self) -> np.ndarray:
        """(R, 3) int32, read-only: the reflections every row is given on."""
        if self._hkl is None:
            self._hkl = self.dataset("hkl")[...]
            self._hkl.setflags(write=False)
        return self._hkl

    def row(self, name: str, i: int) -> np.ndarray:
        """Row ``i`` of a per-row array (one of ROW_ARRAYS)."""
        return self.dataset(_row_name(name, self.path))[self._index(i)]

    def rows(self, name: str, idx) -> np.ndarray:
        """Rows ``idx`` (sorted, unique) of a per-row array, one read per run of consecutive rows."""
        return read_rows(self.dataset(_row_name(name, self.path)), np.asarray(idx, dtype=np.int64))

    def reflections(self, i: int):
        """Structure ``i``'s reflections as a :class:`~phasenet.reflection_data.ReflectionData`
        (the stored arrays, as stored; an array the file lacks is None)."""
        from phasenet.reflection_data import ReflectionData

        i = self._index(i)
        arrays = {k: self.h5[k][i] for k in ROW_ARRAYS if k in self.h5}
        return ReflectionData(hkl=self.hkl, cell=self.cell(i), symops=self.symops(i),
                              space_group=str(self.column("space_group")[i])
                              if "structures/space_group" in self.h5 else "", **arrays)

    # -- the structures table --------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of the structures table (strings decoded), read once, read-only."""
        if name not in self._columns:
            v = decode_strings(self.dataset(f"structures/{name}")[...])
            v.setflags(write=False)
            self._columns[name] = v
        return self._columns[name]

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    @property
    def split(self) -> np.ndarray:
        """(N,) str: "train" or "test" per structure."""
        return self.column("split")

    def split_mask(self, split: str) -> np.ndarray:
        """(N,) bool: the structures of ``split``."""
        return self.split == split

    def cell(self, i: int) -> tuple[float, ...]:
        return tuple(float(x) for x in self.column("cell")[self._index(i)])

    def symops(self, i: int) -> tuple[str, ...]:
        """Structure ``i``'s symmetry operators (xyz triplets)."""
        return tuple(s for s in str(self.column("symops")[self._index(i)]).split(";") if s.strip())

    def structures_table(self):
        """The ``structures`` group as a pandas DataFrame (cell split into a..gamma)."""
        import pandas as pd

        g = self.dataset("structures")
        data = {}
        for k in g:
            v = self.column(k)
            if v.ndim == 2:
                for j, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
                    data[name] = v[:, j].copy()
            else:
                data[k] = v.copy()
        return pd.DataFrame(data)

    # -- atoms -----------------------------------------------------------------------------
    def _atom_rows(self, i: int) -> tuple[int, int]:
        if self._offsets is None:
            self._offsets = self.dataset("atoms/offset")[...]
        i = self._index(i)
        return int(self._offsets[i]), int(self._offsets[i + 1])

    def atom_columns(self, i: int) -> dict[str, np.ndarray]:
        """Structure ``i``'s atoms: {column of ATOM_COLUMNS: array} (strings decoded)."""
        lo, hi = self._atom_rows(i)
        return {k: decode_strings(self.dataset(f"atoms/{k}")[lo:hi]) for k in ATOM_COLUMNS}

    def atoms(self, i: int):
        """Structure ``i``'s asymmetric unit as a :class:`~phasenet.structure.AtomicModel`."""
        from phasenet.structure import AtomicModel

        c = self.atom_columns(i)
        return AtomicModel(label=c["label"].astype(str), element=c["element"].astype(str),
                           charge=c["charge"].astype(np.int8), frac=c["frac"].astype(float),
                           occupancy=c["occupancy"].astype(float), u_iso=c["u_iso"].astype(float),
                           u_aniso=c["u_aniso"].astype(float), u_defaulted=c["u_defaulted"].astype(bool))

    def atoms_table(self, i: int):
        """Structure ``i``'s atoms as a pandas DataFrame (x y z, u11 ... u23 columns)."""
        import pandas as pd

        c = self.atom_columns(i)
        frac, u = c["frac"], c["u_aniso"]
        df = pd.DataFrame({"label": c["label"], "element": c["element"], "charge": c["charge"],
                           "x": frac[:, 0], "y": frac[:, 1], "z": frac[:, 2],
                           "occupancy": c["occupancy"], "u_iso": c["u_iso"]})
        for j, name in enumerate(("u11", "u22", "u33", "u12", "u13", "u23")):
            df[name] = u[:, j]
        df["u_defaulted"] = c["u_defaulted"]
        return df

    # -- summary ---------------------------------------------------------------------------
    def info(self) -> dict:
        """Summary: counts, space groups, splits, normalisation, failures (see format_info)."""
        has_obs = self.column("has_obs")
        corr = self.column("obs_calc_corr")
        failures = self.failures
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "phasenet_version": str(self.attrs["phasenet_version"]),
            "n_structures": int(self.attrs["n_structures"]),
            "n_reflections": int(self.dataset("hkl").shape[0]),
            "n_inputs": int(self.attrs["n_inputs"]),
            "n_failures": len(failures),
            "splits": dict(Counter(self.split)),
            "space_groups": dict(Counter(self.column("space_group")).most_common()),
            "n_centrosymmetric": int(self.column("centrosymmetric").sum()),
            "n_sign_labelled": int(self.column("centric_origin").sum()),
            "n_with_obs": int(has_obs.sum()),
            "obs_calc_corr_median": float(np.nanmedian(corr)) if has_obs.any() else None,
            "build_options": self.build_options,
            "failures_by_kind": dict(Counter(f.get("kind", "?") for f in failures)),
            "failures": failures,
        }


def check_header(attrs: dict, path) -> None:
    """Raise DatasetError unless root attributes ``attrs`` are those of a finished dataset
    this phasenet reads (schema version known, ``complete``)."""
    if "schema_version" not in attrs:
        raise DatasetError(f"{path}: not a complete phasenet dataset (no schema_version attribute)")
    try:
        version = int(attrs["schema_version"])
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: schema_version {attrs['schema_version']!r} is not a number") from None
    if version > SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema version {version} is newer than this phasenet ({SCHEMA_VERSION})")
    if version < 1:
        raise DatasetError(f"{path}: schema version {version} is unknown (this phasenet reads 1..{SCHEMA_VERSION})")
    if not bool(attrs.get("complete", False)):
        raise DatasetError(f"{path}: not a complete phasenet dataset (incomplete: the run that wrote "
                           "it was interrupted or is still running; rerun it)")


def _row_name(name: str, path) -> str:
    if name not in ROW_ARRAYS:
        raise KeyError(f"{path}: {name!r} is not a per-row array ({', '.join(ROW_ARRAYS)})")
    return name


def _runs(idx: np.ndarray):
    """Split sorted indices into (start, stop, offset) runs of consecutive values."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1, int(a)) for a, b in zip(starts, stops)]


def read_rows(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """ds[idx] for sorted unique ``idx``, one contiguous read per run of consecutive rows."""
    out = np.empty((len(idx),) + ds.shape[1:], dtype=ds.dtype)
    for lo, hi, off in _runs(np.asarray(idx)):
        ds.read_direct(out, np.s_[lo:hi], np.s_[off:off + hi - lo])
    return out


def read_structures_table(path: str | Path):
    """The ``structures`` group as a pandas DataFrame (cell split into a..gamma)."""
    with DatasetReader(path) as ds:
        return ds.structures_table()


def read_atoms(path: str | Path, index: int):
    """The atomic model of structure ``index`` as a pandas DataFrame."""
    with DatasetReader(path) as ds:
        return ds.atoms_table(index)


def dataset_info(path: str | Path) -> dict:
    """Summary of a dataset: counts, space groups, splits, normalisation, failures."""
    with DatasetReader(path) as ds:
        return ds.info()


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
