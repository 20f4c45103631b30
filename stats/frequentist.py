"""Fixed-horizon tests: unpooled z (proportions, ratio, NPS) and Welch's t (means)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats as sps


def z_test(diff: float, se: float) -> tuple[float, float]:
    """Two-sided z statistic and p-value of diff / se."""
    statistic = diff / se
    return statistic, float(2.0 * sps.norm.sf(np.abs(statistic)))


def welch_df(se2_control: float, n_control: int, se2_treatment: float, n_treatment: int) -> float:
    """Welch-Satterthwaite degrees of freedom from squared standard errors."""
    total = se2_control + se2_treatment
    return (
        total
        * total
        / (
            se2_control * se2_control / (n_control - 1)
            + se2_treatment * se2_treatment / (n_treatment - 1)
        )
    )


def t_test(diff: float, se: float, df: float) -> tuple[float, float]:
    """Two-sided t statistic and p-value of diff / se with df degrees of freedom."""
    statistic = diff / se
    return statistic, float(2.0 * sps.t.sf(np.abs(statistic), df))


def critical_value(alpha: float, df: float | None = None) -> float:
    """Two-sided critical value: normal, or Student t when df is given."""
    if df is None:
        return _normal_critical_value(alpha)
    return float(sps.t.isf(alpha / 2.0, df))


@lru_cache(maxsize=64)
def _normal_critical_value(alpha: float) -> float:
    """Every arm of every report at the same alpha needs it: scipy's isf costs ~0.1 ms."""
    return float(sps.norm.isf(alpha / 2.0))


def relative_change(mean_treatment: float, mean_control: float) -> float:
    """(t - c) / |c|: t / c - 1 for a positive control, and still "up is up" for a negative
    one (a loss of -8.7 per user shrinking to -5.0 is +43 %, not -43 %)."""
    return (mean_treatment - mean_control) / abs(mean_control)

