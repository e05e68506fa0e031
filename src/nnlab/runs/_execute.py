"""The one path of a run: ``RunSpec`` -> :func:`execute` / :func:`resume` -> ``RunResult``.

``nnlab train``, a resume, a search trial and a study unit all train through
here; the analysis rebuilds a run's network through :func:`load_network`.
Nothing above this layer constructs a network or calls ``train_with_tracking``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab._signals import raise_if_interrupted
from nnlab.runs._runs import DEFAULT_OUTPUT_DIR
from nnlab.runs._source import DataSource
from nnlab.runs._status import RunStatus

__all__ = ["RunSpec", "RunResult", "execute", "resume", "build_network", "load_network"]

# Whether this process has trained a network through execute(): searches and studies train many in one.
_executed = {"before": False}


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs.

    Args:
        config: the validated :class:`~nnlab.config.Config` (network, training, generation).
        data: the :class:`~nnlab.runs.DataSource` of its rows.
        output_dir: the training output root; the run writes ``<output_dir>/runs/<run_id>/``.
        preset: the preset name, recorded in the configuration log.
        tags: extra tags of the run's MLflow run (``mlflow.parentRunId`` makes it a child).
        progress: Keras' ``verbose`` (0, 1, 2, ``"auto"``) or ``"progress"`` for nnlab's display.
        callbacks: extra Keras callbacks after the tracker (a search's pruning callback);
            one may set ``run_status`` (e.g. ``"pruned"``) to end the run with that status.
        announce: print a line naming the split sizes before training.

    Example:
        >>> from nnlab.config import resolve_config
        >>> cfg = resolve_config({"epochs": 1, "hidden_layers": [8]})
        >>> spec = RunSpec(cfg, DataSource.simulated(200, seed=1), output_dir="out")
        >>> result = execute(spec)  # doctest: +SKIP
        >>> result.status  # doctest: +SKIP
        <RunStatus.COMPLETED: 'completed'>
    """

    config: Any
    data: DataSource
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR
    preset: str | None = None
    tags: Mapping[str, Any] | None = None
    progress: int | str = 0
    callbacks: Sequence[Any] = ()
    announce: bool = False


@dataclass
class RunResult:
    """How a run ended and where it is.

    Attributes:
        run_id, run_dir: the run and its directory.
        status: the :class:`RunStatus`.
        test: the test report of test_metrics.json (None when the run did not reach it).
        failure: why a run that stopped itself did (a full disk), else None.
        summary: the performance summary (epochs, R², times, memory).
        details: the whole result mapping of :func:`~nnlab.runs.train_with_tracking`
            (history, errors, tracking sinks), as :func:`~nnlab.runs.format_summary` reads it.
    """

    run_id: str
    run_dir: Path
    status: RunStatus
    test: dict[str, Any] | None = None
    failure: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: Mapping[str, Any]) -> RunResult:
        """The typed view of :func:`~nnlab.runs.train_with_tracking`'s result mapping."""
        return cls(run_id=str(results["run_id"]), run_dir=Path(results["run_dir"]),
                   status=RunStatus(str(results["status"])), test=results.get("test"),
                   failure=results.get("failure"), summary=dict(results.get("performance_summary") or {}),
                   details=dict(results))

    @property
    def divergence_message(self) -> str:
        """What a diverged run's user is told: the cause that fits its precision policy, and the advice."""
        from nnlab.runs._runs import divergence_message

        return divergence_message(self.details.get("precision_policy"))

    @property
    def test_scaled(self) -> dict[str, Any]:
        """The scaled test metrics (``mse``, ``mae``, ``rmse``, ``r2``); empty without a test report."""
        return dict((self.test or {}).get("scaled") or {})


def build_network(config: Any, n_features: int, n_targets: int, *, scalers: Any = None) -> Any:
    """The :class:`~nnlab.model.AdvancedNeuralNetwork` of a run: ``n_features`` inputs, ``n_targets`` outputs."""
    from nnlab.model import AdvancedNeuralNetwork

    return AdvancedNeuralNetwork((n_features,), n_targets, config, scalers=scalers)


def execute(spec: RunSpec) -> RunResult:
    """Prepare the data, build the network, train it with tracking and write every artifact.

    Raises:
        ConfigError, DataValidationError: bad configuration or data, or configuration
            that does not fit the data's task (before the run directory is created when the
            data or the network cannot be built).
    """
    spec.data.check_config(spec.config)  # e.g. the physics loss on a table: refused before any work
    data = spec.data.prepare()  # bad data is refused here, before TensorFlow loads
    if spec.announce:
        print(f"data: {len(data.X_train)} train / {len(data.X_val)} validation / {len(data.X_test)} test rows, "
              f"{len(data.feature_names)} features -> {len(data.target_names)} targets")
    import keras

    from nnlab.runs._pipeline import train_with_tracking

    if _executed["before"]:
        # The last network's graph and memory go before the next is built. A one-shot run skips this
        # full collection (0.2-0.5 s with TensorFlow loaded): its process ends after the run.
        gc.collect()
        raise_if_interrupted()  # a Ctrl-C during the collection was deferred (nnlab._signals)
    _executed["before"] = True
    try:
        model = build_network(spec.config, data.X_train.shape[1], data.y_train.shape[1], scalers=data)
        results = train_with_tracking(model, *data, spec.config, data=data, output_dir=spec.output_dir,
                                      preset=spec.preset, verbose=spec.progress, callbacks=spec.callbacks,
                                      data_source=spec.data.to_record(), mlflow_tags=spec.tags)
    finally:
        keras.backend.clear_session(free_memory=False)  # Keras' global state; the memory: above, before the next
    return RunResult.from_results(results)


def resume(run_id: str = "latest", *, output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
           progress: int | str = 0) -> RunResult:
    """Continue an interrupted run from its last good checkpoint (see :func:`~nnlab.runs.resume_training`)."""
    from nnlab.runs._resume import resume_training

    return RunResult.from_results(resume_training(run_id, output_dir=output_dir, verbose=progress))


def load_network(config: Any, n_features: int, n_targets: int, weights: str | os.PathLike) -> Any:
    """A trained run's network for predictions: built from its configuration, its ``weights`` loaded.

    The physics loss term (which needs the training scalers) is not built: only predictions are made.

    Raises:
        ValueError: the weights do not fit the architecture; OSError: an unreadable file.
    """
    cfg = config.model_copy(update={"model": config.model.model_copy(update={"physics_loss_weight": 0.0})})
    network = build_network(cfg, n_features, n_targets)
    network.model.load_weights(weights)
    return network
