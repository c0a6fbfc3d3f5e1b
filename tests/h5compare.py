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


def assert_same_arrays(a: dict, b: dict, skip=()):
    """The same dataset names, and every array equal in dtype, shape and values (NaN = NaN)."""
    assert sorted(a) == sorted(b)
    for name in a:
        if name in skip:
            continue
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
