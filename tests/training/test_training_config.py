"""Training configs: defaults, validation messages, overrides, sweeps, the shipped configs."""

import phasenet  # noqa: F401  (first: cctbx import order)

import sys
from pathlib import Path

import pytest

from phasenet.training.config import (ConfigError, TrainConfig, apply_overrides, config_from_dict,
                                      load_config, parse_override)
from phasenet.training.sweep import expand

TRAINING = Path(__file__).resolve().parents[2] / "training"
EXPECTED_MEMBERS = {"study_width_sweep": 7, "study_autoencoder": 5, "study_loss_weights": 3,
                    "study_depth_709": 2, "study_dataset_size": 6, "study_dense_4630": 1,
                    "missed_origin_invariant": 1, "missed_wilson": 1, "missed_regularised_cell": 1,
                    "demo": 1, "onthefly_mlp709": 1, "phasing_net_cpu": 1, "phasing_net_gpu": 1,
                    "phasing_net_gpu_sweep": 4}


@pytest.mark.parametrize("name", sorted(EXPECTED_MEMBERS))
def test_shipped_configs_load_and_expand(name):
    cfg = load_config(TRAINING / f"{name}.toml")
    members = expand(cfg)
    assert len(members) == EXPECTED_MEMBERS[name]
    assert len({m.folder for m in members}) == len(members)
    for m in members:
        assert not m.config.sweep
        # the resolved config round-trips through TOML
        import tomllib

        again = config_from_dict(tomllib.loads(m.config.to_toml()))
        assert again == m.config


def test_every_config_in_training_is_covered():
    assert {p.stem for p in TRAINING.glob("*.toml")} == set(EXPECTED_MEMBERS)


def test_study_configs_encode_the_experiments():
    dense = load_config(TRAINING / "study_dense_4630.toml")
    assert dense.hidden_widths(4630) == [4630, 4630] and dense.data.r2_max == 0
    widths = [m.config.hidden_widths(709) for m in expand(load_config(TRAINING / "study_width_sweep.toml"))]
    assert widths == [[25], [50], [100], [250], [500], [1000], [709]]
    ae = [m.config.model.bottleneck for m in expand(load_config(TRAINING / "study_autoencoder.toml"))]
    assert ae == [50, 100, 250, 500, 1000]
    assert load_config(TRAINING / "missed_origin_invariant.toml").loss.origin == "invariant"


@pytest.mark.parametrize("table, message", [
    ({"loss": {"origin": "best"}}, "loss.origin = 'best': allowed values: fixed, invariant"),
    ({"loss": {"weight": "sqrt"}}, "allowed values: intensity, exp_intensity, uniform"),
    ({"model": {"widht": 3}}, "unknown key 'model.widht'; allowed in [model]: width"),
    ({"modle": {"width": 3}}, "unknown section [modle]; allowed: run, data, model"),
    ({"model": {"width": -3}}, 'model.width = -3: must be a positive integer or "input"'),
    ({"model": {"dropout": 1.5}}, "model.dropout = 1.5: must be >= 0.0 and <= 0.99"),
    ({"run": {"epochs": "ten"}}, "run.epochs = 'ten': must be an integer"),
    ({"model": {"batch_norm": 1}}, "model.batch_norm = 1: must be true or false"),
    ({"hardware": {"distribution": "ddp"}}, "allowed values: auto, none, data_parallel"),
    ({"data": {"task": "autoencoder"}, "loss": {"origin": "invariant"}}, "applies to data.task"),
    ({"sweep": {"model.width": 5}}, "must be a non-empty list"),
    ({"sweep": {"model.width": [1, 2], "model.depth": [1], "mode": "zip"}}, "equal length"),
    ({"sweep": {"model.wdth": [1]}}, "unknown key 'model.wdth'"),
])
def test_bad_configs_name_key_and_allowed_values(table, message):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(table)
    assert message in str(exc.value)


def test_overrides_parse_toml_values():
    assert parse_override("model.width=100") == ("model.width", 100)
    assert parse_override("model.widths=[25, 50]") == ("model.widths", [25, 50])
    assert parse_override("model.activation=gelu") == ("model.activation", "gelu")
    assert parse_override("output.plots=false") == ("output.plots", False)
    cfg = apply_overrides(TrainConfig(), ["model.width=input", "optimizer.learning_rate=1e-2"])
    assert cfg.model.width == "input" and cfg.optimizer.learning_rate == 0.01
    assert TrainConfig().model.width == 100  # the original is untouched
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides(TrainConfig(), ["model.width"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent.toml")


def test_sweep_members_and_cli_listing(capsys, tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[sweep]\n"model.width" = [25, "input"]\n"loss.weight" = ["intensity", "uniform"]\n')
    members = expand(load_config(p))
    assert [m.label for m in members] == ["width=25,weight=intensity", "width=25,weight=uniform",
                                          "width=input,weight=intensity", "width=input,weight=uniform"]
    from phasenet.cli import main

    assert main(["train", str(p), "--list-members"]) == 0
    assert capsys.readouterr().out.splitlines()[3].startswith("3\t03-width=input,weight=uniform")
    assert main(["train", str(p), "--set", "loss.origin=sideways"]) == 2
    assert "loss.origin" in capsys.readouterr().err


def test_import_phasenet_training_does_not_load_keras():
    import subprocess

    code = "import phasenet, phasenet.training, phasenet.cli, sys; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False"
