"""Training phase-sign networks and autoencoder probes (Keras 3, TensorFlow or JAX).

Modules, by responsibility:

- :mod:`~phasenet.training.config`: the run configuration (dataclasses with defaults,
  TOML, validation, ``--set key=value`` overrides);
- :mod:`~phasenet.training.data`: streaming batches from the HDF5 dataset;
- :mod:`~phasenet.training.losses`: weighted sign cross-entropy, fixed or
  origin-invariant, and the metrics (weighted/plain accuracy, map correlation);
- :mod:`~phasenet.training.models`: dense sign networks and autoencoders;
- :mod:`~phasenet.training.run`: the training loop (checkpoints, resume, outputs);
- :mod:`~phasenet.training.plots`: learning curves, sweep comparisons, autoencoder errors;
- :mod:`~phasenet.training.sweep`: configs with a ``[sweep]`` table.

Nothing here imports Keras at import time: the backend is chosen when training starts.
"""

from phasenet.training.config import ConfigError, TrainConfig, load_config  # noqa: F401

__all__ = ["ConfigError", "TrainConfig", "load_config"]
