"""Shards: split N inputs (files or synthetic structure indices) into contiguous pieces,
and merge the shard datasets back into one.

Shard ``index`` of ``count`` covers ``range(*shard_range(n, index, count))``. Shards are
contiguous so that concatenating them in shard order gives the single-process order.

A shard is an ordinary complete dataset (schema v1) whose root attributes also say
which shard it is (:data:`SHARD_ATTRS`): ``shard_index``, ``shard_count``,
``n_inputs_total`` (inputs of the whole set, before slicing) and ``inputs_fingerprint``
(a hash of the whole input list, or of the generator's arguments for ``synth``).
:func:`merge_shards` checks that the files form one complete set built with identical
options, then concatenates them in shard order.

Why a copy and not HDF5 virtual datasets: a virtual dataset would make the merge
instant, but the result would depend on every shard file staying in place (moving or
deleting ``shards/`` silently turns the data into fill values), cannot be read by
HDF5 libraries older than 1.10, and reads across many small files are slow on cluster
file systems. The merge instead streams the compressed chunks from shard to output
without decoding them (one structure per chunk, as :func:`phasenet.io.hdf5.merge_parts`
does), so it runs at disk speed, holds one chunk in memory at a time, and the output is
a self-contained file equal to a single-process build.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from phasenet.io.hdf5 import ROW_ARRAYS, DatasetError, DatasetReader

#: Root attributes that mark a dataset as one shard of a set.
SHARD_ATTRS = ("shard_index", "shard_count", "n_inputs_total", "inputs_fingerprint")
#: Root attributes that may differ between the shards of one set (besides SHARD_ATTRS).
PER_SHARD_ATTRS = ("failures", "n_failures", "n_structures", "n_inputs", "complete")
#: Attributes that need not be equal between shards (none: even the phasenet version must match).
IGNORED_ATTRS: tuple[str, ...] = ()

BLOCK_ROWS = 1024  # rows per read/write when chunks cannot be copied as they are


class ShardError(DatasetError):
    """The shard files do not form one complete, consistent set (the message says why)."""


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; raise ValueError with the reason."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 3/16), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N and N >= 1")
    return i, n


def shard_range(n_items: int, index: int, count: int) -> tuple[int, int]:
    """Half-open ``(start, stop)`` of shard ``index`` of ``count`` over ``n_items`` items."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return (n_items * index) // count, (n_items * (index + 1)) // count


def inputs_fingerprint(items) -> str:
    """sha256 of a list of inputs (paths are resolved, so relative and absolute agree)."""
    h = hashlib.sha256()
    for item in items:
        h.update(str(Path(item).resolve() if isinstance(item, Path) else item).encode() + b"\0")
    return h.hexdigest()


def shard_attrs(index: int, count: int, n_total: int, fingerprint: str) -> dict:
    """The root attributes a shard dataset carries (see :data:`SHARD_ATTRS`)."""
    return {"shard_index": int(index), "shard_count": int(count),
            "n_inputs_total": int(n_total), "inputs_fingerprint": str(fingerprint)}


def shard_file_name(index: int) -> str:
    """The name the Slurm scripts give shard ``index``: ``shard-0003.h5``."""
    return f"shard-{index:04d}.h5"


def _expand(paths) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.glob("*.h5") if q.is_file())
            if not found:
                raise ShardError(f"{p}: folder holds no shard files (*.h5)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ShardError(f"{p}: shard file not found")
    return out


def read_shard_header(path: Path) -> dict:
    """Root attributes of one shard (decoded), with the reasons it cannot be used."""
    try:
        ds = DatasetReader(path)
    except DatasetError as exc:
        raise ShardError(str(exc)) from None
    with ds:
        attrs = dict(ds.attrs)
        if "synth" in attrs and "shard_index" not in attrs:
            _synth_shard_attrs(attrs)
        missing = [k for k in SHARD_ATTRS if k not in attrs]
        if missing:
            raise ShardError(f"{path}: not a shard (no {', '.join(missing)} attribute; "
                             "build shards with --shard I/N)")
        attrs["_n_rows"] = len(ds) if "intensity" in ds.h5 else 0
    return attrs


#: Keys of the ``synth`` attribute (phasenet synth) that differ from shard to shard.
SYNTH_PER_SHARD = ("shard_index", "shard_count", "index_start", "index_stop")


def _synth_shard_attrs(attrs: dict) -> None:
    """Shard attributes of a ``phasenet synth --shard`` output, from its ``synth`` attribute
    (which records the shard, the run size and the generator's options)."""
    try:
        meta = json.loads(attrs["synth"])
        common = {k: v for k, v in meta.items() if k not in SYNTH_PER_SHARD}
        attrs.update(shard_index=int(meta["shard_index"]), shard_count=int(meta["shard_count"]),
                     n_inputs_total=int(meta["n_total"]),
                     inputs_fingerprint=hashlib.sha256(json.dumps(common, sort_keys=True).encode()).hexdigest())
        attrs["synth"] = json.dumps(common, sort_keys=True)  # compared between shards
        attrs["_synth_meta"] = meta
    except (ValueError, KeyError, TypeError):
        pass  # reported as "not a shard" by the caller


def check_shards(paths) -> list[tuple[Path, dict]]:
    """Validate that ``paths`` (files or folders of ``*.h5``) form one complete set.

    Returns ``[(path, attrs)]`` in shard order; raises :class:`ShardError` naming the
    missing, duplicate or mismatched shard.
    """
    files = _expand(paths)
    if not files:
        raise ShardError("no shard files given")
    headers = [(p, read_shard_header(p)) for p in files]
    ref_path, ref = headers[0]
    by_index: dict[int, Path] = {}
    for p, a in headers:
        if int(a["shard_count"]) != int(ref["shard_count"]):
            raise ShardError(f"{p}: shard {a['shard_index']}/{a['shard_count']} belongs to a set of "
                             f"{a['shard_count']}, but {ref_path} to a set of {ref['shard_count']}")
        for key in ("inputs_fingerprint", "n_inputs_total"):
            if a[key] != ref[key]:
                raise ShardError(f"{p}: built from other inputs than {ref_path} "
                                 f"({key} differs: {a[key]} vs {ref[key]})")
        for key in set(a) | set(ref):
            if key.startswith("_") or key in SHARD_ATTRS or key in PER_SHARD_ATTRS or key in IGNORED_ATTRS:
                continue
            if a.get(key) != ref.get(key):
                raise ShardError(f"{p}: {key} differs from {ref_path}: {a.get(key)} vs {ref.get(key)}")
        i = int(a["shard_index"])
        if i in by_index:
            raise ShardError(f"duplicate shard {i}/{a['shard_count']}: {by_index[i]} and {p}")
        by_index[i] = p
    count = int(ref["shard_count"])
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ShardError(f"missing shard(s) {shown} of {count} (have {len(by_index)}: "
                         f"{', '.join(sorted({str(p.parent) for p in files}))})")
    order = {p: a for p, a in headers}
    return [(by_index[i], order[by_index[i]]) for i in range(count)]


def _layout(h5) -> dict[str, str]:
    """Every dataset of a shard, by how it merges: 'hkl'-like (equal in every shard, copied
    once), 'row' (one row per structure), 'offset' (atoms/offset), 'atom' (one row per atom)."""
    import h5py

    n = int(h5["intensity"].shape[0])
    kinds: dict[str, str] = {}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if name == "atoms/offset":
            kinds[name] = "offset"
        elif name.startswith("atoms/"):
            kinds[name] = "atom"
        elif name.startswith("structures/") or name in ROW_ARRAYS or (
                name != "hkl" and "/" not in name and obj.ndim >= 1 and obj.shape[0] == n):
            kinds[name] = "row"
        else:
            kinds[name] = "same"

    h5.visititems(visit)
    return kinds


def _create_like(out, name, src, n_rows):
    """An output dataset shaped like ``src`` with ``n_rows`` rows and its creation settings."""
    shape = (n_rows,) + src.shape[1:]
    kw = dict(shape=shape, dtype=src.dtype)
    if src.chunks is not None and n_rows > 0:
        kw.update(chunks=tuple(min(c, s) if s else c for c, s in zip(src.chunks, shape)),
                  compression=src.compression, compression_opts=src.compression_opts,
                  shuffle=src.shuffle, fletcher32=src.fletcher32)
        if src.chunks[0] == 1 or src.maxshape[0] is None:
            kw["maxshape"] = (None,) + src.shape[1:]
    if src.fillvalue is not None and src.dtype.kind in "fiub":
        kw["fillvalue"] = src.fillvalue
    ds = out.create_dataset(name, **kw)
    for k, v in src.attrs.items():
        ds.attrs[k] = v
    return ds


def _copy_rows(src, dst, start: int) -> None:
    """Copy all rows of ``src`` into ``dst[start:]``: compressed chunks as they are when both
    store one row per chunk with the same filters, else in blocks of BLOCK_ROWS."""
    n = src.shape[0]
    if n == 0:
        return
    direct = (src.chunks is not None and dst.chunks is not None and src.chunks == dst.chunks
              and src.chunks[0] == 1 and tuple(src.chunks[1:]) == tuple(src.shape[1:])
              and src.compression == dst.compression and src.shuffle == dst.shuffle
              and src.compression_opts == dst.compression_opts)
    if direct:
        zeros = (0,) * (src.ndim - 1)
        for i in range(n):
            mask, chunk = src.id.read_direct_chunk((i,) + zeros)
            dst.id.write_direct_chunk((start + i,) + zeros, chunk, mask)
        return
    for lo in range(0, n, BLOCK_ROWS):
        hi = min(n, lo + BLOCK_ROWS)
        dst[start + lo:start + hi] = src[lo:hi]


def merge_shards(shards, output, *, overwrite: bool = False, progress=None) -> dict:
    """Merge shard datasets (files or folders of ``*.h5``) into ``output``.

    Checks the set first (:func:`check_shards`), then concatenates every per-structure
    array, column and atom table in shard order, sums the failure reports, and writes
    ``output`` through a temporary name renamed at the end. Returns
    ``{"n_structures", "n_failures", "failures", "n_inputs", "n_shards"}``.
    """
    import h5py
    import numpy as np

    output = Path(output)
    ordered = check_shards(shards)
    if output.exists() and not overwrite:
        raise ShardError(f"{output} exists; use overwrite (--overwrite) to replace it")
    if any(p.resolve() == output.resolve() for p, _ in ordered):
        raise ShardError(f"{output} is one of the shards")
    ref_attrs = ordered[0][1]
    n_rows = [a["_n_rows"] for _, a in ordered]
    failures: list = []
    n_inputs = 0
    atom_counts = []
    with DatasetReader(ordered[0][0]) as ds:
        kinds = _layout(ds.h5)
        hkl0 = ds.hkl if "hkl" in ds.h5 else None
    for p, a in ordered:
        failures += json.loads(a.get("failures", "[]"))
        n_inputs += int(a.get("n_inputs", 0))
        with DatasetReader(p) as ds:
            if _layout(ds.h5) != kinds:
                raise ShardError(f"{p}: holds other datasets than {ordered[0][0]}")
            atom_counts.append(int(ds.h5["atoms/offset"][-1]) if "atoms/offset" in ds.h5 else 0)
            if "hkl" in ds.h5 and not np.array_equal(hkl0, ds.hkl):
                raise ShardError(f"{p}: reflection set differs from {ordered[0][0]}")
    n, m = sum(n_rows), sum(atom_counts)
    if "_synth_meta" not in ref_attrs and int(ref_attrs["n_inputs_total"]) != n_inputs:
        raise ShardError(f"the shards cover {n_inputs} inputs, but the set has "
                         f"{ref_attrs['n_inputs_total']}")

    tmp = output.with_name(output.name + ".tmp")
    with h5py.File(tmp, "w") as out:
        out.attrs["complete"] = False
        with DatasetReader(ordered[0][0]) as ds0:
            h0 = ds0.h5
            dst = {}
            for name, kind in kinds.items():
                size = {"row": n, "atom": m, "offset": n + 1}.get(kind)
                if kind == "same":
                    h0.copy(h0[name], out, name=name)
                else:
                    dst[name] = _create_like(out, name, h0[name], size)
            for gname in ("structures", "atoms"):
                if gname in h0 and gname in out:
                    for k, v in h0[gname].attrs.items():
                        out[gname].attrs[k] = v
        start, atom_start = 0, 0
        for (p, _), size, n_atoms in zip(ordered, n_rows, atom_counts):
            with DatasetReader(p) as ds:
                h5 = ds.h5
                for name, kind in kinds.items():
                    if kind == "row":
                        _copy_rows(h5[name], dst[name], start)
                    elif kind == "atom":
                        _copy_rows(h5[name], dst[name], atom_start)
                    elif kind == "offset":
                        dst[name][start:start + size + 1] = h5[name][...] + atom_start
            start += size
            atom_start += n_atoms
            if progress is not None:
                progress(size)
        for k, v in ordered[0][1].items():
            if not k.startswith("_") and k not in SHARD_ATTRS and k not in PER_SHARD_ATTRS:
                out.attrs[k] = v
        if "_synth_meta" in ref_attrs:  # as a single-process synth run writes it
            meta = dict(ref_attrs["_synth_meta"], shard_index=0, shard_count=1, index_start=0,
                        index_stop=int(ref_attrs["n_inputs_total"]))
            out.attrs["synth"] = json.dumps(meta, sort_keys=True)
        out.attrs["inputs_fingerprint"] = ref_attrs["inputs_fingerprint"]
        out.attrs["merged_shards"] = len(ordered)
        out.attrs["failures"] = json.dumps(failures)
        out.attrs["n_structures"] = n
        out.attrs["n_failures"] = len(failures)
        out.attrs["n_inputs"] = n_inputs
        out.attrs["complete"] = True
    os.replace(tmp, output)
    return {"n_structures": n, "n_failures": len(failures), "failures": failures,
            "n_inputs": n_inputs, "n_shards": len(ordered)}
