"""Heterogeneous effects: one segment level against the rest of its dimension (SPEC §11)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stats import frequentist
from stats._numeric import finite
from stats.compare import check_options


@dataclass(frozen=True)
class HeterogeneityTest:
    """Level effect against rest effect: z, two-sided p (Bonferroni-adjusted later)."""

    effect: float
    rest_effect: float
    statistic: float | None
    p_value: float | None


def level_vs_rest(
    *, effect: float, variance: float, rest_effect: float, rest_variance: float
) -> HeterogeneityTest:
    """z = (effect − rest_effect) / √(var_level + var_rest), two-sided normal p.

    Each variance is that of an absolute effect (a difference of means, unpooled).
    """
    total = variance + rest_variance
    if not math.isfinite(total) or total <= 0:
        return HeterogeneityTest(effect, rest_effect, None, None)
    statistic, p = frequentist.z_test(effect - rest_effect, math.sqrt(total))
    return HeterogeneityTest(effect, rest_effect, finite(statistic), finite(p))


def bonferroni(p_values: Sequence[float | None], *, alpha: float = 0.05) -> tuple[
    tuple[float | None, ...], tuple[bool, ...]
]:
    """Bonferroni over the family of present p-values: adjusted p and `detected` flags."""
    check_options(method="frequentist", alpha=alpha, direction="increase", mde=None)
    m = sum(p is not None for p in p_values)
    adjusted = tuple(
        None if p is None else float(np.minimum(p * m, 1.0)) for p in p_values
    )
    return adjusted, tuple(p is not None and p < alpha for p in adjusted)
