"""Dataset recipes (``datasets/*.toml``): each loads and validates; unknown keys are
rejected with the valid ones; ``build --recipe`` and ``synth --recipe`` make datasets whose
recorded options are the recipe's; every training config names an existing recipe that
makes the reflections and normalisation it expects."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json

import h5py
import pytest
from tests.conftest import REPO_ROOT

from phasenet import BuildOptions, SynthOptions
from phasenet.cli import EXIT_ERROR, EXIT_OK, main
from phasenet.options import OptionsError, load_recipe
from phasenet.pipeline.options import BUILD_RECIPE_KEYS
from phasenet.reflections import canonical_hkl
from phasenet.synth.options import PACKINGS, SYNTH_RECIPE_KEYS
from phasenet.training.config import ConfigError, load_config, recipe_path

RECIPES = sorted((REPO_ROOT / "datasets").glob("*.toml"))
CONFIGS = sorted((REPO_ROOT / "training").glob("*.toml"))
KINDS = {"build": (BuildOptions, BUILD_RECIPE_KEYS), "synth": (SynthOptions, SYNTH_RECIPE_KEYS)}


def load(path):
    import tomllib

    command = tomllib.loads(path.read_text())["command"]
    cls, keys = KINDS[command]
    return load_recipe(path, cls, keys), cls


def recipe_options(recipe, cls):
    table = dict(recipe.options)
    if recipe.get("packing"):
        table.update(PACKINGS[recipe.get("packing")])
    return cls.from_dict(table)


def test_the_study_datasets_have_recipes():
    names = {p.stem for p in RECIPES}
    assert {"experimental_4630", "computed_709", "synth_709", "synth_709_wilson", "demo"} <= names
    exp, _ = load(REPO_ROOT / "datasets" / "experimental_4630.toml")
    assert exp.command == "build" and exp.options["normalisation"] == "linreg"
    assert len(canonical_hkl(BuildOptions.from_dict(exp.options).max_index, None)) == 4630
    comp, _ = load(REPO_ROOT / "datasets" / "computed_709.toml")
    o = BuildOptions.from_dict(comp.options)
    assert (o.normalisation, o.r2_max, len(canonical_hkl(o.max_index, o.r2_max))) == ("max", 50, 709)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_validates(path):
    recipe, cls = load(path)
    options = recipe_options(recipe, cls)
    assert recipe.get("output", "").endswith(".h5")
    assert set(recipe.options) <= {f for f in cls.__dataclass_fields__}
    for key, value in recipe.options.items():  # every value given is the one used
        got = getattr(options, key)
        assert got == (tuple(value) if isinstance(value, list) else value), key
    if recipe.command == "synth":
        assert recipe.get("n") >= 1


def test_recipe_with_unknown_key_lists_the_valid_ones(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('command = "build"\nr2max = 50\nnormalisation = "max"\n')
    with pytest.raises(OptionsError) as e:
        load_recipe(bad, BuildOptions, BUILD_RECIPE_KEYS)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: Unknown option(s) ['r2max'] for build; valid options are: ")
    valid = msg.split("valid options are: ")[1].split(", ")
    assert valid == ["command", "inputs", "output", *BuildOptions.__dataclass_fields__]
    # the command line says the same, and writes nothing
    assert main(["build", "x.cif", "-o", str(tmp_path / "o.h5"), "--recipe", str(bad)]) == EXIT_ERROR
    assert "Unknown option(s) ['r2max'] for build" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()
    bad.write_text('command = "synth"\nn = 3\n')  # a synth recipe given to build
    assert main(["build", "x.cif", "-o", str(tmp_path / "o.h5"), "--recipe", str(bad)]) == EXIT_ERROR
    assert 'needs command = "build" (this one is for phasenet synth)' in capsys.readouterr().err
    bad.write_text('command = "synth"\nn = "three"\n')
    assert main(["synth", "--recipe", str(bad)]) == EXIT_ERROR
    assert "n = 'three': must be an integer" in capsys.readouterr().err
    bad.write_text('command = "synth"\nn = 3\npacking = "fast"\ncompress_rounds = 2\n')
    assert main(["synth", "--recipe", str(bad), "-o", str(tmp_path / "s.h5")]) == EXIT_ERROR
    assert "give packing or compress_rounds" in capsys.readouterr().err
    assert main(["build", "--recipe", "no_such_recipe"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "no_such_recipe: no such recipe file" in err and "computed_709" in err


def _build_options(path):
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["build_options"])


@pytest.mark.real_data
def test_build_recipe_on_real_cifs(real_cif_dir, tmp_path, capsys):
    files = [str(real_cif_dir / n) for n in ("StructureFinder_P-1.cif", "PyXtal_NaCl.cif", "PyXtal_gdh.cif")]
    recipe_file = REPO_ROOT / "datasets" / "computed_709.toml"
    recipe, _ = load(recipe_file)
    out = tmp_path / "c709.h5"
    rc = main(["build", "--recipe", str(recipe_file), *files, "-o", str(out), "--workers", "1", "--quiet"])
    assert rc == EXIT_OK, capsys.readouterr().err
    recorded = _build_options(out)
    for key, value in recipe.options.items():
        assert recorded[key] == value, key
    info = phasenet.dataset_info(out)
    assert info["n_structures"] == 3 and info["n_reflections"] == 709
    # a flag overrides the recipe; the rest still comes from it
    out2 = tmp_path / "c709w.h5"
    rc = main(["build", "--recipe", "computed_709", *files, "-o", str(out2), "--workers", "1", "--quiet",
               "--normalisation", "wilson"])
    assert rc == EXIT_OK, capsys.readouterr().err
    recorded = _build_options(out2)
    assert recorded["normalisation"] == "wilson" and recorded["r2_max"] == 50


def test_synth_recipe_with_a_tiny_count(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's output is relative: data/synth_709.h5
    recipe_file = REPO_ROOT / "datasets" / "synth_709.toml"
    recipe, _ = load(recipe_file)
    rc = main(["synth", "--recipe", str(recipe_file), "-n", "2", "--atoms", "6-10", "--workers", "1",
               "--quiet"])
    assert rc == EXIT_OK, capsys.readouterr().err
    out = tmp_path / recipe.get("output")
    assert out.is_file()
    recorded = _build_options(out)
    for key in ("r2_max", "normalisation", "seed"):
        assert recorded[key] == recipe.options[key], key
    with h5py.File(out, "r") as h5:
        assert h5["hkl"].shape[0] == 709 and h5["structures/id"].shape[0] == 2
        synth = json.loads(h5.attrs["synth"])
    assert synth["n_total"] == 2  # the flag, not the recipe's n
    used = synth["options"]
    assert used["atoms"] == [6, 10]  # the flag
    for key, value in recipe.options.items():  # the rest: the recipe's
        if key != "atoms":
            assert used[key] == value, key
    for key, value in PACKINGS[recipe.get("packing")].items():
        assert used[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_training_config_names_its_recipe(path):
    """Every config names the recipe of the dataset it reads, except those whose data
    source synthesises its structures itself (``data.source = "synth"``: no dataset)."""
    cfg = load_config(path)
    if cfg.data.source == "synth":
        assert not cfg.data.recipe, f"{path.name} synthesises its data; a recipe would mislead"
        return
    rp = recipe_path(cfg, path)
    assert rp is not None and rp.is_file() and rp.parent == REPO_ROOT / "datasets", cfg.data.recipe
    recipe, cls = load(rp)
    options = recipe_options(recipe, cls)
    # the recipe makes the reflections and normalisation the config expects
    assert options.max_index == cfg.data.max_index
    assert options.r2_max == cfg.r2_max_or_none()
    assert cfg.data.normalisation in ("any", options.normalisation)


def test_config_recipe_key_is_checked(tmp_path):
    (tmp_path / "training").mkdir()
    cfg_file = tmp_path / "training" / "c.toml"
    cfg_file.write_text('[data]\nrecipe = "recipes/x.toml"\n')
    with pytest.raises(ConfigError, match='data.recipe .*"datasets/NAME.toml"'):
        load_config(cfg_file)
    cfg_file.write_text('[data]\nrecipe = "datasets/x.toml"\n')
    cfg = load_config(cfg_file)  # loads (a run folder's copy of the config has no datasets/)
    with pytest.raises(ConfigError, match="no such recipe"):
        recipe_path(cfg, cfg_file)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "x.toml").write_text('command = "build"\n')
    assert recipe_path(cfg, cfg_file) == tmp_path / "datasets" / "x.toml"
