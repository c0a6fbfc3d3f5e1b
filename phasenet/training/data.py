"""Batches streamed from the HDF5 dataset; never the whole file in memory.

Rows (structures) of one split are cut into blocks of ``block_rows`` consecutive
rows. Each epoch, a generator seeded by (seed, epoch) permutes the blocks, groups
them into windows of ``shuffle_buffer`` rows, and permutes the rows inside each
window. A window is read chunk by chunk (the file has one chunk per structure, so
nothing outside the window is decoded; ``read_rows_fast`` bypasses HDF5's filter
pipeline and selection machinery, which cost more than the decompression), from a
memory map where the layout allows (``ChunkMap``), into reused window buffers.

With ``data.prefetch`` (the default), reading and batch assembly run in one reader
*process* (multiprocessing, spawn context; with ``data.in_memory`` the rows are
loaded there, so the two modes differ only in the source): it computes
batch i, i+1, ... ahead into a ring of shared-memory slots, so the training
process only copies finished batches out (h5py holds the GIL while it reads, which
stalled training in a reader thread). The reader computes each batch with the same
code as the in-process path, so the batches are identical; a request out of
sequence (a resumed run, random access) restarts the pipeline at that batch.
``close()`` stops the process (also at interpreter exit, and the process exits by
itself when the training process dies). Being spawned, it imports the main module
as ``__mp_main__``: scripts need the usual ``if __name__ == "__main__":`` guard.

The same reader serves the on-the-fly sources of :mod:`phasenet.training.onthefly`
(:func:`start_reader`): there ``data.workers`` processes take the requests in turn and
the batches carry the network input's mask.

Batch ``i`` of the training stream is a pure function of (seed, i): the stream can
restart at any epoch and yield the same batches an uninterrupted run would (resume).

Batches: ``x`` is the model input (intensity, or {"intensity", "cell"} with cell
input); ``y`` is the target: for the sign task (B, R, 3) float32 holding, per
reflection, the sign label (1, 0 or -1 = none), the intensity the loss weights
use, and I_calc (for the map correlation); for the autoencoder, the input itself.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from phasenet.io.hdf5 import DatasetError, DatasetReader, read_rows
from phasenet.reflections import canonical_hkl


class DataMismatchError(DatasetError):
    """The dataset does not fit the config (reflections, labels, normalisation, split)."""


# ---- input features (shared with phasenet.training.predict) -----------------------------------
def prepare_input(intensity: np.ndarray, transform: str = "none") -> np.ndarray:
    """Model input from the stored normalised intensities: NaN -> 0, optional transform."""
    x = np.nan_to_num(np.asarray(intensity, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if transform == "none":
        return x
    if transform == "max":
        m = np.max(np.abs(x), axis=-1, keepdims=True)
        return x / np.where(m > 0, m, 1.0)
    if transform == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    raise ValueError(f"input_transform {transform!r}: allowed values: none, max, log1p")


def cell_features(cell: np.ndarray) -> np.ndarray:
    """(N, 6) a, b, c (Å), α, β, γ (°) -> a/10, b/10, c/10, cos α, cos β, cos γ (float32)."""
    cell = np.asarray(cell, dtype=np.float64).reshape(-1, 6)
    return np.concatenate([cell[:, :3] / 10.0, np.cos(np.radians(cell[:, 3:]))], axis=1).astype(np.float32)


# ---- which rows ------------------------------------------------------------------------
def check_dataset(dataset: DatasetReader, cfg) -> np.ndarray:
    """Raise DataMismatchError unless the dataset fits ``cfg``; return the expected hkl."""
    path = dataset.path
    expected = canonical_hkl(cfg.data.max_index, cfg.r2_max_or_none())
    hkl = dataset.hkl
    opts = dataset.build_options
    if hkl.shape != expected.shape or not np.array_equal(hkl, expected):
        raise DataMismatchError(
            f"{path}: reflection set differs from the one the config expects: the dataset has "
            f"{len(hkl)} reflections (built with max_index {opts.get('max_index')}, r2_max "
            f"{opts.get('r2_max')}), the config expects {len(expected)} (data.max_index = "
            f"{cfg.data.max_index}, data.r2_max = {cfg.data.r2_max}; 0 = no sphere cut)")
    norm = opts.get("normalisation")
    if cfg.data.normalisation != "any" and norm != cfg.data.normalisation:
        raise DataMismatchError(f"{path}: built with normalisation {norm!r}, but data.normalisation "
                                f"= {cfg.data.normalisation!r} (\"any\" accepts every dataset)")
    return expected


def select_rows(dataset: DatasetReader, split: str, cfg) -> np.ndarray:
    """Sorted row indices of ``split`` (with sign labels, for the sign task), maybe subsampled."""
    path = dataset.path
    mask = dataset.split_mask(split)
    n_split = int(mask.sum())
    if n_split == 0:
        raise DataMismatchError(f"{path}: no structures in the {split!r} split "
                                f"(splits present: {sorted(set(dataset.split))})")
    if cfg.data.task == "sign":
        mask &= dataset.column("centric_origin").astype(bool)
        if not mask.any():
            raise DataMismatchError(
                f"{path}: none of the {n_split} {split} structures has sign labels (sign labels "
                "need an inversion centre at the origin); data.task = \"sign\" cannot train on it "
                "(data.task = \"autoencoder\" can)")
    rows = np.flatnonzero(mask)
    limit = cfg.data.max_train if split == "train" else cfg.data.max_test
    if limit and limit < len(rows):
        rng = np.random.default_rng([cfg.run.seed, 7919 if split == "train" else 7927])
        rows = np.sort(rng.choice(rows, size=limit, replace=False))
    if cfg.data.task == "sign":  # a label check on a sample of rows: all -1 is an error
        sample = rows[np.linspace(0, len(rows) - 1, min(len(rows), 64)).astype(int)]
        signs = dataset.rows("sign", np.unique(sample))
        if not (signs >= 0).any():
            raise DataMismatchError(f"{path}: the {split} structures marked as sign-labelled carry "
                                    "no sign labels (every 'sign' value is -1)")
    return rows


_LZF, _DEFLATE = 32000, 1  # HDF5 filter ids
_lzf_kernel = None  # (lzf_decompress, gather_chunks) compiled, False without numba


def _lzf_decompress_py(src, dst):
    """liblzf's lzf_decompress (src -> dst, both uint8); bytes written, -1 on corrupt input.
    (while loops: ~25 % faster under numba than range loops for LZF's short tokens.)"""
    ip, op, n, m = 0, 0, src.shape[0], dst.shape[0]
    while ip < n:
        ctrl = np.int64(src[ip])
        ip += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            ctrl += 1
            if op + ctrl > m or ip + ctrl > n:
                return -1
            end = op + ctrl
            while op < end:
                dst[op] = src[ip]
                op += 1
                ip += 1
        else:  # back reference
            length = ctrl >> 5
            ref = op - ((ctrl & 0x1F) << 8) - 1
            if length == 7:
                if ip >= n:
                    return -1
                length += np.int64(src[ip])
                ip += 1
            if ip >= n:
                return -1
            ref -= np.int64(src[ip])
            ip += 1
            length += 2
            if ref < 0 or op + length > m:
                return -1
            end = op + length
            while op < end:  # byte by byte: an overlapping reference repeats a pattern
                dst[op] = dst[ref]
                op += 1
                ref += 1
    return op


def _gather_chunks_py(mem, offsets, sizes, masks, lzf, out):
    """Chunk j of the file bytes ``mem`` (raw, or LZF unless mask bit 0) -> out[j]; ok flags."""
    ok = np.zeros(out.shape[0], np.bool_)
    m = out.shape[1]
    for j in range(out.shape[0]):
        o, n = offsets[j], sizes[j]
        if o < 0 or o + n > mem.shape[0]:
            continue
        if not lzf or masks[j] & 1:
            if n == m:
                out[j, :] = mem[o:o + n]
                ok[j] = True
        else:
            ok[j] = _lzf_decompress(mem[o:o + n], out[j]) == m
    return ok


_lzf_decompress = _gather_chunks = None


def _lzf():
    """The LZF decompressor (numba, compiled once and cached on disk); None without numba."""
    global _lzf_kernel, _lzf_decompress, _gather_chunks
    if _lzf_kernel is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _lzf_kernel = False
            return None
        _lzf_decompress = numba.njit(cache=True, nogil=True, error_model="numpy")(_lzf_decompress_py)
        _gather_chunks = numba.njit(cache=True, nogil=True)(_gather_chunks_py)
        from phasenet.util.numba_cache import announce_compilation

        announce_compilation((_lzf_decompress, _gather_chunks), "the LZF reader", "5 s")
        _lzf_kernel = (_lzf_decompress, _gather_chunks)
    return _lzf_kernel[0] if _lzf_kernel else None


class ChunkMap:
    """Where each row's chunk lies in the file, to read rows with a memory map, not HDF5.

    For a dataset stored one row per chunk, unfiltered or LZF, in a file on disk: the
    (offset, size, filter mask) of every chunk, listed once with H5Dchunk_iter; rows are
    then copied or decompressed straight from a read-only ``np.memmap`` of the file by a
    numba kernel that releases the GIL (~1-3 µs per row of a few kB, against ~10 µs of
    H5Dread_chunk and ~25 µs of a hyperslab read); runs of raw rows stored back to back
    (the usual layout of a file written in row order) are gathered by numpy instead. ``read`` returns None where this
    cannot be used (other layout, filter or driver, old HDF5); callers then use
    ``read_rows_fast``. The map is checked against H5Dread_chunk on one chunk.
    """

    def __init__(self, ds: h5py.Dataset, mem: np.ndarray):
        self.ok = False
        filt = _chunk_filter(ds)
        if filt not in (None, _LZF) or ds.shape[0] == 0 or not hasattr(ds.id, "chunk_iter"):
            return
        if ds.file.driver not in ("sec2", "stdio") or ds.dtype.hasobject:
            return
        n = ds.shape[0]
        self.offsets = np.full(n, -1, np.int64)
        self.sizes = np.zeros(n, np.int64)
        self.masks = np.zeros(n, np.uint32)

        def visit(info):
            r = info.chunk_offset[0]
            self.offsets[r], self.sizes[r], self.masks[r] = info.byte_offset, info.size, info.filter_mask

        try:
            ds.id.chunk_iter(visit)
            written = np.flatnonzero(self.offsets >= 0)
            if len(written):
                r = int(written[0])
                mask, raw = ds.id.read_direct_chunk((r,) + (0,) * (ds.ndim - 1))
                o = self.offsets[r]
                if bytes(mem[o:o + self.sizes[r]]) != bytes(raw) or mask != self.masks[r]:
                    return
        except Exception:  # noqa: BLE001 - any surprise: HDF5 reads instead
            return
        self.lzf = filt == _LZF
        self.mem, self.ds, self.ok = mem, ds, True
        self._find_runs()

    def _find_runs(self):
        """Runs of consecutive rows stored raw (no filter, or LZF skipped because it did not
        shrink the row) back to back in the file: each run is a 2-D view of the file, from
        which numpy gathers rows with one memcpy each (the kernel's byte loop is ~4x
        slower). ``self.runs``: (first row, end row, view (rows, row bytes))."""
        m = int(np.prod(self.ds.shape[1:])) * self.ds.dtype.itemsize
        raw = (self.offsets >= 0) & (self.sizes == m)
        if self.lzf:
            raw &= (self.masks & 1) != 0
        follows = np.zeros(len(raw), bool)
        follows[1:] = raw[1:] & raw[:-1] & (self.offsets[1:] == self.offsets[:-1] + m)
        starts = np.flatnonzero(raw & ~follows)
        self.runs = []
        for r0 in starts.tolist():
            r1 = r0 + 1
            while r1 < len(raw) and follows[r1]:
                r1 += 1
            if r1 - r0 >= 8:  # short runs: the kernel
                o = int(self.offsets[r0])
                self.runs.append((r0, r1, self.mem[o:o + (r1 - r0) * m].reshape(r1 - r0, m)))

    def read(self, idx: np.ndarray, out: np.ndarray | None = None):
        """Rows ``idx`` (into ``out`` when given: a C-contiguous array of the right shape
        and dtype), or None where the map cannot be used."""
        if not self.ok:
            return None
        idx = np.asarray(idx, dtype=np.int64)
        if out is None:
            out = np.empty((len(idx),) + self.ds.shape[1:], dtype=self.ds.dtype)
        if not len(idx):
            return out
        flat = out.reshape(len(idx), -1).view(np.uint8)
        todo = np.ones(len(idx), bool)
        if self.runs and len(idx) > 1 and np.all(idx[1:] >= idx[:-1]):  # sorted: runs are slices
            for r0, r1, view in self.runs:
                a, b = np.searchsorted(idx, [r0, r1])
                if b > a:
                    np.take(view, idx[a:b] - r0, axis=0, out=flat[a:b])
                    todo[a:b] = False
        ok = np.ones(len(idx), bool)
        if todo.any():
            rest = np.flatnonzero(todo)
            sub = flat[rest] if len(rest) < len(idx) else flat
            ok_rest = _lzf_kernel[1](self.mem, self.offsets[idx[rest]], self.sizes[idx[rest]],
                                     self.masks[idx[rest]], self.lzf, sub)
            if len(rest) < len(idx):
                flat[rest] = sub
            ok[rest] = ok_rest
        for j in np.flatnonzero(~ok).tolist():  # unwritten chunks (fill value) and oddities
            r = int(idx[j])
            self.ds.read_direct(out, np.s_[r:r + 1], np.s_[j:j + 1])
        return out


def _chunk_filter(ds: h5py.Dataset):
    """The one filter of a dataset stored one row per chunk (None: no filter), else False."""
    if ds.chunks is None or ds.chunks[0] != 1 or tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return False
    plist = ds.id.get_create_plist()
    n = plist.get_nfilters()
    if n == 0:
        return None
    if n > 1:
        return False
    fid = plist.get_filter(0)[0]
    if fid == _LZF and _lzf() is not None:
        return _LZF
    return _DEFLATE if fid == _DEFLATE else False


def read_rows_fast(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """``read_rows`` for datasets with one row per chunk: raw chunk reads, decompressed here.

    Per row, H5Dread_chunk plus LZF (numba) / zlib decompression; about 3-4 times faster
    than a hyperslab read (HDF5's per-chunk selection and filter overhead dominate for
    rows of a few kB). Other layouts and filters, and any chunk that cannot be read
    this way, use ``read_rows``.
    """
    idx = np.asarray(idx)
    filt = _chunk_filter(ds) if len(idx) else False
    if filt is False:
        return read_rows(ds, idx)
    out = np.empty((len(idx),) + ds.shape[1:], dtype=ds.dtype)
    flat = out.reshape(len(idx), -1).view(np.uint8)
    nbytes = flat.shape[1]
    buf = np.empty(nbytes + nbytes // 64 + 1024, np.uint8)  # room for incompressible zlib
    read_chunk, tail = ds.id.read_direct_chunk, (0,) * (ds.ndim - 1)
    lzf = _lzf() if filt == _LZF else None
    for j, r in enumerate(idx.tolist()):
        try:
            mask, raw = read_chunk((r,) + tail, out=buf)
            size = len(raw)
            if filt is None or mask & 1:  # unfiltered, or the filter was skipped
                ok = size == nbytes
                if ok:
                    flat[j] = buf[:nbytes]
            elif filt == _LZF:
                ok = lzf(buf[:size], flat[j]) == nbytes
            else:
                import zlib

                data = zlib.decompress(buf[:size])
                ok = len(data) == nbytes
                if ok:
                    flat[j] = np.frombuffer(data, np.uint8)
        except (OSError, ValueError, KeyError, RuntimeError):  # e.g. a chunk never written
            ok = False
        if not ok:
            ds.read_direct(out, np.s_[r:r + 1], np.s_[j:j + 1])
    return out


# ---- the batch source --------------------------------------------------------------------
class BatchSource:
    """Batches of one split of an HDF5 dataset (pure numpy; wrapped for Keras by ``keras_dataset``).

    ``shuffle=True`` (training): an endless stream, batch ``i`` belongs to epoch
    ``i // steps_per_epoch``; only full batches. ``shuffle=False`` (test): file order,
    the last batch may be short.
    """

    def __init__(self, path, cfg, split: str, *, shuffle: bool, rows=None):
        self.path = Path(path)
        self.cfg = cfg
        self.split = split
        self.shuffle = shuffle
        self.task = cfg.data.task
        self.batch_size = cfg.run.batch_size
        self.seed = cfg.run.seed
        self.block = cfg.data.block_rows
        self.transform = cfg.data.input_transform
        self.cell_input = cfg.model.cell_input
        with DatasetReader(self.path) as ds:
            self.hkl = check_dataset(ds, cfg)
            self.rows = select_rows(ds, split, cfg) if rows is None else np.asarray(rows)
            self.cell = ds.column("cell")[self.rows] if self.cell_input else None
        self.n = len(self.rows)
        self.n_reflections = len(self.hkl)
        window = max(cfg.data.shuffle_buffer, self.block)
        self.window = (window // self.block) * self.block if shuffle else max(window, self.batch_size)
        if shuffle:
            self.steps_per_epoch = self.n // self.batch_size if self.n >= self.batch_size else 1
        else:
            self.steps_per_epoch = -(-self.n // self.batch_size)
        self._names = ["intensity"] + (["sign", "intensity_calc"] if self.task == "sign" else [])
        self._dataset, self._mem, self._maps = None, None, {}  # opened where batches are read
        self._lock = threading.Lock()  # guards _orders
        self._io_lock = threading.Lock()  # guards the h5py file (reads in the prefetch thread)
        self._orders: dict = {}  # epoch -> order (shared with the prefetch thread, under _lock)
        self._cache: dict = {}  # (epoch, window) -> data (main thread only)
        self._free: dict = {}  # name -> window-sized arrays to reuse (see _buffer)
        self._buf_lock = threading.Lock()
        self._pending: dict = {}
        self._pool = ThreadPoolExecutor(1) if cfg.data.prefetch else None
        self._memory = None  # data.in_memory: the rows, loaded where batches are computed
        # batches computed in a reader process (started on the first batch() call)
        self.use_process = bool(cfg.data.prefetch)
        self._reader = None

    def _memory_rows(self):
        if self._memory is None:
            with self._io_lock:
                self._memory = {k: self._read(k, self.rows) for k in self._names}
        return self._memory

    # -- order -----------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions into ``self.rows`` in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, 104729, epoch])
        n_blocks = -(-self.n // self.block)
        blocks = rng.permutation(n_blocks)
        order = np.concatenate([np.arange(b * self.block, min((b + 1) * self.block, self.n))
                                for b in blocks])
        for lo in range(0, self.n, self.window):
            seg = order[lo:lo + self.window]
            order[lo:lo + self.window] = seg[rng.permutation(len(seg))]
        return order

    def _order(self, epoch):
        with self._lock:
            if epoch not in self._orders:
                for k in [k for k in self._orders if k < epoch - 1]:
                    del self._orders[k]
                self._orders[epoch] = self.epoch_order(epoch)
            return self._orders[epoch]

    # -- reading ---------------------------------------------------------------------
    def _file(self) -> DatasetReader:
        if self._dataset is None:
            self._dataset = DatasetReader(self.path)
            self._maps = {}
        return self._dataset

    def _read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one dataset (call under _io_lock): memory map, else chunk reads."""
        ds = self._file().dataset(name)
        if name not in self._maps:
            self._maps[name] = None
            if _lzf() is not None:
                if self._mem is None:
                    try:
                        self._mem = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
                    except (OSError, ValueError):
                        self._mem = False
                if self._mem is not False:
                    self._maps[name] = ChunkMap(ds, self._mem)
        m = self._maps[name]
        out = m.read(rows, self._buffer(name, len(rows), ds)) if m is not None else None
        return read_rows_fast(ds, rows) if out is None else out

    def _buffer(self, name: str, n: int, ds) -> np.ndarray:
        """A window-sized array for ``name`` from the free list (reused: a fresh array of
        megabytes costs a page fault per 4 kB every window), as its first ``n`` rows."""
        shape = (self.window,) + ds.shape[1:]
        if n > self.window:  # not a window (all rows at once, for data.in_memory)
            return np.empty((n,) + ds.shape[1:], dtype=ds.dtype)
        with self._buf_lock:
            free = self._free.setdefault(name, [])
            buf = free.pop() if free else None
        if buf is None or buf.shape != shape or buf.dtype != ds.dtype:
            buf = np.empty(shape, dtype=ds.dtype)
        return buf[:n]

    def _release(self, data: dict) -> None:
        """Give the arrays of an evicted window back to the free list (at most 3 per name:
        the window in use, the one being prefetched, one spare)."""
        with self._buf_lock:
            for name, arr in data.items():
                base = arr.base if arr.base is not None else arr
                free = self._free.setdefault(name, [])
                if len(free) < 3 and isinstance(base, np.ndarray) and base.flags.c_contiguous:
                    free.append(base)

    def _read_window(self, epoch: int, w: int):
        order = self._order(epoch)
        pos = np.sort(order[w * self.window:(w + 1) * self.window])
        if self.cfg.data.in_memory:
            return pos, {k: v[pos] for k, v in self._memory_rows().items()}
        rows = self.rows[pos]
        with self._io_lock:  # one h5py handle, shared by the threads
            data = {k: self._read(k, rows) for k in self._names}
        return pos, data

    def _window(self, epoch: int, w: int):
        key = (epoch, w)
        fut = self._pending.pop(key, None)
        if key in self._cache:
            data = self._cache[key]
        elif fut is not None:
            data = fut.result()
        else:
            data = self._read_window(epoch, w)
        self._cache[key] = data
        for k in [k for k in self._cache if k < key]:
            old = self._cache.pop(k)  # windows are visited in order: older ones are done
            if not self.cfg.data.in_memory:
                self._release(old[1])
        if self._pool is not None:  # prefetch the next window (of this or the next epoch)
            n_windows = -(-self.n // self.window)
            nxt = (epoch, w + 1) if w + 1 < n_windows else ((epoch + 1, 0) if self.shuffle else None)
            if nxt is not None and nxt not in self._cache and nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._read_window, *nxt)
        return data

    def batch_positions(self, i: int) -> tuple[int, np.ndarray]:
        if self.shuffle:
            epoch, step = divmod(i, self.steps_per_epoch)
        else:
            epoch, step = 0, i
        order = self._order(epoch)
        return epoch, order[step * self.batch_size:(step + 1) * self.batch_size]

    def batch_rows(self, i: int) -> np.ndarray:
        """File rows of batch ``i`` (for tests of the order)."""
        return self.rows[self.batch_positions(i)[1]]

    def raw_batch(self, i: int) -> dict:
        epoch, positions = self.batch_positions(i)
        if self.cfg.data.in_memory:  # no windows: straight from the rows in memory
            out = {k: v[positions] for k, v in self._memory_rows().items()}
            out["positions"] = positions
            return out
        lo = (i % self.steps_per_epoch if self.shuffle else i) * self.batch_size
        w_first, w_last = lo // self.window, (lo + len(positions) - 1) // self.window
        parts = {k: [] for k in self._names}
        start = lo
        for w in range(w_first, w_last + 1):
            pos_sorted, data = self._window(epoch, w)
            end = min((w + 1) * self.window, lo + len(positions))
            want = positions[start - lo:end - lo]
            local = np.searchsorted(pos_sorted, want)
            for k in self._names:
                parts[k].append(data[k][local])
            start = end
        out = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}
        out["positions"] = positions
        return out

    def start(self, first_batch: int = 0):
        """Start the reader process now (it then computes batches from ``first_batch`` on)."""
        if self.use_process and self._reader is None:
            self._reader = _ProcessReader(self, first_batch)

    def batch(self, i: int):
        """Batch ``i`` as (x, y) numpy arrays (from the reader process when there is one)."""
        if self.use_process:
            self.start(int(i))
            return self._reader.get(int(i))
        return self.compute_batch(i)

    def next_index(self, i: int) -> int:
        """The batch normally asked for after batch ``i`` (the test split wraps around)."""
        return i + 1 if self.shuffle else (i + 1) % self.steps_per_epoch

    def compute_batch(self, i: int):
        """Batch ``i`` computed in this process (the reader process calls this too)."""
        raw = self.raw_batch(i)
        x = prepare_input(raw["intensity"], self.transform)
        if self.cell_input:
            x = {"intensity": x, "cell": cell_features(self.cell[raw["positions"]])}
        if self.task == "autoencoder":
            return x, (x["intensity"] if isinstance(x, dict) else x)
        w_src = x["intensity"] if isinstance(x, dict) else x
        if self.cfg.loss.weight_source == "calc":
            w_src = np.nan_to_num(raw["intensity_calc"].astype(np.float32))
        y = np.stack([raw["sign"].astype(np.float32), w_src,
                      np.nan_to_num(raw["intensity_calc"].astype(np.float32))], axis=-1)
        return x, y

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._maps, self._mem = {}, None
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # what the reader process gets: no handles, threads or caches
        state = dict(self.__dict__)
        for k in ("_dataset", "_lock", "_io_lock", "_pool", "_reader", "_pending", "_cache", "_orders",
                  "_memory", "_mem", "_maps", "_free", "_buf_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._dataset, self._reader, self._memory, self._mem, self._maps = None, None, None, None, {}
        self._lock, self._io_lock = threading.Lock(), threading.Lock()
        self._orders, self._cache, self._pending, self._free = {}, {}, {}, {}
        self._buf_lock = threading.Lock()
        # no window-prefetch thread in the reader process: it already works ahead through
        # its ring of slots, and a second busy thread there competes with training
        self._pool = None
        self.use_process = False


# ---- the reader process ----------------------------------------------------------------
_SLOT_BYTES = 64 << 20  # at most this much shared memory for the ring of finished batches
_MAX_SLOTS = 8


def _slot_layout(src):
    """[(name, shape)] of one batch in a slot: x intensity, its mask (a source with
    ``input_mask``: the network input), cell features, sign target."""
    b, r = src.batch_size, src.n_reflections
    layout = [("x", (b, r))]
    if getattr(src, "input_mask", False):
        layout.append(("mask", (b, r)))
    if src.cell_input:
        layout.append(("cell", (b, 6)))
    if getattr(src, "hint", False):
        layout.append(("hint", (b, r)))
    if src.task == "sign":
        hinted = getattr(src, "hint", False) and getattr(src, "shuffle", False)  # training hints
        layout.append(("y", (b, r, 4 if hinted else 3)))
    return layout


def _slot_views(buffer, layout, n_slots):
    """Per slot, {name: float32 array} over the shared ``buffer``; and the slot size."""
    mem = np.frombuffer(buffer, dtype=np.uint8)
    sizes = [(name, shape, -(-int(np.prod(shape)) * 4 // 64) * 64) for name, shape in layout]
    slot_bytes = sum(sz for _, _, sz in sizes)
    views = []
    for s in range(n_slots):
        off, v = s * slot_bytes, {}
        for name, shape, sz in sizes:
            v[name] = mem[off:off + int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
            off += sz
        views.append(v)
    return views, slot_bytes


def _reader_main(conn, buffer, src, layout, n_slots):
    """Reader process: for each (i, slot) request, compute batch i into the slot. (It runs
    at the training process's priority: lowered with nice, it starved on 2 cores and
    training waited for it, 0.8 of in-memory speed instead of 1.0.)"""
    views, _ = _slot_views(buffer, layout, n_slots)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the training process is gone
                break
            if msg is None:
                break
            i, slot = msg
            try:
                x, y = src.compute_batch(i)
                v = views[slot]
                xi = x["intensity"] if isinstance(x, dict) else x
                n = len(xi)
                v["x"][:n] = xi
                if "mask" in v:
                    v["mask"][:n] = x["mask"]
                for k in ("cell", "hint"):
                    if k in v:
                        v[k][:n] = x[k]
                if "y" in v:
                    v["y"][:n] = y
                reply = (i, slot, n, None)
            except Exception as e:  # noqa: BLE001 - handed to the training process
                import traceback

                reply = (i, slot, 0, (e, traceback.format_exc()))
            try:
                conn.send(reply)
            except (EOFError, OSError, BrokenPipeError):
                break
            except Exception:  # an exception that does not pickle  # noqa: BLE001
                conn.send((i, slot, 0, (None, reply[3][1])))
    finally:
        src.close()
        conn.close()


def _stop_readers(procs, conns):
    for conn in conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    for conn in conns:
        try:
            conn.close()
        except OSError:
            pass


class _ProcessReader:
    """Spawned processes (``workers``, default one) computing batches ahead into
    shared-memory slots; requests go to the processes in turn, replies are taken in
    request order (each process answers its own requests in order)."""

    def __init__(self, src, first_batch: int = 0, workers: int = 1):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.shuffle, self.steps = src.shuffle, src.steps_per_epoch  # (no reference to src)
        self.layout = _slot_layout(src)
        _, slot_bytes = _slot_views(b"", self.layout, 0)
        workers = max(1, int(workers))
        self.n_slots = int(min(max(_MAX_SLOTS, 2 * workers), max(2, _SLOT_BYTES // slot_bytes)))
        self.buffer = ctx.RawArray("b", self.n_slots * slot_bytes)
        self.views, _ = _slot_views(self.buffer, self.layout, self.n_slots)
        self.conns, self.procs = [], []
        for w in range(workers):
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=_reader_main, name=f"phasenet-batch-reader-{w}", daemon=True,
                               args=(child, self.buffer, src, self.layout, self.n_slots))
            proc.start()
            child.close()
            self.conns.append(conn)
            self.procs.append(proc)
        self.conn, self.proc = self.conns[0], self.procs[0]
        self._finalizer = weakref.finalize(self, _stop_readers, self.procs, self.conns)
        self._turn = 0  # the process the next request goes to
        self.free = list(range(self.n_slots))
        self.inflight: deque = deque()  # (i, slot, process), in request order
        self.last = None  # the last batch index requested from the processes
        self.lock = threading.Lock()
        self._submit(first_batch)  # starts working as soon as it is up
        self._top_up()

    def _submit(self, i):
        slot = self.free.pop()
        w = self._turn
        self._turn = (w + 1) % len(self.conns)
        self.conns[w].send((i, slot))
        self.inflight.append((i, slot, w))
        self.last = i

    def _receive(self):
        want, want_slot, w = self.inflight.popleft()
        try:
            i, slot, n, err = self.conns[w].recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"the batch reader process stopped (exit code {self.procs[w].exitcode})") from e
        assert (i, slot) == (want, want_slot), "reader replies out of order"
        return i, slot, n, err

    def _top_up(self):
        while self.free:
            self._submit(self._next(self.last))

    def _next(self, i):  # BatchSource.next_index
        return i + 1 if self.shuffle else (i + 1) % self.steps

    def get(self, i: int):
        with self.lock:
            if not any(j == i for j, _, _ in self.inflight):  # out of sequence: restart at i
                while self.inflight:
                    self.free.append(self._receive()[1])
                self._submit(i)
            while True:
                j, slot, n, err = self._receive()
                if j == i:
                    break
                self.free.append(slot)  # a batch nobody asked for any more
            try:
                self._top_up()
                if err is not None:
                    exc, text = err
                    if isinstance(exc, Exception):
                        raise exc
                    raise RuntimeError(f"batch reader process failed:\n{text}")
                v = self.views[slot]
                x = v["x"][:n].copy()
                if "mask" in v or "cell" in v or "hint" in v:
                    x = {"intensity": x}
                    for k in ("mask", "cell", "hint"):
                        if k in v:
                            x[k] = v[k][:n].copy()
                if "y" not in v:
                    return x, (x["intensity"] if isinstance(x, dict) else x)
                return x, v["y"][:n].copy()
            finally:
                self.free.append(slot)
                if len(self.free) == 1 and self.last is not None:
                    self._submit(self._next(self.last))

    def close(self):
        self._finalizer()


def start_reader(src, first_batch: int = 0, workers: int = 1) -> _ProcessReader:
    """Reader processes for any batch source with ``compute_batch(i)`` (picklable, with
    ``batch_size``, ``n_reflections``, ``task``, ``cell_input``, ``shuffle``,
    ``steps_per_epoch`` and optionally ``input_mask``): ``.get(i)`` returns batch i."""
    return _ProcessReader(src, first_batch, workers)


def keras_dataset(source: BatchSource, start_batch: int = 0):
    """Wrap a BatchSource as a ``keras.utils.PyDataset``.

    Training (shuffled) sources are endless: Keras asks for batch i = 0, 1, ... across
    epochs (``steps_per_epoch`` given to fit); ``start_batch`` (= initial epoch × steps)
    makes a resumed run continue the same stream.
    """
    import keras

    source.start(start_batch if source.shuffle else 0)  # the reader starts while Keras sets up

    class _Dataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.source = source

        @property
        def num_batches(self):
            return None if source.shuffle else source.steps_per_epoch

        def __len__(self):
            return source.steps_per_epoch

        def __getitem__(self, i):
            return source.batch(start_batch + int(i) if source.shuffle else int(i))

    return _Dataset()
