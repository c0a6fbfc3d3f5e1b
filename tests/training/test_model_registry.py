"""Models by name: ``[model] architecture`` picks a registered builder; a new model is
one function plus one registration line."""

import phasenet  # noqa: F401  (first: cctbx import order)

import os
import subprocess
import sys

import pytest

from phasenet.training.config import ConfigError, TrainConfig, load_config, validate
from phasenet.training.registry import (UnknownModel, get_model_builder, model_names, register_model,
                                        resolve_architecture, unregister_model)
from tests.conftest import REPO_ROOT


def test_defaults_per_task_and_unknown_names_listed():
    assert resolve_architecture("", "sign") == "mlp"
    assert resolve_architecture("", "autoencoder") == "autoencoder"
    assert set(model_names()) >= {"mlp", "autoencoder"}
    with pytest.raises(UnknownModel, match="registered: mlp"):
        resolve_architecture("autoencoder", "sign")
    cfg = TrainConfig()
    cfg.model.architecture = "no-such-net"
    with pytest.raises(ConfigError, match="model.architecture = 'no-such-net'.*registered: mlp"):
        validate(cfg)


def test_listing_and_checking_names_imports_no_keras():
    code = ("import phasenet, sys\n"
            "from phasenet.training.config import TrainConfig, validate\n"
            "from phasenet.training.registry import model_names\n"
            "validate(TrainConfig()); model_names()\n"
            "print(any(m in sys.modules for m in ('keras', 'tensorflow', 'jax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_default_models_are_the_registered_builders():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from phasenet.training.models import build_model

    cfg = load_config(REPO_ROOT / "training" / "demo.toml")
    model = build_model(cfg, 709)
    again = get_model_builder("mlp")(cfg, 709)
    assert model.name == again.name and model.count_params() == again.count_params()
    assert model.output_shape == (None, 709)


def test_a_registered_model_is_built_by_name():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from phasenet.training.models import build_model, model_inputs

    def tiny(cfg, n):
        inputs, x = model_inputs(cfg, n)
        return keras.Model(inputs, keras.layers.Dense(n, name="sign_logits")(x), name="tiny_linear")

    register_model("tiny-linear", tiny)
    try:
        cfg = load_config(REPO_ROOT / "training" / "demo.toml")
        cfg.model.architecture = "tiny-linear"
        validate(cfg)
        model = build_model(cfg, 50)
        assert model.name == "tiny_linear" and model.count_params() == 50 * 50 + 50
    finally:
        unregister_model("tiny-linear")
    assert "tiny-linear" not in model_names()
