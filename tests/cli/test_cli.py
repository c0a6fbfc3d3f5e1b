"""The ``phasenet`` command, called in-process through ``phasenet.cli``."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json

import pytest

from phasenet.cli import EXIT_ERROR, EXIT_FAILURES, EXIT_OK, main

GOOD = ["StructureFinder_P-1.cif", "PyXtal_NaCl.cif", "FinalCif_multi.cif", "PyXtal_gdh.cif"]
BAD = ["cod-tools_1000002-test-symop.cif", "cod-tools_2005206.cif"]


@pytest.fixture(scope="module")
def mixed_h5(real_cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mixed.h5"
    args = ["build", *[str(real_cif_dir / n) for n in GOOD + BAD], "-o", str(out),
            "--workers", "1", "--quiet"]
    assert main(args) == EXIT_FAILURES
    return out


def test_build_good_files(real_cif_dir, tmp_path, capsys):
    out = tmp_path / "good.h5"
    rc = main(["build", *[str(real_cif_dir / n) for n in GOOD], "-o", str(out), "--workers", "1",
               "--quiet", "--r2-max", "50", "--normalisation", "wilson", "--compression", "gzip"])
    text = capsys.readouterr().out
    assert rc == EXIT_OK, text
    assert out.is_file()
    assert "built 6 structures from 4 files" in text  # FinalCif_multi.cif holds 3 blocks
    assert "failed" not in text
    info = phasenet.dataset_info(out)
    assert info["n_reflections"] == 709
    assert info["build_options"]["normalisation"] == "wilson"
    assert info["build_options"]["compression"] == "gzip"


def test_build_with_failures(real_cif_dir, tmp_path, capsys):
    out = tmp_path / "mixed.h5"
    rc = main(["build", *[str(real_cif_dir / n) for n in GOOD + BAD], "-o", str(out),
               "--workers", "1", "--quiet"])
    text = capsys.readouterr().out
    assert rc == EXIT_FAILURES == 1
    assert out.is_file()  # the dataset is still written
    assert "built 6 structures from 6 files" in text
    assert "failed: 2 (bad-symmetry 1, no-symmetry 1)" in text
    for n in BAD:
        line = [ln for ln in text.splitlines() if n in ln]
        assert line and ": " in line[0], text
    assert "do not form a group" in text and "no symmetry" in text


def test_build_missing_input(tmp_path, capsys):
    rc = main(["build", str(tmp_path / "no-such.cif"), "-o", str(tmp_path / "o.h5"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR == 2
    assert "input not found" in err and "no-such.cif" in err
    assert not (tmp_path / "o.h5").exists()


def test_build_existing_output(real_cif_dir, mixed_h5, capsys):
    rc = main(["build", str(real_cif_dir / GOOD[0]), "-o", str(mixed_h5), "--quiet"])
    assert rc == EXIT_ERROR
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err


def test_build_bad_option(real_cif_dir, tmp_path, capsys):
    rc = main(["build", str(real_cif_dir / GOOD[0]), "-o", str(tmp_path / "o.h5"),
               "--test-fraction", "2", "--quiet"])
    assert rc == EXIT_ERROR
    assert "test_fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse rejects an unknown method
        main(["build", "x.cif", "-o", "o.h5", "--normalisation", "fancy"])
    assert e.value.code == 2


def test_info(mixed_h5, capsys):
    assert main(["info", str(mixed_h5)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "structures   6 from 6 input files, 4630 reflections each" in text
    assert "splits" in text and ("train" in text or "test" in text)
    assert "P -1" in text and "space groups" in text
    assert "measured     " in text and "median corr" in text
    assert "failures     2" in text
    for n in BAD:
        assert n in text


def test_info_json(mixed_h5, capsys):
    assert main(["info", "--json", str(mixed_h5)]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["n_structures"] == 6 and info["n_inputs"] == 6
    assert info["n_failures"] == 2 and len(info["failures"]) == 2
    assert sum(info["splits"].values()) == 6
    assert sum(info["space_groups"].values()) == 6
    assert info["space_groups"]["P -1"] >= 1
    assert info["n_with_obs"] >= 1 and info["obs_calc_corr_median"] > 0.9
    assert info["failures_by_kind"] == {"bad-symmetry": 1, "no-symmetry": 1}


def test_info_not_a_dataset(tmp_path, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"nothing")
    assert main(["info", str(junk)]) == EXIT_ERROR
    assert "not a readable HDF5 file" in capsys.readouterr().err
    import h5py

    with h5py.File(tmp_path / "partial.h5", "w") as h5:
        h5.attrs["schema_version"] = 1
        h5.attrs["complete"] = False
    assert main(["info", str(tmp_path / "partial.h5")]) == EXIT_ERROR
    assert "not a complete phasenet dataset" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"phasenet {phasenet.__version__}"


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    """Review fixes: a non-integer Slurm site setting, a config path that is a folder,
    a demo folder the demo did not make: clear messages, nothing written."""
    from phasenet.pipeline.demo import run_demo
    from phasenet.evaluation.maps import min_distances
    from phasenet.pipeline.slurm import SlurmError, sbatch_options
    from phasenet.training.config import ConfigError, load_config

    with pytest.raises(SlurmError, match="GPUS='a100:2' must be an integer"):
        sbatch_options({"GPUS": "a100:2"}, "train")
    with pytest.raises(SlurmError, match="SIGNAL_SECONDS"):
        sbatch_options({"SIGNAL_SECONDS": "2min"}, "build")
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path)
    assert min_distances([], [[0.1, 0.2, 0.3]], (10, 10, 10, 90, 90, 90)).shape == (0,)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert run_demo(mine, n=4, train=False, evaluate=False) == 2
    assert "not made by the demo" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
