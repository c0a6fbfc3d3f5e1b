"""The models ``phasenet train`` can build, by name: ``[model] architecture`` in a config.

Light on purpose (no Keras): configs are checked against the names without building
anything. A model is a function ``build(cfg, n_reflections) -> keras.Model`` registered
as ``"module:attribute"`` and imported when a run first builds it, so that a new model
is one module plus one line::

    from phasenet.training.registry import register_model
    register_model("my-net", "my_package.my_net:build", tasks=("sign",))

Its builder reads what it needs from ``cfg`` (``cfg.model``, ``cfg.data``) and must
accept the inputs the data source gives (``"intensity"``, plus ``"mask"`` for network
input and ``"cell"`` with ``model.cell_input``; see :func:`phasenet.training.models.build_mlp`).
Unknown names are refused with the list of registered ones.
"""

from __future__ import annotations

import importlib

#: The architecture each task uses when ``[model] architecture`` is not given.
DEFAULT_FOR_TASK = {"sign": "mlp", "autoencoder": "autoencoder"}

_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {}


class UnknownModel(ValueError):
    pass


def register_model(name: str, spec, tasks: tuple[str, ...] = ("sign",)) -> None:
    """Register a builder (``"module:attribute"`` or the function itself) for ``tasks``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a model needs a non-empty name, got {name!r}")
    if isinstance(spec, str) and ":" not in spec:
        raise ValueError(f"model {name!r}: spec must be 'module:attribute' or a function, got {spec!r}")
    unknown = set(tasks) - set(DEFAULT_FOR_TASK)
    if unknown:
        raise ValueError(f"model {name!r}: unknown tasks {sorted(unknown)}; tasks are {list(DEFAULT_FOR_TASK)}")
    _MODELS[name] = (spec, tuple(tasks))


def unregister_model(name: str) -> None:
    _MODELS.pop(name, None)


def model_names(task: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, (_, tasks) in _MODELS.items() if task is None or task in tasks)


def resolve_architecture(architecture: str, task: str) -> str:
    """The architecture's name ("" means the task's default); UnknownModel if it is not
    registered for ``task``."""
    name = architecture or DEFAULT_FOR_TASK.get(task, "")
    if name not in model_names(task):
        raise UnknownModel(f"unknown model architecture {name!r} for task {task!r}; registered: "
                           + ", ".join(model_names(task)))
    return name


def get_model_builder(name: str):
    """The builder function registered as ``name`` (its module imported now)."""
    if name not in _MODELS:
        raise UnknownModel(f"unknown model architecture {name!r}; registered: {', '.join(model_names())}")
    spec = _MODELS[name][0]
    if not isinstance(spec, str):
        return spec
    module, attribute = spec.split(":", 1)
    return getattr(importlib.import_module(module), attribute)


# the built-in models (phasenet.training.models, imported with Keras on first build)
register_model("mlp", "phasenet.training.models:build_mlp", tasks=("sign",))
register_model("phasing-net", "phasenet.training.phasing_net:build_phasing_net", tasks=("sign",))
register_model("autoencoder", "phasenet.training.models:build_autoencoder", tasks=("autoencoder",))


def load_custom_objects(cfg) -> None:
    """Import the module of ``cfg``'s model, so that the Keras layers it registers are
    known before a saved model is loaded (a checkpoint, or a run's ``model.keras``)."""
    name = resolve_architecture(cfg.model.architecture, cfg.data.task)
    get_model_builder(name)
