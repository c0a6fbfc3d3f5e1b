"""The HDF5 batch stream: chunk reader, reader process, determinism, resume, cleanup."""

import phasenet  # noqa: F401  (first: cctbx import order)

import gc
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from phasenet.training.data import BatchSource, keras_dataset, read_rows, read_rows_fast
from tests.training_helpers import REPO, stream_config


_cfg = stream_config


def _expected(dataset, src, i):
    """Batch i computed directly from the whole file in memory, in the source's order."""
    with h5py.File(dataset) as h5:
        rows = src.batch_rows(i)
        x = np.nan_to_num(h5["intensity"][...][rows].astype(np.float32))
        sign = h5["sign"][...][rows].astype(np.float32)
        calc = np.nan_to_num(h5["intensity_calc"][...][rows].astype(np.float32))
        cell = h5["structures/cell"][...][rows]
    return x, sign, calc, cell


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _no_children(timeout=10.0):
    end = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    return not multiprocessing.active_children()


# ---- the chunk reader ------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["lzf", "gzip", None])
def test_read_rows_fast_equals_read_rows(tmp_path, compression):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        kw = dict(chunks=(1, 300), compression=compression)
        noise = rng.normal(size=(40, 300)).astype(np.float32)  # incompressible: stored raw
        smooth = np.repeat(rng.normal(size=(40, 30)), 10, axis=1).astype(np.float32)  # compresses
        smooth[3, :50] = np.nan
        h5.create_dataset("noise", data=noise, **kw)
        h5.create_dataset("smooth", data=smooth, **kw)
        h5.create_dataset("sign", data=rng.integers(-1, 2, (40, 300)).astype(np.int8), **kw)
        h5.create_dataset("blocks", data=noise, chunks=(4, 300), compression=compression)  # fallback
        h5.create_dataset("unwritten", shape=(40, 300), dtype=np.float32, chunks=(1, 300),
                          fillvalue=-1.0, compression=compression)
        h5["unwritten"][5] = noise[5]
    idx = np.array([0, 1, 2, 3, 7, 20, 21, 39])
    with h5py.File(path) as h5:
        if compression == "lzf":  # both kinds of chunk occur: the lzf path is exercised
            assert h5["smooth"].id.get_chunk_info(0).size < 1200
            assert h5["noise"].id.get_chunk_info(0).filter_mask == 1
        for k in h5:
            got = read_rows_fast(h5[k], idx)
            assert got.dtype == h5[k].dtype
            assert np.array_equal(got, read_rows(h5[k], idx), equal_nan=k != "sign"), k
        assert read_rows_fast(h5["noise"], np.array([], int)).shape == (0, 300)


def test_chunk_map_reads_rows_from_the_memory_map(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.h5"
    noise = rng.normal(size=(30, 200)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        for name, comp in (("lzf", "lzf"), ("raw", None)):
            ds = h5.create_dataset(name, shape=(30, 200), dtype=np.float32, chunks=(1, 200),
                                   compression=comp, fillvalue=7.0)
            ds[:20] = noise[:20]
            ds[20:25] = 0.5  # compressible rows (lzf applied)
        h5.create_dataset("gzip", data=noise, chunks=(1, 200), compression="gzip")
    from phasenet.training.data import ChunkMap, _lzf

    assert _lzf() is not None
    mem = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    idx = np.array([29, 0, 3, 4, 21, 22, 26, 19])  # any order; 26, 29: never written
    with h5py.File(path) as h5:
        info = h5["lzf"].id.get_chunk_info_by_coord
        assert info((21, 0)).filter_mask == 0 and info((0, 0)).filter_mask == 1  # both kinds
        for name in ("lzf", "raw"):
            m = ChunkMap(h5[name], mem)
            assert m.ok
            want = np.stack([h5[name][int(r)] for r in idx])
            assert np.array_equal(m.read(idx), want)
            assert (want[0] == 7.0).all() and (want[4] == 0.5).all()
        assert ChunkMap(h5["gzip"], mem).read(idx) is None  # not mapped: HDF5 reads it
        # rows stored raw back to back are gathered from 2-D views of the file (runs);
        # sorted requests use them, mixed with kernel rows (compressed, unwritten)
        for name in ("lzf", "raw"):
            m = ChunkMap(h5[name], mem)
            assert m.runs and all(r1 - r0 >= 8 for r0, r1, _ in m.runs)
            srt = np.array([0, 1, 5, 12, 19, 21, 22, 26, 29])
            out = np.full((len(srt), 200), -1.0, np.float32)
            assert m.read(srt, out) is out
            assert np.array_equal(out, np.stack([h5[name][int(r)] for r in srt]))


# ---- the reader process ----------------------------------------------------------------
def test_process_batches_equal_direct_computation(dataset):
    src = BatchSource(dataset, _cfg(), "train", shuffle=True)
    assert src.use_process
    try:
        steps = src.steps_per_epoch
        for i in list(range(2 * steps + 1)) + [5 * steps + 3, 1, 0]:  # in order, then jumps
            x, y = src.batch(i)
            ex, sign, calc, _ = _expected(dataset, src, i)
            assert x.dtype == y.dtype == np.float32
            assert np.array_equal(x, ex)
            assert np.array_equal(y, np.stack([sign, ex, calc], axis=-1))
        assert src._reader is not None and src._reader.proc.is_alive()
    finally:
        src.close()
    assert _no_children()


def test_process_autoencoder_with_cell_and_test_split(dataset):
    cfg = _cfg(task="autoencoder", cell_input=True)
    src = BatchSource(dataset, cfg, "test", shuffle=False)
    local = BatchSource(dataset, _cfg(task="autoencoder", cell_input=True, prefetch=False),
                        "test", shuffle=False)
    assert not local.use_process
    try:
        assert src.n % 8  # the last batch is short
        seen = []
        for _ in range(2):  # two passes: the reader wraps around to batch 0
            for i in range(src.steps_per_epoch):
                x, y = src.batch(i)
                assert _same(x, local.batch(i)[0]) and y is x["intensity"]
                ex, _, _, cell = _expected(dataset, src, i)
                assert np.array_equal(x["intensity"], ex)
                assert np.allclose(x["cell"][:, :3], cell[:, :3] / 10)
                seen.append(src.batch_rows(i))
        rows = np.concatenate(seen)
        assert np.array_equal(rows, np.concatenate([src.rows, src.rows]))  # file order, every row
    finally:
        src.close()
        local.close()
    assert _no_children()


def test_same_seed_same_batches_whatever_the_prefetch(dataset):
    srcs = [BatchSource(dataset, _cfg(), "train", shuffle=True),
            BatchSource(dataset, _cfg(), "train", shuffle=True),
            BatchSource(dataset, _cfg(prefetch=False), "train", shuffle=True),
            BatchSource(dataset, _cfg(in_memory=True), "train", shuffle=True)]
    other = BatchSource(dataset, _cfg(seed=5), "train", shuffle=True)
    try:
        n = 3 * srcs[0].steps_per_epoch
        ref = [srcs[0].batch(i) for i in range(n)]
        for s in srcs[1:]:
            for i in range(n):
                got = s.batch(i)
                assert _same(got[0], ref[i][0]) and _same(got[1], ref[i][1]), (s.cfg.data, i)
        assert not all(np.array_equal(other.batch(i)[0], ref[i][0]) for i in range(n))
    finally:
        for s in srcs + [other]:
            s.close()
    assert _no_children()


def test_resume_from_a_batch_index_gives_the_same_stream(dataset):
    full = BatchSource(dataset, _cfg(), "train", shuffle=True)
    steps = full.steps_per_epoch
    start = 2 * steps  # a resumed run starts at epoch 2
    try:
        ref = [full.batch(i) for i in range(start + 2 * steps)]
        for start_at in (start, start + 3):  # an epoch boundary, and mid-epoch
            resumed = BatchSource(dataset, _cfg(), "train", shuffle=True)
            try:
                ds = keras_dataset(resumed, start_batch=start_at)
                for j in range(start + 2 * steps - start_at):
                    x, y = ds[j]
                    assert _same(x, ref[start_at + j][0]) and _same(y, ref[start_at + j][1])
            finally:
                resumed.close()
    finally:
        full.close()
    assert _no_children()


def test_reader_errors_reach_the_caller(dataset):
    good = BatchSource(dataset, _cfg(), "train", shuffle=True)
    rows = np.concatenate([good.rows, [10**6]])  # a row beyond the end of the file
    good.close()
    local = BatchSource(dataset, _cfg(prefetch=False), "train", shuffle=True, rows=rows)
    with pytest.raises(Exception) as want:  # the first batch that needs the bad row's window
        for bad in range(local.steps_per_epoch):
            local.batch(bad)
    fine = None
    for j in range(local.steps_per_epoch, 4 * local.steps_per_epoch):
        try:
            fine = j, local.batch(j)
            break
        except Exception:  # noqa: BLE001
            pass
    local.close()
    src = BatchSource(dataset, _cfg(), "train", shuffle=True, rows=rows)
    try:
        with pytest.raises(want.type, match=re.escape(str(want.value)[:20])):
            for i in range(bad + 1):
                src.batch(i)
        assert i == bad
        assert src._reader.proc.is_alive()  # the reader survives a failed batch
        j, want_batch = fine
        assert _same(src.batch(j)[1], want_batch[1])  # and goes on with others
    finally:
        src.close()
    assert _no_children()


# ---- cleanup -----------------------------------------------------------------------------
def test_close_and_garbage_collection_leave_no_process(dataset):
    with BatchSource(dataset, _cfg(), "train", shuffle=True) as src:
        src.batch(0)
        proc = src._reader.proc
        assert proc in multiprocessing.active_children()
    assert not proc.is_alive() and _no_children()
    src.close()  # twice is fine
    src = BatchSource(dataset, _cfg(), "train", shuffle=True)
    src.batch(0)
    proc = src._reader.proc
    del src
    gc.collect()
    proc.join(10)
    assert not proc.is_alive() and _no_children()


SCRIPT = """
import phasenet, sys
from phasenet.training.data import BatchSource
from tests.training_helpers import stream_config
if __name__ == "__main__":
    src = BatchSource(sys.argv[1], stream_config(), "train", shuffle=True)
    src.batch(0)
    print(src._reader.proc.pid, flush=True)
    import threading
    threading.Event().wait()  # blocks until killed: the kill always lands here
"""


def test_reader_exits_when_the_training_process_is_killed(dataset, tmp_path):
    script = tmp_path / "train_like.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, str(script), str(dataset)], stdout=subprocess.PIPE,
                         text=True, env=env, cwd=REPO)
    try:
        child = int(p.stdout.readline())
        os.kill(child, 0)  # alive
        p.send_signal(signal.SIGKILL)
        p.wait(60)
        end = time.monotonic() + 60  # a deadline against hanging, not a speed requirement
        while time.monotonic() < end:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with open(f"/proc/{child}/stat") as f:  # an unreaped zombie has exited too
                assert f.read().split()[2] == "Z", "the reader outlived the training process"
    finally:
        if p.poll() is None:
            p.kill()
