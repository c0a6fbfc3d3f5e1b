"""The README's promises about `phasenet train` that the other training tests leave out:
`--member`, `--list-members`, `--compare`, `data.max_train`, `output.keep_checkpoints`."""

import phasenet  # noqa: F401  (first: cctbx import order)

import h5py
import numpy as np
import pandas as pd
import pytest

from phasenet.training.config import load_config
from phasenet.training.run import prepare_run
from tests.training_helpers import REPO, run_phasenet

DEMO = REPO / "training" / "demo.toml"
PNG = b"\x89PNG\r\n\x1a\n"

SWEEP = """
[run]
name = "tiny-sweep"
seed = 0
epochs = 3
batch_size = 8

[data]
task = "sign"
r2_max = 50

[model]
depth = 1
dropout = 0.0

[output]
tensorboard = false

[sweep]
"model.width" = [8, 16]
"""


def _train_rows(dataset, **overrides):
    cfg = load_config(DEMO, [("data.r2_max", 50), *overrides.items()])
    _, train_rows, test_rows = prepare_run(cfg, dataset)
    return train_rows, test_rows


def test_max_train_is_a_seeded_subset(dataset):
    """data.max_train: a random subset of that size of the training structures, the same
    for the same run.seed, another for another seed; the test split is untouched."""
    all_train, all_test = _train_rows(dataset)
    with h5py.File(dataset, "r") as h5:
        split = h5["structures/split"].asstr()[:]
        centric = h5["structures/centric_origin"][:].astype(bool)
    assert np.array_equal(all_train, np.flatnonzero((split == "train") & centric))
    a, test_a = _train_rows(dataset, **{"data.max_train": 10})
    b, _ = _train_rows(dataset, **{"data.max_train": 10})
    c, _ = _train_rows(dataset, **{"data.max_train": 10, "run.seed": 1})
    assert len(a) == 10 and set(a) <= set(all_train) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(test_a, all_test)
    more, _ = _train_rows(dataset, **{"data.max_train": 10**6})  # larger than the split: all of it
    assert np.array_equal(more, all_train)


@pytest.mark.slow
def test_member_compare_list_members_and_keep_checkpoints(dataset, tmp_path):
    """A 2-member sweep: --list-members prints index, folder, label; --member 1 trains only
    member 1 in its own folder (with data.max_train and output.keep_checkpoints = 2: the
    last two epoch checkpoints kept); --compare only draws sweep_comparison.png."""
    pytest.importorskip("keras")
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP)
    out = tmp_path / "runs"
    r = run_phasenet(["train", config, "--list-members"], "jax")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["0\t00-width=8\twidth=8", "1\t01-width=16\twidth=16"]

    assert run_phasenet(["train", config, "--out", out, "--compare"], "jax").returncode == 2  # nothing yet
    r = run_phasenet(["train", config, "--data", dataset, "--out", out, "--member", "1", "--quiet",
                      "--set", "data.max_train=16", "--set", "output.keep_checkpoints=2"], "jax")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    member = out / "01-width=16"
    assert sorted(p.name for p in out.iterdir()) == ["01-width=16", "sweep_comparison.png"]
    assert "width = 16" in (member / "config.toml").read_text()
    assert list(pd.read_csv(member / "history.csv")["epoch"]) == [1, 2, 3]
    assert "16 train / " in r.stdout
    assert sorted(p.name for p in (member / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    (out / "sweep_comparison.png").unlink()
    r = run_phasenet(["train", config, "--out", out, "--compare"], "jax")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "sweep_comparison.png").read_bytes()[:8] == PNG
    assert "comparison of 1 member(s)" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["01-width=16", "sweep_comparison.png"]  # nothing trained
    r = run_phasenet(["train", config, "--data", dataset, "--out", out, "--member", "2"], "jax")
    assert r.returncode == 2 and "members 0..1" in r.stderr
