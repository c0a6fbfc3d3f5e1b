"""Sharded builds and their merge (no Slurm needed), and `phasenet slurm ... --dry-run`."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import shlex
import shutil

import h5py
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.pipeline.build import BuildError
from phasenet.cli import main
from phasenet.pipeline.demo import write_random_cifs
from phasenet.pipeline.shards import ShardError, check_shards, merge_shards, shard_file_name
from h5compare import assert_same_arrays, read_h5

N_SHARDS = 3


def assert_same_dataset(merged, single):
    """Every array, column and attribute equal (the merge adds only shard provenance)."""
    a, a_attrs = read_h5(merged)
    b, b_attrs = read_h5(single)
    assert_same_arrays(a, b)
    root_a, root_b = a_attrs.pop("/"), b_attrs.pop("/")
    assert a_attrs.keys() == b_attrs.keys()
    for name in b_attrs:
        assert {k: str(v) for k, v in a_attrs[name].items()} == {k: str(v) for k, v in b_attrs[name].items()}, name
    assert set(root_a) - set(root_b) == {"inputs_fingerprint", "merged_shards"}
    for k in root_b:
        assert str(root_a[k]) == str(root_b[k]), k
    assert json.loads(root_a["failures"]) == json.loads(root_b["failures"])


@pytest.fixture(scope="module")
def cif_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifs")
    write_random_cifs(folder, 10, seed=7)
    (folder / "broken_0005b.cif").write_text("data_broken\n_cell_length_a 5\n")  # fails: no cell
    return folder


@pytest.fixture(scope="module")
def shards(cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    opts = BuildOptions(workers=1, normalisation="max")
    for i in range(N_SHARDS):
        build_dataset([cif_dir], out / shard_file_name(i), opts, progress=False, shard=(i, N_SHARDS))
    return out


@pytest.fixture(scope="module")
def single(cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.h5"
    build_dataset([cif_dir], out, BuildOptions(workers=1, normalisation="max"), progress=False)
    return out


def test_shards_are_contiguous_slices_with_metadata(shards, single):
    with h5py.File(single, "r") as h5:
        ids = list(h5["structures/id"].asstr()[...])
    got, fps = [], set()
    for i in range(N_SHARDS):
        with h5py.File(shards / shard_file_name(i), "r") as h5:
            assert (h5.attrs["shard_index"], h5.attrs["shard_count"]) == (i, N_SHARDS)
            assert h5.attrs["n_inputs_total"] == 11
            fps.add(h5.attrs["inputs_fingerprint"])
            got += list(h5["structures/id"].asstr()[...])
    assert got == ids
    assert len(fps) == 1


def test_merge_equals_single_process_build(shards, single, tmp_path):
    out = tmp_path / "merged.h5"
    result = merge_shards([shards], out)
    assert result["n_shards"] == N_SHARDS
    assert result["n_failures"] == 1 and "broken_0005b.cif" in result["failures"][0]["source"]
    assert_same_dataset(out, single)
    assert not (tmp_path / "merged.h5.tmp").exists()


def test_merge_order_does_not_depend_on_argument_order(shards, single, tmp_path):
    files = [shards / shard_file_name(i) for i in reversed(range(N_SHARDS))]
    merge_shards(files, tmp_path / "m.h5")
    assert_same_dataset(tmp_path / "m.h5", single)


def test_missing_shard_is_named(shards, tmp_path):
    files = [shards / shard_file_name(i) for i in (0, 2)]
    with pytest.raises(ShardError, match=r"missing shard\(s\) 1 of 3"):
        merge_shards(files, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_duplicate_shard_is_named(shards, tmp_path):
    copy = tmp_path / "copy-of-0.h5"
    shutil.copy(shards / shard_file_name(0), copy)
    with pytest.raises(ShardError, match=r"duplicate shard 0/3: .*copy-of-0.h5"):
        check_shards([shards, copy])


def test_mismatched_options_are_named(cif_dir, shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    odd = other / shard_file_name(1)
    odd.unlink()
    build_dataset([cif_dir], odd, BuildOptions(workers=1, normalisation="max", r2_max=50),
                  progress=False, shard=(1, N_SHARDS))
    with pytest.raises(ShardError, match=r"shard-0001.h5: build_options differs"):
        merge_shards([other], tmp_path / "m.h5")


def test_shards_of_other_inputs_or_counts_are_refused(cif_dir, shards, tmp_path):
    other = tmp_path / "four"
    build_dataset([cif_dir], other / "s.h5", BuildOptions(workers=1, normalisation="max"),
                  progress=False, shard=(0, 4))
    with pytest.raises(ShardError, match="belongs to a set of 4"):
        check_shards([shards / shard_file_name(0), shards / shard_file_name(1),
                      shards / shard_file_name(2), other / "s.h5"])
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for p in sorted(cif_dir.glob("*.cif"))[:-1]:
        shutil.copy(p, fewer)
    build_dataset([fewer], tmp_path / "f.h5", BuildOptions(workers=1, normalisation="max"),
                  progress=False, shard=(1, N_SHARDS))
    with pytest.raises(ShardError, match="built from other inputs"):
        check_shards([shards / shard_file_name(0), tmp_path / "f.h5"])


def test_a_plain_dataset_is_not_a_shard(single, tmp_path):
    with pytest.raises(ShardError, match=r"single.h5: not a shard"):
        check_shards([single])
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ShardError, match=r"bad.h5: not a readable HDF5 file"):
        check_shards([bad])
    with pytest.raises(ShardError, match=r"nothere.h5: shard file not found"):
        check_shards([tmp_path / "nothere.h5"])


def test_empty_shard_is_an_error(cif_dir, tmp_path):
    with pytest.raises(BuildError, match="shard 0/12 of 11 inputs is empty"):
        build_dataset([cif_dir], tmp_path / "e.h5", BuildOptions(workers=1), progress=False, shard=(0, 12))


def test_cli_build_shard_and_merge(cif_dir, single, tmp_path, capsys):
    codes = [main(["build", str(cif_dir), "-o", str(tmp_path / "s" / shard_file_name(i)), "--shard",
                   f"{i}/2", "--normalisation", "max", "--workers", "1", "--quiet"]) for i in range(2)]
    assert codes == [1, 0]  # shard 0 holds the broken file: reported, the shard still written
    rc = main(["merge", str(tmp_path / "s"), "-o", str(tmp_path / "m.h5")])
    assert rc == 1
    assert "merged 2 shards" in capsys.readouterr().out
    assert_same_dataset(tmp_path / "m.h5", single)
    rc = main(["merge", str(tmp_path / "s" / shard_file_name(0)), "-o", str(tmp_path / "m2.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing shard(s) 1 of 2" in err
    assert main(["build", str(cif_dir), "-o", str(tmp_path / "x.h5"), "--shard", "2/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err


# --- phasenet slurm --dry-run: the sbatch command lines, no Slurm needed -------------------


def _dry(argv, capsys, monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, [shlex.split(line) for line in out.splitlines() if line.startswith("sbatch ")], out, err


def test_dry_run_build_prints_array_and_dependent_merge(cif_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "real.h5"
    rc, cmds, text, err = _dry(["slurm", "build", str(cif_dir), "-o", str(out), "--shards", "3",
                                "--r2-max", "50", "--partition", "short", "--time", "00:30:00",
                                "--sbatch-arg=--constraint=avx2", "--dry-run"],
                               capsys, monkeypatch, PHASENET_ACCOUNT="proj-x", PHASENET_LOG_DIR=str(tmp_path / "logs"))
    assert rc == 0, err
    assert len(cmds) == 2
    array, merge = cmds
    assert array[:2] == ["sbatch", "--parsable"]
    for opt in ("--array=0-2", "--partition=short", "--account=proj-x", "--time=00:30:00",
                "--constraint=avx2", "--job-name=phasenet-build", "--signal=B:USR1@300",
                f"--output={tmp_path / 'logs'}/phasenet-build-%A_%a.out"):
        assert opt in array, opt
    i = next(k for k, a in enumerate(array) if a.endswith("slurm/build-array.sbatch"))
    assert array[i + 1:] == ["3", f"{out}.shards", "build", str(cif_dir), "--r2-max", "50"]
    assert "--dependency=afterok:<shards job id>" in merge
    assert merge[-2:] == [str(out), f"{out}.shards"]
    assert merge[-3].endswith("slurm/merge.sbatch")
    assert "--account=proj-x" in merge and "--cpus-per-task=1" in merge
    assert not (tmp_path / "real.h5.slurm.json").exists()  # nothing submitted, no state


def test_dry_run_refuses_bad_requests(cif_dir, tmp_path, capsys, monkeypatch):
    rc, _, _, err = _dry(["slurm", "build", str(cif_dir), "-o", str(tmp_path / "o.h5"), "--shards", "50",
                          "--dry-run"], capsys, monkeypatch)
    assert rc == 2 and "--shards 50 > 11 input files" in err
    rc, _, _, err = _dry(["slurm", "build", str(tmp_path / "nope"), "-o", str(tmp_path / "o.h5"),
                          "--shards", "2", "--dry-run"], capsys, monkeypatch)
    assert rc == 2 and "input not found" in err
    rc, _, _, err = _dry(["slurm", "build", str(cif_dir), "-o", str(tmp_path / "o.h5"), "--shards", "2",
                          "--test-fraction", "2", "--dry-run"], capsys, monkeypatch)
    assert rc == 2 and "test_fraction" in err


def test_dry_run_train_asks_for_gpus(tmp_path, capsys, monkeypatch):
    from tests.conftest import REPO_ROOT

    config = REPO_ROOT / "training" / "demo.toml"
    if not config.is_file():
        pytest.skip("training/demo.toml not found")
    rc, cmds, _, err = _dry(["slurm", "train", str(config), "--data", "d.h5", "--out", str(tmp_path / "run"),
                             "--epochs", "3", "--gpus", "2", "--dry-run"], capsys, monkeypatch,
                            PHASENET_GPU_PARTITION="gpu", PHASENET_GPU_TYPE="a100")
    assert rc == 0, err
    (cmd,) = cmds
    assert "--gpus-per-node=a100:2" in cmd and "--partition=gpu" in cmd
    i = next(k for k, a in enumerate(cmd) if a.endswith("slurm/train.sbatch"))
    assert cmd[i + 1:] == [str(config), "--data", "d.h5", "--out", str(tmp_path / "run"), "--epochs", "3"]
