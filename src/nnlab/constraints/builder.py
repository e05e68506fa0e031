"""Turn the validated configuration into constraints and their callback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nnlab.config import Config, resolve_config
from nnlab.constraints.base import WeightConstraint
from nnlab.constraints.binary import BinaryChangeMax, BinaryPrecisionMax
from nnlab.constraints.callback import WeightConstraintCallback
from nnlab.constraints.james_stein import JamesSteinShrinkage
from nnlab.constraints.oscillation import (
    AdaptiveOscillationDampener,
    OscillationDampener,
)
from nnlab.constraints.step import StepConstraints, split_schedule

__all__ = ["build_constraint_callback", "build_constraints", "build_step_constraints"]


def build_constraints(config: Config | Mapping[str, Any] | None = None) -> list[WeightConstraint]:
    """The enabled constraints of a configuration, in chain order.

    Keys read (section ``model``):

    * ``use_adaptive_oscillation_dampener`` → :class:`AdaptiveOscillationDampener`;
      otherwise ``enable_weight_oscillation_dampener`` → :class:`OscillationDampener`.
      There is at most one dampener: the adaptive one replaces the plain one
      when both keys are true, and ``use_adaptive_oscillation_dampener`` alone
      also enables it.
    * ``enable_binary_change_max``, ``max_additional_binary_digits`` →
      :class:`BinaryChangeMax`;
    * ``enable_binary_precision_max``, ``max_binary_digits`` →
      :class:`BinaryPrecisionMax` (both with ``binary_rounding``; stochastic
      draws are seeded from ``seed``, a different stream per constraint);
    * ``enable_james_stein``, ``james_stein_target``,
      ``james_stein_noise_variance`` → :class:`JamesSteinShrinkage`.

    With the defaults (``max_binary_digits = 24``, ``max_additional_binary_digits
    = 16``) the two binary limits rarely change a weight; they are still built
    when enabled, so the statistics show that they ran.

    Args:
        config: a :class:`~nnlab.config.Config`, a flat dict of keys (on top of
            the defaults) or None (the defaults).

    Returns:
        The constraints in chain order (possibly empty).

    Raises:
        ConfigError: if a flat dict holds an unknown key or an invalid value.

    Example:
        >>> [c.name for c in build_constraints({"enable_james_stein": True})]
        ['adaptive_oscillation_dampener', 'binary_change_max', 'binary_precision_max', 'james_stein']
    """
    model = resolve_config(config).model
    seed = model.seed

    def seed_for(offset: int) -> int | None:
        return None if seed is None else (seed + offset) % 2**31

    constraints: list[WeightConstraint] = []
    if model.use_adaptive_oscillation_dampener:
        constraints.append(AdaptiveOscillationDampener())
    elif model.enable_weight_oscillation_dampener:
        constraints.append(OscillationDampener())
    if model.enable_binary_change_max:
        constraints.append(
            BinaryChangeMax(model.max_additional_binary_digits, rounding=model.binary_rounding, seed=seed_for(1))
        )
    if model.enable_binary_precision_max:
        constraints.append(
            BinaryPrecisionMax(model.max_binary_digits, rounding=model.binary_rounding, seed=seed_for(2))
        )
    if model.enable_james_stein:
        constraints.append(
            JamesSteinShrinkage(target=model.james_stein_target, noise_variance=model.james_stein_noise_variance)
        )
    return constraints


def build_constraint_callback(
    config: Config | Mapping[str, Any] | None = None, *, jit_compile: bool = False
) -> WeightConstraintCallback | None:
    """The :class:`WeightConstraintCallback` of a configuration, or None if no
    constraint is enabled.

    Uses :func:`build_constraints` plus ``constraint_interval`` and
    ``constraint_targets``. With ``constraint_schedule = "step"`` the binary
    limits are left out (see :func:`build_step_constraints`); the chain keeps
    the dampener and James-Stein.

    Args:
        config: a Config, a flat dict of keys or None (the defaults).
        jit_compile: compile the chain with XLA (see WeightConstraintCallback).

    Raises:
        ConfigError: if a flat dict holds an unknown key or an invalid value.

    Example:
        >>> build_constraint_callback({"constraint_interval": 5}).interval
        5
    """
    resolved = resolve_config(config)
    constraints = build_constraints(resolved)
    if resolved.model.constraint_schedule == "step":
        constraints = split_schedule(constraints)[1]
    if not constraints:
        return None
    return WeightConstraintCallback(
        constraints,
        interval=resolved.model.constraint_interval,
        targets=resolved.model.constraint_targets,
        jit_compile=jit_compile,
    )


def build_step_constraints(
    config: Config | Mapping[str, Any] | None = None, *, random_source: str = "hash"
) -> StepConstraints | None:
    """The per-step binary limits of a configuration with
    ``constraint_schedule = "step"``, or None (epoch schedule, or no binary
    limit enabled).

    Call :meth:`StepConstraints.attach` on the compiled model and pass the
    object to ``model.fit`` as a callback.

    Args:
        config: a Config, a flat dict of keys or None (the defaults).
        random_source: noise source of stochastic rounding (``"hash"`` or ``"philox"``).

    Example:
        >>> step = build_step_constraints({"constraint_schedule": "step", "max_binary_digits": 4,
        ...                                "binary_rounding": "stochastic", "enable_binary_change_max": False,
        ...                                "use_adaptive_oscillation_dampener": False,
        ...                                "enable_weight_oscillation_dampener": False})
        >>> step.precision_max.max_bits, step.rounding
        (4, 'stochastic')
    """
    resolved = resolve_config(config)
    if resolved.model.constraint_schedule != "step":
        return None
    step = split_schedule(build_constraints(resolved))[0]
    if not step:
        return None
    by_type = {type(c): c for c in step}
    return StepConstraints(
        precision_max=by_type.get(BinaryPrecisionMax),
        change_max=by_type.get(BinaryChangeMax),
        targets=resolved.model.constraint_targets,
        seed=resolved.model.seed,
        random_source=random_source,
    )
