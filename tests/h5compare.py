"""Reading and comparing whole HDF5 datasets in tests (build, shards, synth, Slurm)."""

import h5py
import numpy as np


def _plain(v):
    return v.tolist() if hasattr(v, "tolist") else v


def read_h5(path):
    """``({name: array} of every dataset, {name: attrs} of every object, root as "/")``."""
    data, attrs = {}, {}

    def visit(name, obj):
        attrs[name] = {k: _plain(v) for k, v in obj.attrs.items()}
        if isinstance(obj, h5py.Dataset):
            data[name] = obj[...]

    with h5py.File(path, "r") as h5:
        attrs["/"] = {k: _plain(v) for k, v in h5.attrs.items()}
        h5.visititems(visit)
    return data, attrs


def assert_same_arrays(a: dict, b: dict, skip=(), close=None):
    """The same dataset names, and every array equal in dtype, shape and values (NaN = NaN);
    ``close``: {name: tolerance} for arrays compared to that fraction of each row's largest
    magnitude instead (sums whose float rounding may differ between two code paths)."""
    assert sorted(a) == sorted(b)
    for name in a:
        if name in skip:
            continue
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if close and name in close:
            scale = np.nanmax(np.abs(x), axis=-1, keepdims=True)
            diff = np.nanmax(np.abs(x.astype(float) - y.astype(float)) / np.where(scale > 0, scale, 1))
            assert diff <= close[name], f"{name}: differs by {diff:.1e} of the row's largest"
            continue
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
