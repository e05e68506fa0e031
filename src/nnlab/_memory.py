"""Refuse work that cannot fit in memory before allocating it.

A network or a particle count far beyond the machine's memory would otherwise
be killed by the kernel (no message) or swap for hours. The estimates are
deliberately modest -- they count the big arrays only -- so that a run is
refused only when it is clearly beyond the memory available now
(``psutil.virtual_memory().available``, or the cgroup limit of a container
when that is lower). No TensorFlow here: the check runs before it is imported.

* network: parameters x 4 bytes (float32) x copies -- the weights, the
  optimizer's moments (2 for Adam/AdamW, 1 for RMSprop), the gradients and the
  weight-constraint state (one or two tensors per weight);
* data: rows x columns x 8 bytes (float64) x 2 copies (the simulated frame
  and the features derived from it, or the arrays made while simulating).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psutil

from nnlab.config import Config
from nnlab.errors import ConfigError

__all__ = ["available_memory", "network_parameters", "network_bytes", "data_bytes", "check_network_fits",
           "check_data_fits", "check_memory"]

GIB = 2**30
FLOAT32_BYTES = 4
FLOAT64_BYTES = 8
DATA_COPIES = 2
# Particle columns: 16 simulated (REQUIRED_COLUMNS); training adds 15 derived features and
# the 23 + 6 feature/target matrices (the counts of nnlab.data, kept here to stay import-light).
SIMULATED_COLUMNS = 16
TRAINING_COLUMNS = 16 + 15 + 23 + 6
DEFAULT_FEATURES = 23
DEFAULT_TARGETS = 6
_OPTIMIZER_MOMENTS = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 0}
_OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}


def available_memory() -> int:
    """Bytes of memory available to this process now."""
    available = int(psutil.virtual_memory().available)
    # In a container the cgroup limit can be far below what the host has free.
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def network_parameters(n_features: int, hidden_layers: Sequence[int], n_targets: int, *,
                       use_batch_norm: bool = False, activation: str = "relu") -> int:
    """Parameters of the dense network ``AdvancedNeuralNetwork`` builds (exact)."""
    total, width_in = 0, int(n_features)
    for width in hidden_layers:
        width = int(width)
        total += width_in * width + (0 if use_batch_norm else width)
        if use_batch_norm:
            total += 4 * width  # gamma, beta, moving mean and variance
        if activation == "prelu":
            total += width
        width_in = width
    return total + width_in * int(n_targets) + int(n_targets)


def _network_copies(cfg: Config) -> int:
    m = cfg.model
    constraints = int(m.enable_binary_change_max) + int(m.enable_weight_oscillation_dampener
                                                         or m.use_adaptive_oscillation_dampener)
    return 1 + _OPTIMIZER_MOMENTS.get(m.optimizer, 2) + 1 + constraints


def network_bytes(cfg: Config, *, n_features: int = DEFAULT_FEATURES,
                  n_targets: int = DEFAULT_TARGETS) -> tuple[int, int]:
    """(estimated bytes, parameter count) of training the configured network."""
    m = cfg.model
    params = network_parameters(n_features, m.hidden_layers, n_targets, use_batch_norm=m.use_batch_norm,
                                activation=m.activation)
    return params * FLOAT32_BYTES * _network_copies(cfg), params


def data_bytes(num_particles: int, *, columns: int = TRAINING_COLUMNS) -> int:
    """Estimated bytes of ``num_particles`` rows of particle data."""
    return int(num_particles) * columns * FLOAT64_BYTES * DATA_COPIES


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f}" if n < 10 * GIB else f"{n / GIB:,.0f}"


def check_network_fits(cfg: Config, *, n_features: int = DEFAULT_FEATURES, n_targets: int = DEFAULT_TARGETS,
                       available: int | None = None) -> None:
    """Raise ``ConfigError`` when the network's estimate exceeds the available memory.

    Example:
        >>> from nnlab.config import Config
        >>> check_network_fits(Config.from_flat({"hidden_layers": [64, 32]}))  # fits: returns None
    """
    available = available_memory() if available is None else available
    needed, params = network_bytes(cfg, n_features=n_features, n_targets=n_targets)
    if needed > available:
        optimizer = cfg.model.optimizer
        has_moments = _OPTIMIZER_MOMENTS.get(optimizer, 2) > 0
        moments = f"{_OPTIMIZER_NAMES.get(optimizer, optimizer)} moments, " if has_moments else ""
        raise ConfigError(
            f"hidden_layers = {list(cfg.model.hidden_layers)} is too large for this machine: the network needs "
            f"~{_gib(needed)} GiB ({params:,} parameters: weights, {moments}gradients, constraint state) but "
            f"~{_gib(available)} GiB is available; use fewer or narrower hidden_layers")


def check_data_fits(num_particles: int, *, source: str = "num_particles", columns: int = TRAINING_COLUMNS,
                    available: int | None = None) -> None:
    """Raise ``ConfigError`` when ``num_particles`` rows would exceed the available memory.

    Args:
        num_particles: rows to simulate.
        source: how the user set it, for the message (``--num-particles``).
        columns: float64 columns held per row.
        available: bytes available (measured when None).
    """
    available = available_memory() if available is None else available
    needed = data_bytes(num_particles, columns=columns)
    if needed > available:
        fits = available // (columns * FLOAT64_BYTES * DATA_COPIES)
        raise ConfigError(
            f"{source} = {num_particles} is too large for this machine: the data needs ~{_gib(needed)} GiB "
            f"({num_particles:,} rows x {columns} columns x {FLOAT64_BYTES} bytes x {DATA_COPIES} copies) but "
            f"~{_gib(available)} GiB is available; use at most ~{fits:,} particles")


def check_memory(cfg: Config, *, num_particles: int | None, source: str = "num_particles",
                 network: bool = True) -> None:
    """Refuse a run (or a data generation) whose data or network cannot fit in memory.

    Args:
        cfg: the resolved configuration (its network is checked when ``network``).
        num_particles: rows to simulate; None when the data comes from a file.
        source: how the particle count was set, for the message.
        network: check the network too (training); False for ``nnlab data generate``.

    Raises:
        ConfigError: naming the key, the estimate and the memory available.
    """
    available = available_memory()
    if network:
        check_network_fits(cfg, available=available)
    if num_particles is not None:
        columns = TRAINING_COLUMNS if network else SIMULATED_COLUMNS
        check_data_fits(num_particles, source=source, columns=columns, available=available)
        if network:
            total = data_bytes(num_particles, columns=columns) + network_bytes(cfg)[0]
            if total > available:
                raise ConfigError(
                    f"{source} = {num_particles} with hidden_layers = {list(cfg.model.hidden_layers)} is too large "
                    f"for this machine: the data (~{_gib(data_bytes(num_particles, columns=columns))} GiB) and the "
                    f"network (~{_gib(network_bytes(cfg)[0])} GiB) together need ~{_gib(total)} GiB but "
                    f"~{_gib(available)} GiB is available")
