"""The pretrained phasing network shipped with phasenet: present, small, loadable without a
download, and scoring what docs/phasing-network.md says it scores on a small sample of real
structures (the numbers of docs/phasing_net_sample.json, made by
benchmarks/phasing_net_sample.py)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

SAMPLE_JSON = REPO_ROOT / "docs" / "phasing_net_sample.json"


def _sample_module():
    spec = importlib.util.spec_from_file_location("phasing_net_sample", REPO_ROOT / "benchmarks" / "phasing_net_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_model_is_there_small_and_a_recycling_model():
    from phasenet.baselines.network import load_network, shipped_model_dir

    folder = shipped_model_dir()
    files = {p.name for p in folder.iterdir()}
    assert {"model.keras", "phasenet_model.json", "config.toml"} <= files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 20e6
    net = load_network()
    assert net.takes_phase and len(net.hkl) == 4630
    info = json.loads((folder / "phasenet_model.json").read_text())
    assert info["input"] == "network" and info["data_source"] == "synth"


def test_the_shipped_model_reproduces_its_documented_scores(real_cif_dir):
    documented = json.loads(SAMPLE_JSON.read_text())
    now = _sample_module().sample_scores(real_cif_dir)
    assert now["options"] == documented["options"]
    key = lambda r: (r["file"], r["d_min"])  # noqa: E731
    want = {key(r): r for r in documented["rows"]}
    got = {key(r): r for r in now["rows"]}
    assert set(got) == set(want)
    for k, r in want.items():
        g = got[k]
        assert g["reflections"] == r["reflections"]
        # the network alone is deterministic up to float rounding between backends and machines
        assert g["map_cc"]["network"] == pytest.approx(r["map_cc"]["network"], abs=0.05), k
    for d in {r["d_min"] for r in want.values()}:
        solved = lambda rows: sum(r["map_cc"]["polish"] >= 0.7 for r in rows if r["d_min"] == d)  # noqa: E731
        assert abs(solved(got.values()) - solved(want.values())) <= 1, d
        mean = lambda rows: np.mean([r["map_cc"]["polish"] for r in rows if r["d_min"] == d])  # noqa: E731
        assert mean(got.values()) == pytest.approx(mean(want.values()), abs=0.1), d
