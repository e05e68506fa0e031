"""Apply a chain of weight constraints to a model during ``model.fit``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from nnlab.constraints.base import WeightConstraint

__all__ = ["LOG_PREFIX", "TARGETS", "WeightConstraintCallback"]

TARGETS: tuple[str, ...] = ("all", "kernel", "bias")
LOG_PREFIX = "constraint/"
_COMMON_STATS = ("fraction_changed", "mean_abs_change")


def _total(values: tf.Tensor) -> tf.Tensor:
    # Reduce in float32 (exact for counts below 2**24 per tensor, cheaper than
    # casting every element), accumulate across tensors in float64.
    return tf.cast(tf.reduce_sum(tf.cast(values, tf.float32)), tf.float64)


def _variable_path(variable) -> str:
    # Keras 3 variables have a unique-ish `path` ("dense/kernel"); tf.Variables
    # have a name ("dense/kernel:0").
    return str(getattr(variable, "path", None) or variable.name).split(":")[0]


def is_target(variable, targets: str) -> bool:
    """Whether ``variable`` is among the weights a constraint applies to (``constraint_targets``: all, kernel, bias)."""
    leaf = _variable_path(variable).rsplit("/", 1)[-1]
    if targets == "kernel":
        return leaf.endswith("kernel")
    if targets == "bias":
        return leaf.endswith("bias")
    return True


class _Joined:
    """One state tensor of a constraint over several weights, seen as one flat tensor.

    ``read_value`` concatenates the weights' state tensors (a scalar per weight,
    like ``seen``, is repeated over that weight's elements); ``assign`` splits a
    flat value back (a scalar state takes its weight's first element: an
    elementwise transform gives every element of a weight the same count).
    """

    def __init__(self, variables: list[tf.Variable], sizes: list[int]):
        self.variables, self.sizes = variables, sizes
        self.scalar = variables[0].shape.rank == 0

    def read_value(self) -> tf.Tensor:
        if self.scalar:
            return tf.concat([tf.fill([size], v.read_value()) for v, size in zip(self.variables, self.sizes)], 0)
        return tf.concat([tf.reshape(v.read_value(), [-1]) for v in self.variables], 0)

    def assign(self, value: tf.Tensor) -> None:
        if self.scalar:
            starts = np.cumsum([0, *self.sizes[:-1]])
            for variable, start, size in zip(self.variables, starts, self.sizes):
                if size:  # an empty weight has no element to read its count from (and nothing to constrain)
                    variable.assign(value[int(start)])
            return
        for variable, part in zip(self.variables, tf.split(value, self.sizes)):
            variable.assign(tf.reshape(part, variable.shape))


def _joined_state(constraint: WeightConstraint, keys: list[str], variables: list, sizes: list[int]
                  ) -> dict[str, _Joined] | None:
    """The constraint's state of every weight, joined (:class:`_Joined`); None when it keeps none."""
    states = [constraint.state_for(key, tuple(v.shape)) for key, v in zip(keys, variables)]
    if states[0] is None:
        return None
    return {name: _Joined([state[name] for state in states], sizes) for name in states[0]}


class _Held:
    """A state tensor's value inside the pure chain core: ``read_value`` gives the
    value passed in, ``assign`` records the new one (written back afterwards)."""

    def __init__(self, value: tf.Tensor):
        self.value = value

    def read_value(self) -> tf.Tensor:
        return self.value

    def assign(self, value: tf.Tensor) -> None:
        self.value = value


class WeightConstraintCallback(keras.callbacks.Callback):
    """Apply weight constraints to a model's trainable weights every N epochs.

    At the end of every epoch with ``(epoch + 1) % interval == 0`` the chain
    (oscillation dampener → binary change → binary max → James-Stein; the
    constraints are put in this order whatever order they are given in) is
    applied to every target weight by three compiled TensorFlow calls (gather,
    constrain, write back), which also assign the results. Works inside
    ``model.fit`` in graph mode.

    Every epoch it adds these keys to the epoch ``logs`` (so ``History``,
    ``CSVLogger`` and trackers placed after it see them) and appends the same
    values, with ``"epoch"``, to :attr:`history`:

    * ``constraint/applied``: 1.0 on application epochs, else 0.0;
    * ``constraint/non_finite``: number of NaN/inf target weights found
      (they are never modified);
    * ``constraint/<name>/fraction_changed``: fraction of target weights whose
      bits this constraint changed;
    * ``constraint/<name>/mean_abs_change``: mean |Δw| it caused, over all
      target weights;
    * ``constraint/<name>/fraction_oscillating`` (dampeners) and
      ``constraint/james_stein/mean_factor`` (average shrinkage factor).

    Each constraint works on the output of the one before, and James-Stein
    comes last: its shrunk weights are not re-rounded, so with it enabled the
    weights can carry more than ``max_bits`` significant digits afterwards.

    The elementwise constraints (all but James-Stein) run once on every target
    weight joined into one vector, their state joined alike: the same values as
    weight by weight, with a twentieth of the ops. James-Stein, which uses each
    weight tensor's norm, runs weight by weight after them.

    ``<name>`` is the constraint's :attr:`~WeightConstraint.name`. On epochs
    without an application every statistic is 0.0 (nothing was changed or
    measured), so the set of keys, and a CSV's columns, never vary.

    Args:
        constraints: the constraints to apply (at most one of each kind).
        interval: apply every ``interval`` epochs (config ``constraint_interval``).
        targets: ``"all"`` trainable weights, only ``"kernel"`` or only
            ``"bias"`` weights (config ``constraint_targets``).
        jit_compile: compile the elementwise constraints (the chain's core, a
            function of the joined weights and state) with XLA, into a few
            fused loops; the models of :class:`~nnlab.model.AdvancedNeuralNetwork`
            pass the configuration's ``jit_compile``. On the default network
            (350,726 weights; adaptive oscillation dampener, change max and
            precision max; 2-core CPU) an application then takes 9 ms instead
            of 24 ms, and the first 0.75–0.81 s instead of 0.54–0.68 s (the
            compile): it pays back after about 15 applications, what a default
            run makes (150 epochs, every 10th).

    Raises:
        TypeError: if an element of ``constraints`` is not a WeightConstraint.
        ValueError: for an empty or duplicated constraint list, a bad
            ``interval`` or ``targets``; at training start, if the model has no
            target weights or a target weight is not float32.

    Example:
        >>> from nnlab.constraints import BinaryPrecisionMax, OscillationDampener
        >>> callback = WeightConstraintCallback(
        ...     [BinaryPrecisionMax(12), OscillationDampener()], interval=5)
        >>> # model.fit(x, y, epochs=20, callbacks=[callback, keras.callbacks.CSVLogger("log.csv")])
    """

    def __init__(
        self,
        constraints: Sequence[WeightConstraint],
        *,
        interval: int = 1,
        targets: Literal["all", "kernel", "bias"] = "all",
        jit_compile: bool = False,
    ) -> None:
        super().__init__()
        constraints = list(constraints)
        for constraint in constraints:
            if not isinstance(constraint, WeightConstraint):
                raise TypeError(f"constraints must be WeightConstraint instances, got {constraint!r}")
        if not constraints:
            raise ValueError("constraints is empty; give at least one constraint")
        names = [c.name for c in constraints]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"each constraint kind may appear once, got several of {duplicated}")
        if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
        # sorted() is stable, so constraints at the same position keep their order.
        self.constraints = sorted(constraints, key=lambda c: c.chain_position)
        self.interval = int(interval)
        self.targets = targets
        self.jit_compile = bool(jit_compile)
        self.history: list[dict[str, float]] = []
        self._variables: list = []
        self._keys: list[str] = []
        self._compiled = None
        self._pending_state: dict[str, np.ndarray] | None = None

    @property
    def log_keys(self) -> list[str]:
        """The keys this callback adds to the epoch logs, in a fixed order."""
        keys = [f"{LOG_PREFIX}applied", f"{LOG_PREFIX}non_finite"]
        for c in self.constraints:
            keys += [f"{LOG_PREFIX}{c.name}/{stat}" for stat in (*_COMMON_STATS, *c.extra_stats)]
        return keys

    # -- lifecycle -------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        if self.model is not None and self.model.built:
            self._prepare()
            if self._pending_state is not None:
                self._assign_state(self._pending_state)
                self._pending_state = None

    # -- checkpointing ---------------------------------------------------------

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Per-weight constraint state and draw counters, for a training checkpoint."""
        arrays: dict[str, np.ndarray] = {}
        for c in self.constraints:
            for key, state in c._states.items():
                for name, variable in state.items():
                    arrays[f"{c.name}|{key}|{name}"] = np.asarray(variable.numpy())
            counter = getattr(c, "_counter", None)
            if counter is not None:
                arrays[f"{c.name}||counter"] = np.asarray(counter.numpy())
        return {"history": list(self.history)}, arrays

    def set_state(self, meta, arrays) -> None:
        """Restore :meth:`get_state`'s output; the variables are filled at training start."""
        self.history = [dict(row) for row in meta.get("history", [])]
        self._pending_state = dict(arrays)

    def _assign_state(self, arrays) -> None:
        by_name = {c.name: c for c in self.constraints}
        for full_key, value in arrays.items():
            name, key, var_name = full_key.split("|", 2)
            constraint = by_name.get(name)
            if constraint is None:
                continue
            if var_name == "counter":
                if getattr(constraint, "_counter", None) is not None:
                    constraint._counter.assign(value)
                continue
            state = constraint._states.get(key)
            if state is not None and var_name in state:
                state[var_name].assign(value)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.interval == 0:
            stats = self.apply()
        else:
            stats = dict.fromkeys(self.log_keys, 0.0)
        if logs is not None:
            logs.update(stats)
        self.history.append({"epoch": int(epoch), **stats})

    # -- application -----------------------------------------------------------

    def apply(self) -> dict[str, float]:
        """Apply the chain to the model's target weights now; returns the statistics.

        Called by :meth:`on_epoch_end`; also usable directly after
        ``set_model(model)``.
        """
        if self.model is None:
            raise RuntimeError("WeightConstraintCallback.apply() needs a model: call set_model(model) first")
        if self._compiled is None or self._targets_changed():
            self._prepare()
        stats = {key: float(value) for key, value in self._compiled().items()}
        return {key: stats[key] for key in self.log_keys}

    def _targets_changed(self) -> bool:
        current = [v for v in self.model.trainable_weights if is_target(v, self.targets)]
        return [id(v) for v in current] != [id(v) for v in self._variables]

    def _prepare(self) -> None:
        """Pick the target weights, create constraint state, wrap the chain."""
        variables = [v for v in self.model.trainable_weights if is_target(v, self.targets)]
        if not variables:
            raise ValueError(
                f"WeightConstraintCallback(targets={self.targets!r}): the model has no such "
                "trainable weights; use targets='all' or a model with them"
            )
        bad = [_variable_path(v) for v in variables if v.dtype not in ("float32", tf.float32)]
        if bad:
            raise ValueError(f"weight constraints need float32 weights; not float32: {bad}")
        keys: list[str] = []
        for v in variables:
            key = _variable_path(v)
            # Two weights with one path would otherwise share state.
            keys.append(key if key not in keys else f"{key}#{len(keys)}")
        for key, v in zip(keys, variables):
            for c in self.constraints:
                c.state_for(key, tuple(v.shape))
        self._variables, self._keys = variables, keys
        self._sizes = [int(np.prod(v.shape)) for v in variables]
        self._joined = 0  # the leading elementwise constraints run on all weights joined
        while self._joined < len(self.constraints) and self.constraints[self._joined].elementwise:
            self._joined += 1
        self._joined_states = [_joined_state(c, keys, variables, self._sizes) or {}
                               for c in self.constraints[:self._joined]]
        # Partials rather than bound methods: TensorFlow counts traces per code
        # object and would call one trace per callback "retracing".
        self._functions = (
            tf.function(functools.partial(WeightConstraintCallback._gather, self), autograph=False),
            tf.function(functools.partial(WeightConstraintCallback._core, self), jit_compile=self.jit_compile,
                        autograph=False),
            tf.function(functools.partial(WeightConstraintCallback._scatter, self), autograph=False),
        )
        self._compiled = self._run_chain

    def _run_chain(self) -> dict[str, tf.Tensor]:
        gather, core, scatter = self._functions
        return scatter(*core(*gather()))

    def tracing_counts(self) -> list[int]:
        """How often each of the chain's three compiled functions was traced (1 each after any number of applications)."""
        return [f.experimental_get_tracing_count() for f in self._functions]

    # The chain is three compiled functions. _gather joins every target weight
    # and the joined constraints' state into flat vectors; _core runs the
    # elementwise constraints (all but James-Stein) on them, a pure function of
    # its inputs (and of stochastic rounding's draw counters) that XLA compiles
    # into a few fused loops with ``jit_compile``;
    # _scatter writes weights and state back and runs James-Stein, which uses
    # each weight tensor's norm, weight by weight. The joined vector gives the
    # same values as weight by weight, in a twentieth of the ops.

    def _gather(self) -> tuple[tf.Tensor, list[dict[str, tf.Tensor]]]:
        weights = tf.concat([tf.reshape(v, [-1]) for v in self._variables], 0)
        return weights, [{name: joined.read_value() for name, joined in state.items()}
                         for state in self._joined_states]

    def _core(self, weights: tf.Tensor, states: list[dict[str, tf.Tensor]]):
        sums = {key: tf.constant(0.0, tf.float64) for key in self.log_keys}
        sums[f"{LOG_PREFIX}non_finite"] += _total(tf.logical_not(tf.math.is_finite(weights)))
        new_states = []
        for constraint, state in zip(self.constraints[:self._joined], states):
            held = {name: _Held(value) for name, value in state.items()}
            weights = self._step(constraint, weights, held or None, sums)
            new_states.append({name: value.value for name, value in held.items()})
        return weights, new_states, sums

    def _scatter(self, weights: tf.Tensor, states: list[dict[str, tf.Tensor]], sums: dict[str, tf.Tensor]
                 ) -> dict[str, tf.Tensor]:
        sums = dict(sums)
        for joined, values in zip(self._joined_states, states):
            for name, value in values.items():
                joined[name].assign(value)
        parts = tf.split(weights, self._sizes)
        for key, variable, part in zip(self._keys, self._variables, parts):
            part = tf.reshape(part, variable.shape)
            for c in self.constraints[self._joined:]:
                part = self._step(c, part, c.state_for(key, tuple(variable.shape)), sums)
            variable.assign(part)
        stats = {key: value / float(sum(self._sizes)) for key, value in sums.items()}
        stats[f"{LOG_PREFIX}applied"] = tf.constant(1.0, tf.float64)
        stats[f"{LOG_PREFIX}non_finite"] = sums[f"{LOG_PREFIX}non_finite"]
        return stats

    @staticmethod
    def _step(constraint: WeightConstraint, weights: tf.Tensor, state, sums: dict[str, tf.Tensor]) -> tf.Tensor:
        """One constraint on ``weights``; its statistics are added to ``sums``."""
        new, extras = constraint.transform(weights, state)
        prefix = f"{LOG_PREFIX}{constraint.name}/"
        changed = tf.not_equal(tf.bitcast(new, tf.int32), tf.bitcast(weights, tf.int32))
        both_finite = tf.math.is_finite(new) & tf.math.is_finite(weights)
        delta = tf.where(both_finite, tf.abs(new - weights), 0.0)
        sums[prefix + "fraction_changed"] += _total(changed)
        sums[prefix + "mean_abs_change"] += _total(delta)
        for stat, value in extras.items():
            sums[prefix + stat] += tf.cast(value, tf.float64)
        return new
