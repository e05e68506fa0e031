"""How well a network predicts particles, and what a finished run recorded: two one-call helpers.

* :func:`compute_predictions` -- a network with its fitted scalers on raw particle
  data, or on raw rows of a user's table (``encoding=``): residuals and R²/MAE/RMSE
  in physical units.
* :func:`summarize_run_performance` -- the headline figures of a run, read from its
  files (no TensorFlow).

Example:
    >>> from nnlab.analysis import compute_predictions, summarize_run_performance
    >>> summary = summarize_run_performance("training_output", run="latest")  # doctest: +SKIP
    >>> summary["best_r2_score"], summary["test_r2"]                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab._numbers import float_or_none
from nnlab.analysis.artifacts import load_run
from nnlab.analysis.base import SectionSkipped
from nnlab.errors import ConfigError, DataValidationError

__all__ = ["compute_predictions", "summarize_run_performance"]


def _n_columns(scaler: Any, name: str) -> int:
    if not (hasattr(scaler, "transform") and hasattr(scaler, "inverse_transform")):
        raise ConfigError(f"{name} must be a fitted scaler with transform/inverse_transform "
                          f"(e.g. StandardScaler), got {type(scaler).__name__}")
    n = getattr(scaler, "n_features_in_", None)
    if n is None and getattr(scaler, "mean_", None) is not None:
        n = len(scaler.mean_)
    if n is None:
        raise ConfigError(f"{name} is not fitted (no n_features_in_); pass the scaler fitted at training "
                          "time (PreparedData.x_scaler/y_scaler or load_scalers(run_dir))")
    return int(n)


def _keras_model(model: Any) -> tuple[Any, int, int]:
    """The keras.Model behind ``model`` and its input/output widths."""
    keras_model = getattr(model, "model", model)  # an AdvancedNeuralNetwork holds its keras.Model
    try:
        n_in, n_out = keras_model.input_shape[-1], keras_model.output_shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        raise ConfigError("model must be an AdvancedNeuralNetwork or a built keras.Model with one input "
                          f"and one output, got {type(model).__name__}") from None
    return keras_model, int(n_in), int(n_out)


def _none_if_nan(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _table_encoding(encoding: Any) -> Any:
    """A :class:`~nnlab.data.TableEncoding` from itself or from a table run's scalers (``load_scalers``)."""
    from nnlab.data import TABLE_TASK, TableEncoding

    if isinstance(encoding, TableEncoding):
        return encoding
    if getattr(encoding, "task", None) == TABLE_TASK and getattr(encoding, "columns", None):
        return TableEncoding(tuple(encoding.columns), {k: tuple(v) for k, v in (encoding.encodings or {}).items()})
    raise ConfigError("encoding must be a TableEncoding or the scalers of a run on a table "
                      "(load_scalers(run_dir) with task 'table'), got "
                      f"{type(encoding).__name__}{' of the particle task' if hasattr(encoding, 'task') else ''}")


def _check_options(sample_size: Any, seed: Any) -> None:
    if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, numbers.Integral)
                                    or sample_size < 1):
        raise ConfigError(f"sample_size must be a positive integer or None (all rows), got {sample_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _columns_for(encoding: Any, features: Sequence[str] | None,
                 targets: Sequence[str] | None) -> tuple[Any, list[str], list[str]]:
    """(the table's encoding or None, the network's input names, its target names)."""
    from nnlab.data import resolve_columns

    if encoding is None:
        return (None, *resolve_columns(features, targets))
    table = _table_encoding(encoding)
    if targets is None:
        targets = getattr(encoding, "target_names", None)
    if targets is None or isinstance(targets, str) or not list(targets):
        raise ConfigError("targets must list the table's target columns in the network's output order "
                          "(a run's are load_scalers(run_dir).target_names)")
    names = table.feature_names
    if features is not None and list(features) != names:
        raise DataValidationError(f"features {list(features)} do not match the table's encoded inputs {names}; "
                                  "leave features out with encoding=")
    return table, names, [str(t) for t in targets]


def _check_widths(model: Any, scaler_X: Any, scaler_y: Any, feature_names: list[str],
                  target_names: list[str]) -> tuple[Any, int]:
    """The keras.Model behind ``model`` and its output width, once the scalers, model and columns agree."""
    keras_model, n_in, n_out = _keras_model(model)
    n_x, n_y = _n_columns(scaler_X, "scaler_X"), _n_columns(scaler_y, "scaler_y")
    widths = [f"scaler_X has {n_x} features, the model takes {n_in}, features lists {len(feature_names)}",
              f"scaler_y has {n_y} targets, the model predicts {n_out}, targets lists {len(target_names)}"]
    if not n_x == n_in == len(feature_names) or not n_y == n_out == len(target_names):
        raise DataValidationError("the scalers, the model and the columns disagree: " + "; ".join(widths)
                                  + " (pass the scalers saved with this model's run, and its targets=)")
    return keras_model, n_out


def _particle_rows(particle_df: pd.DataFrame, feature_names: list[str], scaler_X: Any, sample_size: int | None,
                   seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The sampled particle rows (validated, derived features recomputed) and their scaled inputs."""
    from nnlab.analysis.residuals import sample_indices
    from nnlab.data import DERIVED_FEATURES, add_derived_features, validate_particle_data

    df = validate_particle_data(particle_df).data  # raises, listing every problem
    given = [c for c in DERIVED_FEATURES if c in df.columns]
    if given:
        warnings.warn(f"particle_df holds derived-feature column(s) {', '.join(given)}; they are ignored and "
                      "recomputed from the initial columns", UserWarning, stacklevel=3)
    positions = sample_indices(len(df), len(df) if sample_size is None else int(sample_size), seed=int(seed))
    rows = add_derived_features(df.iloc[positions])
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by column
        X = scaler_X.transform(rows[feature_names].to_numpy(dtype=np.float64)).astype(np.float32)
    bad = [c for c, ok in zip(feature_names, np.isfinite(X).all(axis=0)) if not ok]
    if bad:
        raise DataValidationError(f"feature column(s) {bad} do not fit float32 once standardised with scaler_X "
                                  "(values far outside the training range)")
    return rows, X


def _table_rows(df: Any, table: Any, target_names: list[str], scaler_X: Any, sample_size: int | None,
                seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The sampled raw table rows and their inputs (numeric scaled, text one-hot, as at training time)."""
    from nnlab.analysis.residuals import sample_indices
    from nnlab.data import encode_table

    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"the table rows must be a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataValidationError("the table rows are empty: nothing to predict")
    missing = [t for t in target_names if t not in df.columns]
    if missing:
        raise DataValidationError(f"the table rows lack the target column(s) {missing} (needed to measure errors)")
    for name in target_names:
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(values).all():
            raise DataValidationError(f"target column '{name}' holds {int((~np.isfinite(values)).sum())} missing, "
                                      "infinite or non-numeric value(s); a number is needed in every row")
    X = encode_table(df, table, scaler_X, source="the table rows")  # every row: an unseen category is named
    if not np.isfinite(X).all():
        raise DataValidationError("feature values do not fit float32 once standardised with scaler_X "
                                  "(values far outside the training range)")
    positions = sample_indices(len(df), len(df) if sample_size is None else int(sample_size), seed=int(seed))
    return df.iloc[positions], X[positions]


def _predict(model: Any, keras_model: Any, X: np.ndarray, n_out: int) -> np.ndarray:
    if hasattr(model, "predict") and model is not keras_model:
        predicted = model.predict(X)  # AdvancedNeuralNetwork.predict: one compiled call
    else:
        predicted = keras_model.predict(X, verbose=0)
    return np.asarray(predicted, dtype=np.float64).reshape(len(X), n_out)


def _physical_metrics(y_true: np.ndarray, y_pred: np.ndarray, target_names: list[str]) -> dict[str, Any]:
    from nnlab.model import regression_metrics

    m = regression_metrics(y_true, y_pred)
    per_target = {name: {"r2": _none_if_nan(m["r2_per_target"][j]), "mae": float(m["mae_per_target"][j]),
                         "rmse": float(m["rmse_per_target"][j])} for j, name in enumerate(target_names)}
    return {
        "per_target": per_target,
        "mean": {"r2": _none_if_nan(m["r2"]), "mae": float(np.mean(m["mae_per_target"])),
                 "rmse": float(np.mean(m["rmse_per_target"]))},
        "n_samples": len(y_true),
    }


def compute_predictions(model: Any, scaler_X: Any, scaler_y: Any, particle_df: pd.DataFrame,
                        sample_size: int | None = 1000, *, seed: int = 0,
                        targets: Sequence[str] | None = None,
                        features: Sequence[str] | None = None,
                        encoding: Any = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict a sample of raw particles (or raw rows of a user's table) and measure the errors in physical units.

    ``particle_df`` is validated (:func:`~nnlab.data.validate_particle_data`);
    its derived features are recomputed from the initial columns, never taken
    from the frame (such columns are ignored with a warning). With
    ``encoding`` it is instead raw rows of the table a run was trained on
    (``nnlab train --data t.csv --targets ...``): its feature columns are
    encoded as at training time (:func:`~nnlab.data.encode_table`: numeric
    columns standardised, text columns one-hot) and its target columns hold the
    true values. ``sample_size`` rows are drawn without replacement,
    reproducibly for a given ``seed`` (all rows when the frame has no more, or
    ``sample_size`` is None); they are predicted and mapped back to physical
    units (the targets' own units) with ``scaler_y``.

    Args:
        model: an :class:`~nnlab.model.AdvancedNeuralNetwork` or a keras.Model
            taking ``len(features)`` standardised features.
        scaler_X: the feature scaler fitted at training time
            (``PreparedData.x_scaler``, or ``load_scalers(run_dir).x_scaler``).
        scaler_y: the target scaler fitted at training time (``y_scaler``).
        particle_df: raw particle data (:data:`~nnlab.data.REQUIRED_COLUMNS`), or
            with ``encoding`` raw table rows (a DataFrame with the raw feature
            and target columns, text as text).
        sample_size: rows to use (a positive int, or None for all).
        seed: seed of the row sample.
        targets: the model's target columns, in output order (default
            :data:`~nnlab.data.DEFAULT_TARGETS`, or with ``encoding`` its
            ``target_names``; a run's are ``load_scalers(run_dir).target_names``).
        features: the model's feature columns (default
            :data:`~nnlab.data.FEATURE_COLUMNS`; with ``encoding`` leave it out).
        encoding: for a table run: its scalers (``load_scalers(run_dir)``, task
            ``"table"``: columns, categories and targets) or a
            :class:`~nnlab.data.TableEncoding`.

    Returns:
        ``(residuals, metrics)``. ``residuals``: a DataFrame, one column per
        target, of predicted − true in physical units, indexed by the sampled
        rows' labels in ``particle_df``, in frame order. ``metrics``:
        ``{"per_target": {target: {"r2", "mae", "rmse"}}, "mean": {"r2", "mae",
        "rmse"}, "n_samples": n}``, also in physical units; ``mean`` is the mean
        over targets (of R²: over the targets that have one). R² is None
        (unavailable) below 2 rows or for a target that does not vary.

    Raises:
        ConfigError: ``sample_size``/``seed`` invalid, ``model`` not a network,
            a scaler not fitted, ``encoding`` not a table's.
        DataValidationError: the data fails validation or lacks a column; a table
            column holds a category unseen in training (named with its column);
            the scalers, the model and the feature/target lists disagree in width.

    Example:
        >>> residuals, metrics = compute_predictions(model, data.x_scaler, data.y_scaler,
        ...                                          generate_particle_data(500, seed=7))  # doctest: +SKIP
        >>> scalers = load_scalers(run_dir)  # a run on a table                  # doctest: +SKIP
        >>> residuals, metrics = compute_predictions(model, scalers.x_scaler, scalers.y_scaler,
        ...                                          pd.read_csv("new_rows.csv"), encoding=scalers)  # doctest: +SKIP
    """
    _check_options(sample_size, seed)
    table, feature_names, target_names = _columns_for(encoding, features, targets)
    keras_model, n_out = _check_widths(model, scaler_X, scaler_y, feature_names, target_names)
    if table is None:
        rows, X = _particle_rows(particle_df, feature_names, scaler_X, sample_size, seed)
    else:
        rows, X = _table_rows(particle_df, table, target_names, scaler_X, sample_size, seed)
    y_pred = np.asarray(scaler_y.inverse_transform(_predict(model, keras_model, X, n_out)), dtype=np.float64)
    y_true = rows[target_names].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    residuals = pd.DataFrame(y_pred - y_true, index=rows.index, columns=target_names)
    return residuals, _physical_metrics(y_true, y_pred, target_names)


# --- the run's recorded figures ---------------------------------------------------

# Chain order and names of nnlab.constraints.build_constraints, from the flat config
# (without importing TensorFlow); used when configuration_log.csv has no row for the run.
def _constraints_from_config(config: dict[str, Any]) -> list[str]:
    names = []
    if config.get("use_adaptive_oscillation_dampener"):
        names.append("adaptive_oscillation_dampener")
    elif config.get("enable_weight_oscillation_dampener"):
        names.append("oscillation_dampener")
    for key, name in (("enable_binary_change_max", "binary_change_max"),
                      ("enable_binary_precision_max", "binary_precision_max"),
                      ("enable_james_stein", "james_stein")):
        if config.get(key):
            names.append(name)
    return names


def _log_row(output_dir: Path, run_id: str, problems: dict[str, str]) -> dict[str, str]:
    path = output_dir / "configuration_log.csv"
    if not path.is_file():
        return {}
    try:
        log = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems[path.name] = f"unreadable: {exc}"
        return {}
    if "run_id" not in log:
        return {}
    rows = log[log["run_id"] == run_id].to_dict("records")
    return {k: v for k, v in rows[-1].items() if v != ""} if rows else {}


def summarize_run_performance(output_dir: str | os.PathLike = "training_output",
                              run: str | None = "latest") -> dict[str, Any]:
    """The headline figures of one training run, read from its files.

    Reads the run's ``training_results.csv``, ``test_metrics.json``,
    ``training_config.json`` and ``run_status.json``, and its row of
    ``<output_dir>/configuration_log.csv`` when there is one; imports no
    TensorFlow. A figure whose file is missing or unreadable is None, and the
    file and the reason are listed in ``problems``.

    Args:
        output_dir: the training output root.
        run: a run id, or ``"latest"`` (the newest run).

    Returns:
        A dict with:

        * ``run_id``, ``run_dir``, ``status`` (``run_status.json``, else the
          configuration log; None if neither records it); ``task``: ``"table"``
          for a run on a user's table (``prediction_mae`` is then in its
          targets' own units), else ``"particles"``;
        * ``best_validation_loss``, ``best_r2_score`` (best validation R²),
          ``total_training_epochs``, ``final_r2_score`` and the epochs of the
          bests (``best_validation_loss_epoch``, ``best_r2_epoch``), from
          ``training_results.csv``;
        * ``test_r2``, ``test_mse``, ``test_mae``, ``test_rmse``: test-set metrics
          on the standardised targets (``test_metrics.json`` "scaled"), and
          ``test_n_samples``;
        * ``prediction_mae``: the mean over targets of the test-set MAE in
          physical units (``test_metrics.json`` "per_target_physical"; the same
          figure as ``prediction_mae`` of ``nnlab analyze``'s summary when it
          falls back on that file), with ``prediction_mae_per_target``; None when
          the run recorded no physical-unit metrics (trained without ``data=``);
        * ``total_training_time_s``, ``avg_epoch_time_s`` (sum and mean of the
          epoch times), ``total_time_s`` (the whole run, from the configuration
          log), ``peak_memory_mb`` (the log's, else the largest per-epoch sample);
        * ``constraints_used`` (names, in chain order), ``loss_weighting_strategy``;
        * ``problems``: {file: reason} of the files that could not be used.

    Raises:
        ArtifactError: (an :class:`~nnlab.errors.NnlabError`) no runs in
            ``output_dir``, or no run ``run`` (the message lists the available ones).

    Example:
        >>> summary = summarize_run_performance("training_output", run="latest")  # doctest: +SKIP
        >>> summary["best_r2_score"], summary["prediction_mae"]                  # doctest: +SKIP
    """
    from nnlab.analysis.dynamics import run_curve_summary

    artifacts = load_run(output_dir, run)
    problems = dict(artifacts.problems)
    curve_keys = ("total_training_epochs", "best_validation_loss", "best_validation_loss_epoch", "best_r2_score",
                  "best_r2_epoch", "final_r2_score", "avg_epoch_time_s", "total_training_time_s",
                  "peak_memory_mb")
    try:
        curve = run_curve_summary(artifacts.results)
    except SectionSkipped:
        curve = {}
    data = artifacts.record.get("data") if isinstance(artifacts.record.get("data"), dict) else {}
    summary: dict[str, Any] = {"run_id": artifacts.run_id, "run_dir": str(artifacts.run_dir), "status": None,
                               "task": "table" if data.get("task") == "table" else "particles",
                               **{k: curve.get(k) for k in curve_keys}}

    scaled = artifacts.test_metrics.get("scaled") if isinstance(artifacts.test_metrics.get("scaled"), dict) else {}
    for key in ("r2", "mse", "mae", "rmse"):
        summary[f"test_{key}"] = float_or_none(scaled.get(key))
    summary["test_n_samples"] = artifacts.test_metrics.get("n_samples")
    physical = artifacts.test_metrics.get("per_target_physical")
    mae = ({name: float_or_none(m.get("mae")) for name, m in physical.items() if isinstance(m, dict)}
           if isinstance(physical, dict) else {})
    complete = bool(mae) and all(v is not None for v in mae.values())
    summary["prediction_mae"] = float(np.mean(list(mae.values()))) if complete else None
    summary["prediction_mae_per_target"] = mae if complete else None

    row = _log_row(artifacts.output_dir, artifacts.run_id, problems)
    status_path = artifacts.run_dir / "run_status.json"
    try:
        record = json.loads(status_path.read_text(encoding="utf-8"))
        summary["status"] = record.get("status") if isinstance(record, dict) else None
    except FileNotFoundError:
        problems["run_status.json"] = "missing"
    except (OSError, ValueError) as exc:
        problems["run_status.json"] = f"unreadable: {exc}"
    if summary["status"] is None:
        summary["status"] = row.get("status")

    summary["total_time_s"] = float_or_none(row.get("total_time_s"))
    if float_or_none(row.get("peak_memory_mb")) is not None:
        summary["peak_memory_mb"] = float_or_none(row.get("peak_memory_mb"))
    config = artifacts.config
    if "constraints" in row:
        summary["constraints_used"] = [] if row["constraints"] == "none" else row["constraints"].split("+")
    else:
        summary["constraints_used"] = _constraints_from_config(config) if config else None
    summary["loss_weighting_strategy"] = config.get("loss_weighting_strategy", row.get("loss_weighting_strategy"))
    summary["problems"] = problems
    return summary
