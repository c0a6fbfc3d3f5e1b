"""Batches streamed from the HDF5 dataset; never the whole file in memory.

Rows (structures) of one split are cut into blocks of ``block_rows`` consecutive
rows. Each epoch, a generator seeded by (seed, epoch) permutes the blocks, groups
them into windows of ``shuffle_buffer`` rows, and permutes the rows inside each
window. A window is read with one contiguous read per run of consecutive rows (the
file has one chunk per structure, so nothing outside the window is decoded); the
next window is read in a background thread while the current one trains.

Batch ``i`` of the training stream is a pure function of (seed, i): the stream can
restart at any epoch and yield the same batches an uninterrupted run would (resume).

Batches: ``x`` is the model input (intensity, or {"intensity", "cell"} with cell
input); ``y`` is the target: for the sign task (B, R, 3) float32 holding, per
reflection, the sign label (1, 0 or -1 = none), the intensity the loss weights
use, and I_calc (for the map correlation); for the autoencoder, the input itself.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from phasenet.dataset import DatasetError, open_dataset
from phasenet.reflections import canonical_hkl


class DataMismatchError(DatasetError):
    """The dataset does not fit the config (reflections, labels, normalisation, split)."""


# ---- input features (shared with phasenet.predict) -----------------------------------
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
def _decode(arr):
    return np.array([x.decode() if isinstance(x, bytes) else x for x in arr], dtype=object)


def check_dataset(h5: h5py.File, cfg, path="dataset") -> np.ndarray:
    """Raise DataMismatchError unless the dataset fits ``cfg``; return the expected hkl."""
    expected = canonical_hkl(cfg.data.max_index, cfg.r2_max_or_none())
    hkl = h5["hkl"][...]
    if hkl.shape != expected.shape or not np.array_equal(hkl, expected):
        import json

        opts = json.loads(h5.attrs.get("build_options", "{}"))
        raise DataMismatchError(
            f"{path}: reflection set differs from the one the config expects: the dataset has "
            f"{len(hkl)} reflections (built with max_index {opts.get('max_index')}, r2_max "
            f"{opts.get('r2_max')}), the config expects {len(expected)} (data.max_index = "
            f"{cfg.data.max_index}, data.r2_max = {cfg.data.r2_max}; 0 = no sphere cut)")
    if cfg.data.normalisation != "any":
        import json

        norm = json.loads(h5.attrs.get("build_options", "{}")).get("normalisation")
        if norm != cfg.data.normalisation:
            raise DataMismatchError(f"{path}: built with normalisation {norm!r}, but data.normalisation "
                                    f"= {cfg.data.normalisation!r} (\"any\" accepts every dataset)")
    return expected


def select_rows(h5: h5py.File, split: str, cfg, path="dataset") -> np.ndarray:
    """Sorted row indices of ``split`` (with sign labels, for the sign task), maybe subsampled."""
    g = h5["structures"]
    splits = _decode(g["split"][...])
    mask = splits == split
    n_split = int(mask.sum())
    if n_split == 0:
        raise DataMismatchError(f"{path}: no structures in the {split!r} split "
                                f"(splits present: {sorted(set(splits))})")
    if cfg.data.task == "sign":
        mask &= g["centric_origin"][...].astype(bool)
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
        signs = read_rows(h5["sign"], np.unique(sample))
        if not (signs >= 0).any():
            raise DataMismatchError(f"{path}: the {split} structures marked as sign-labelled carry "
                                    "no sign labels (every 'sign' value is -1)")
    return rows


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
        with open_dataset(self.path) as h5:
            self.hkl = check_dataset(h5, cfg, str(self.path))
            self.rows = select_rows(h5, split, cfg, str(self.path)) if rows is None else np.asarray(rows)
            self.cell = h5["structures/cell"][...][self.rows] if self.cell_input else None
        self.n = len(self.rows)
        self.n_reflections = len(self.hkl)
        window = max(cfg.data.shuffle_buffer, self.block)
        self.window = (window // self.block) * self.block if shuffle else max(window, self.batch_size)
        if shuffle:
            self.steps_per_epoch = self.n // self.batch_size if self.n >= self.batch_size else 1
        else:
            self.steps_per_epoch = -(-self.n // self.batch_size)
        self._names = ["intensity"] + (["sign", "intensity_calc"] if self.task == "sign" else [])
        self._h5 = None
        self._lock = threading.Lock()
        self._orders: dict = {}  # epoch -> order (shared with the prefetch thread, under _lock)
        self._cache: dict = {}  # (epoch, window) -> data (main thread only)
        self._pending: dict = {}
        self._pool = ThreadPoolExecutor(1) if cfg.data.prefetch else None
        self._memory = None
        if cfg.data.in_memory:
            with open_dataset(self.path) as h5:
                self._memory = {k: read_rows(h5[k], self.rows) for k in self._names}

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
    def _file(self):
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def _read_window(self, epoch: int, w: int):
        order = self._order(epoch)
        pos = np.sort(order[w * self.window:(w + 1) * self.window])
        if self._memory is not None:
            return pos, {k: v[pos] for k, v in self._memory.items()}
        rows = self.rows[pos]
        with self._lock:  # h5py is not thread-safe across handles opened in threads
            h5 = self._file()
            data = {k: read_rows(h5[k], rows) for k in self._names}
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
            del self._cache[k]  # windows are visited in order: older ones are done
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

    def batch(self, i: int):
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def keras_dataset(source: BatchSource, start_batch: int = 0):
    """Wrap a BatchSource as a ``keras.utils.PyDataset``.

    Training (shuffled) sources are endless: Keras asks for batch i = 0, 1, ... across
    epochs (``steps_per_epoch`` given to fit); ``start_batch`` (= initial epoch × steps)
    makes a resumed run continue the same stream.
    """
    import keras

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
