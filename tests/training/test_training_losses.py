"""Sign loss and metrics against numpy, origin invariance, and the HDF5 batch stream."""

import phasenet  # noqa: F401  (first: cctbx import order)

import shutil

import h5py
import numpy as np
import pytest

from phasenet.reflections import canonical_hkl, origin_sign_flips
from tests.training_helpers import stream_config

keras = pytest.importorskip("keras")

from phasenet.training import losses  # noqa: E402
from phasenet.training.data import BatchSource, DataMismatchError, read_rows  # noqa: E402

R2 = 10  # a small reflection set: canonical_hkl(10, r2_max=10)
HKL = canonical_hkl(10, R2)
FLIPS = origin_sign_flips(HKL).astype(np.float64)  # (8, R)


def _weights(i, weight):
    return {"intensity": np.maximum(i, 0), "exp_intensity": np.exp(np.minimum(i, 50)),
            "uniform": np.ones_like(i)}[weight]


def ref_loss_per_origin(sign, i, z, weight):
    """(B, 8) weighted BCE per structure at each origin, straight from the definition."""
    p = 1 / (1 + np.exp(-z))
    w = _weights(i, weight) * (sign >= 0)
    out = np.zeros((len(sign), 8))
    for t in range(8):
        s_t = np.where(FLIPS[t] > 0, sign, 1 - sign)
        bce = -(s_t * np.log(p) + (1 - s_t) * np.log(1 - p))
        bce = np.where(sign >= 0, bce, 0.0)
        out[:, t] = (w * bce).sum(1) / w.sum(1)
    return out


def ref_agreement_per_origin(sign, w, z):
    w = w * (sign >= 0)
    pred = (z > 0).astype(float)
    out = np.zeros((len(sign), 8))
    for t in range(8):
        s_t = np.where(FLIPS[t] > 0, sign, 1 - sign)
        out[:, t] = (w * (pred == s_t)).sum(1) / w.sum(1)
    return out


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    b, r = 5, len(HKL)
    sign = rng.integers(0, 2, (b, r)).astype(np.float64)
    sign[rng.random((b, r)) < 0.2] = -1  # unlabelled reflections
    i_in = rng.exponential(1.0, (b, r))
    i_calc = 3.0 * i_in  # proportional, as for a max-normalised input
    z = rng.normal(0, 2, (b, r))
    y = np.stack([sign, i_in, i_calc], -1).astype(np.float32)
    return sign, i_in, i_calc, z.astype(np.float32), y


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize("weight", ["intensity", "exp_intensity", "uniform"])
def test_loss_matches_numpy_fixed_and_invariant(batch, weight):
    sign, i_in, _, z, y = batch
    ref = ref_loss_per_origin(sign, i_in, z.astype(np.float64), weight)
    fixed = losses.SignLoss(weight, "fixed", 10, R2)
    inv = losses.SignLoss(weight, "invariant", 10, R2)
    assert _np(fixed(y, z)) == pytest.approx(ref[:, 0].mean(), rel=1e-5)
    assert _np(inv(y, z)) == pytest.approx(ref.min(1).mean(), rel=1e-5)
    assert _np(inv(y, z)) < _np(fixed(y, z))  # the best origin is never worse


def test_unlabelled_reflections_weigh_nothing(batch):
    sign, i_in, _, z, y = batch
    loss = losses.SignLoss("intensity", "invariant", 10, R2)
    z2 = z.copy()
    z2[sign < 0] = np.random.default_rng(0).normal(0, 10, (sign < 0).sum())  # change only unlabelled
    assert _np(loss(y, z2)) == pytest.approx(_np(loss(y, z)), rel=1e-6)
    m = losses.SignMetric("accuracy", False, "intensity", 10, R2)
    m.update_state(y, z)
    a = _np(m.result())
    m.reset_state()
    m.update_state(y, z2)
    assert _np(m.result()) == pytest.approx(a, rel=1e-6)


def test_metrics_match_numpy(batch):
    sign, i_in, i_calc, z, y = batch
    z64 = z.astype(np.float64)
    refs = {"weighted_accuracy": ref_agreement_per_origin(sign, i_in, z64),
            "accuracy": ref_agreement_per_origin(sign, np.ones_like(i_in), z64),
            "map_corr": 2 * ref_agreement_per_origin(sign, i_calc, z64) - 1}
    for m in losses.sign_metrics("intensity", 10, R2):
        m.update_state(y, z)
        ref = refs[m.kind]
        want = (ref.max(1) if m.best_origin else ref[:, 0]).mean()
        assert _np(m.result()) == pytest.approx(want, rel=1e-5), m.name
    # map correlation is 2 * (intensity-weighted accuracy) - 1 when weights ∝ |F|²
    wa = losses.SignMetric("weighted_accuracy", False, "intensity", 10, R2)
    mc = losses.SignMetric("map_corr", False, "intensity", 10, R2)
    for m in (wa, mc):
        m.update_state(y, z)
    assert _np(mc.result()) == pytest.approx(2 * _np(wa.result()) - 1, abs=1e-5)


@pytest.mark.parametrize("t", range(8))
def test_origin_shift_leaves_invariant_loss_and_metrics_unchanged(batch, t):
    """Moving every structure's origin by t flips the parity classes of its labels."""
    sign, i_in, i_calc, z, y = batch
    shifted = np.where(FLIPS[t] > 0, sign, np.where(sign >= 0, 1 - sign, -1))
    y_t = np.stack([shifted, i_in, i_calc], -1).astype(np.float32)
    inv = losses.SignLoss("intensity", "invariant", 10, R2)
    fixed = losses.SignLoss("intensity", "fixed", 10, R2)
    assert _np(inv(y_t, z)) == pytest.approx(_np(inv(y, z)), rel=1e-5)
    for m in losses.sign_metrics("intensity", 10, R2):
        m.update_state(y, z)
        before = _np(m.result())
        m.reset_state()
        m.update_state(y_t, z)
        if m.best_origin:
            assert _np(m.result()) == pytest.approx(before, abs=1e-6), m.name
        elif t:
            assert _np(m.result()) != pytest.approx(before, abs=1e-6), m.name
    if t:
        assert _np(fixed(y_t, z)) != pytest.approx(_np(fixed(y, z)), rel=1e-4)


def test_flips_match_phases_recomputed_from_shifted_atoms():
    """The label flip used above is what moving the atoms by t does to F(h)."""
    rng = np.random.default_rng(0)
    xyz = rng.random((7, 3))
    hkl = HKL.astype(np.float64)

    def f(frac):  # centrosymmetric: atoms at ±x, point scatterers
        return np.cos(2 * np.pi * hkl @ frac.T).sum(1)

    for t, two_t in enumerate(np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])):
        moved = f(xyz + two_t / 2.0)
        assert np.allclose(moved, FLIPS[t] * f(xyz))


# ---- the batch stream -----------------------------------------------------------------
_cfg = stream_config


def test_stream_visits_every_row_once_per_epoch_in_a_seeded_order(dataset):
    src = BatchSource(dataset, _cfg(), "train", shuffle=True)
    steps = src.steps_per_epoch
    e0 = np.concatenate([src.batch_rows(i) for i in range(steps)])
    e1 = np.concatenate([src.batch_rows(i) for i in range(steps, 2 * steps)])
    assert len(set(e0)) == len(e0) == steps * 8 and set(e0) <= set(src.rows)
    assert not np.array_equal(e0, e1)  # reshuffled each epoch
    again = BatchSource(dataset, _cfg(), "train", shuffle=True)
    assert np.array_equal(again.batch_rows(steps + 1), src.batch_rows(steps + 1))  # resumable
    other = BatchSource(dataset, _cfg(), "train", shuffle=True)
    other.seed = 5
    assert not np.array_equal(np.concatenate([other.batch_rows(i) for i in range(steps)]), e0)
    # batches hold exactly the rows they name
    x, y = src.batch(steps + 1)
    with h5py.File(dataset) as h5:
        rows = src.batch_rows(steps + 1)
        want = np.stack([h5["intensity"][r] for r in rows])
        assert np.allclose(x, np.nan_to_num(want))
        assert np.array_equal(y[..., 0], np.stack([h5["sign"][r] for r in rows]).astype(np.float32))
    test = BatchSource(dataset, _cfg(), "test", shuffle=False)
    assert sum(len(test.batch_rows(i)) for i in range(test.steps_per_epoch)) == test.n
    for s in (src, again, other, test):
        s.close()


def test_streaming_equals_in_memory(dataset):
    a = BatchSource(dataset, _cfg(), "train", shuffle=True)
    b = BatchSource(dataset, _cfg(in_memory=True), "train", shuffle=True)
    for i in (0, 3, a.steps_per_epoch + 2):
        (xa, ya), (xb, yb) = a.batch(i), b.batch(i)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    a.close()
    b.close()


def test_read_rows_reads_runs(dataset):
    with h5py.File(dataset) as h5:
        idx = np.array([0, 1, 2, 7, 9, 10])
        assert np.array_equal(read_rows(h5["sign"], idx), h5["sign"][...][idx])


def test_dataset_mismatch_errors(dataset, tmp_path):
    with pytest.raises(DataMismatchError, match=r"709 reflections.*expects 4630.*data.r2_max = 0"):
        BatchSource(dataset, _cfg(r2_max=0), "train", shuffle=True)
    with pytest.raises(DataMismatchError, match="normalisation 'max'.*data.normalisation"):
        BatchSource(dataset, _cfg(normalisation="wilson"), "train", shuffle=True)
    no_labels = tmp_path / "no_labels.h5"
    shutil.copy(dataset, no_labels)
    with h5py.File(no_labels, "r+") as h5:
        h5["sign"][...] = -1
    with pytest.raises(DataMismatchError, match="no sign labels"):
        BatchSource(no_labels, _cfg(), "train", shuffle=True)
    with h5py.File(no_labels, "r+") as h5:
        h5["structures/centric_origin"][...] = False
    with pytest.raises(DataMismatchError, match="none of the .* train structures has sign labels"):
        BatchSource(no_labels, _cfg(), "train", shuffle=True)
    BatchSource(no_labels, _cfg(task="autoencoder"), "train", shuffle=True).close()  # fine for AE
