"""The report's sections (SPEC §6), built from the pipeline's aggregates: metrics with their
comparisons and multiple-testing families, funnel, friction matrix and points, timelines.
Pure functions of the aggregates and the experiment's definition — no session, no storage —
so experiments, holdouts, segments and warehouses all build the same report.

Multiple testing: ``adjusted_p_value`` is corrected (Holm or BH, per ``analysis.correction``)
across every treatment × primary and secondary metric; guardrails form their own family
(treatments × guardrails) so that adding secondary metrics never makes a harmful change
harder to catch. Friction points are BH-adjusted across every step × friction kind ×
treatment. With the sequential method each p-value is the running minimum over the
experiment's reports (always valid, so this keeps the error rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from experiments.models import Metric, Variant
from experiments.schemas import BANDIT_METRIC_KINDS, FRICTION_KINDS, AnalysisSettings
from experiments.services import alerts, bandits, quantiles
from experiments.services.pipeline import (
    CUPED_KINDS,
    ORDER_STATISTIC_KINDS,
    ExperimentAggregates,
    JourneyCounts,
    to_stats,
)
from experiments.services.results import comparison_to_dict, pair
from stats import (
    Comparison,
    CupedStats,
    ProportionStats,
    StatsInputError,
    VariantInput,
    analyze_variants,
    apply_correction,
    compare,
    per_unit_sd,
    srm_test,
    summarize,
)

Sums = Mapping[str, float]


MAX_TIMELINE_DAYS = 400
TIMELINE_NOTE = ("quantile metrics are not in the timelines: order statistics do not add up "
                 "per day")


class ReportSubject(Protocol):
    """What the report's builders read of what is analysed: an :class:`Experiment`, or a
    holdout's two groups as variants (:mod:`experiments.services.holdout_reports`)."""

    @property
    def key(self) -> str: ...
    @property
    def variants(self) -> Sequence[Variant]: ...
    @property
    def metrics(self) -> Sequence[Metric]: ...
    @property
    def journey(self) -> Sequence[str]: ...
    @property
    def started_at(self) -> datetime | None: ...


# -- per-metric results ---------------------------------------------------------------------


def _inputs(experiment: ReportSubject, kind: str, totals: Mapping[str, Sums],
            cuped: bool) -> list[VariantInput]:
    """One VariantInput per configured variant (absent variants have 0 units)."""
    records = [(v, *to_stats(kind, totals.get(v.key, {}))) for v in experiment.variants]
    # No pre-exposure activity at all (new visitors): CUPED has nothing to adjust with.
    use_cuped = cuped and kind in CUPED_KINDS and any(
        c is not None and c.pre_sum_squares > 0 for _, _, c in records)
    return [VariantInput(v.key, v.is_control, record,
                         (c or CupedStats(0.0, 0.0, 0.0)) if use_cuped else None)
            for v, record, c in records]


# Kinds computed from order statistics, not from additive sums (SPEC §11): outside the
# single pass, its rollup and the per-day timelines.


def _analyze_metric(experiment: ReportSubject, metric: Any, settings: AnalysisSettings,
                    totals: Mapping[str, Sums], previous: Mapping[str, float | None],
                    warnings: list[str]) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """Variant estimates and raw comparisons of one metric (never raises on bad data)."""
    options = {"method": settings.method, "alpha": settings.alpha, "correction": "none",
               "direction": metric.direction, "mde": settings.mde,
               "previous_p_values": previous}
    result = None
    for cuped in ((True, False) if settings.cuped else (False,)):
        try:
            inputs = _inputs(experiment, metric.kind, totals, cuped)
            result = analyze_variants(metric.kind, inputs, **options)
            break
        except StatsInputError as error:
            warnings.append(f"{metric.key}: {error}")
    if result is None:
        return [{"variant": v.key, "units": int(totals.get(v.key, {}).get("n", 0)),
                 "estimate": None, "ci": None} for v in experiment.variants], []
    warnings.extend(f"{metric.key}: {note}" for note in result.warnings
                    if not note.startswith("srm:"))
    for comparison in result.comparisons:
        warnings.extend(f"{metric.key}, {comparison.variant}: {note}"
                        for note in comparison.warnings)
    variants = [{"variant": v.variant, "units": v.units, "estimate": v.estimate,
                 "ci": pair(v.ci), **counts_of(metric.kind, totals.get(v.variant, {})),
                 **spread_of(metric.kind, totals.get(v.variant, {}))}
                for v in result.variants]
    return variants, list(result.comparisons)


SD_KINDS = ("mean", "count", "ratio", "time_to_convert", "nps")


def spread_of(kind: str, sums: Sums) -> dict[str, float | None]:
    """The observed per-unit SD (``sd``) of kinds whose spread is not implied by the estimate,
    so the portfolio's power calculation can plan with it. Raw values, before CUPED."""
    if kind not in SD_KINDS:
        return {}
    try:
        return {"sd": per_unit_sd(to_stats(kind, sums)[0])}
    except StatsInputError:
        return {"sd": None}


COUNT_FIELDS = {"conversion": {"conversions": "sum"}, "friction": {"conversions": "sum"},
                "mean": {"sum": "sum"}, "count": {"sum": "sum"},
                "time_to_convert": {"sum": "sum"},
                "nps": {"promoters": "promoters", "detractors": "detractors"},
                "ratio": {"numerator_sum": "num_sum", "denominator_sum": "den_sum"}}


def counts_of(kind: str, sums: Sums) -> dict[str, float]:
    """The numerator counts behind an estimate, so a reader sees '204 / 1,644', not a bare rate."""
    out = {}
    for name, source in COUNT_FIELDS.get(kind, {}).items():
        value = float(sums.get(source, 0.0))
        out[name] = int(value) if name in ("conversions", "promoters", "detractors") else value
    return out


def _corrected(families: Mapping[str, list[tuple[str, Comparison]]],
               correction: str) -> dict[str, list[Comparison]]:
    """Adjust each family jointly; returns the comparisons per metric key in order."""
    out: dict[str, list[Comparison]] = {}
    for members in families.values():
        adjusted = apply_correction([c for _, c in members], correction)  # type: ignore[arg-type]
        for (key, _), comparison in zip(members, adjusted, strict=True):
            out.setdefault(key, []).append(comparison)
    return out


def metrics_section(experiment: ReportSubject, settings: AnalysisSettings,
                    aggregates: ExperimentAggregates, previous: Mapping[str, Mapping[str, Any]],
                    warnings: list[str], bandit: bandits.BanditPeriods | None = None
                    ) -> list[dict[str, Any]]:
    """Every metric's estimates and corrected comparisons, in configuration order (a
    bandit's metrics period-weighted before the correction, SPEC §13)."""
    entries, families = [], {"decision": [], "guardrail": []}
    for metric in experiment.metrics:
        notes: list[str] = []
        if metric.kind in ORDER_STATISTIC_KINDS:
            variants, comparisons = quantiles.quantile_metric(
                experiment, metric, settings, aggregates.quantiles.get(metric.key, {}), notes)
        else:
            variants, comparisons = _analyze_metric(
                experiment, metric, settings, aggregates.metrics[metric.key].totals(),
                previous.get(metric.key, {}), notes)
            if bandit is not None:
                comparisons = bandits.weigh_metric(bandit, settings, metric, variants,
                                                   comparisons, notes)
        warnings += notes
        family = "guardrail" if metric.role == "guardrail" else "decision"
        families[family] += [(metric.key, c) for c in comparisons]
        entries.append({"key": metric.key, "kind": metric.kind, "role": metric.role,
                        "direction": metric.direction, "variants": variants,
                        "warnings": notes, **quantile_fields(metric),
                        **_cap_entry(metric.cap, aggregates.caps.get(metric.key, {}))})
    corrected = _corrected(families, settings.correction)
    for entry in entries:
        entry["comparisons"] = [comparison_to_dict(c) for c in corrected.get(entry["key"], [])]
    return entries


def quantile_fields(metric: Any) -> dict[str, Any]:
    """A quantile metric's level and source (and step, for a time on step), so readers
    label "p90 of time on payment (s)"."""
    if metric.kind not in ORDER_STATISTIC_KINDS:
        return {}
    step = {"step": metric.step} if metric.source == "step_duration" else {}
    return {"quantile": metric.quantile, "source": metric.source, **step}


def _cap_entry(cap: Mapping[str, Any] | None,
               used: Mapping[str, float | None]) -> dict[str, Any]:
    """The metric's cap as configured, with the threshold this analysis used
    (``capped_at``; a ratio's denominator has its own, ``denominator_capped_at``)."""
    if not cap:
        return {}
    entry = {"type": cap["type"], "value": cap["value"],
             "capped_at": used.get("y", used.get("num"))}
    if "den" in used:
        entry["denominator_capped_at"] = used["den"]
    return {"cap": entry}


# -- funnel, friction points, timeline ------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def funnel_section(journey: Sequence[str], units: Mapping[str, int], counts: JourneyCounts,
                   time_on_step: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
                   ) -> list[dict[str, Any]]:
    """Units reaching each journey step per variant, with the p50/p90 seconds spent on the
    step by the units that left it for a later one (``time_on_step``, SPEC §11); marks the
    largest pooled drop-off."""
    steps, previous = [], dict(units)
    drops: list[float] = []
    for step in journey:
        variants = {}
        for variant, total in units.items():
            reached = counts.reached.get((variant, step), 0)
            variants[variant] = {"units": reached, "rate": _ratio(reached, total),
                                 "from_previous": _ratio(reached, previous[variant])}
            if time_on_step is not None:
                variants[variant]["time_on_step"] = dict(time_on_step.get(
                    (variant, step), {"p50": None, "p90": None, "n": 0}))
        before, now = sum(previous.values()), sum(v["units"] for v in variants.values())
        drops.append(1.0 - now / before if before else -1.0)
        previous = {variant: entry["units"] for variant, entry in variants.items()}
        steps.append({"step": step, "variants": variants, "largest_drop_off": False})
    if drops and max(drops) > 0:
        steps[drops.index(max(drops))]["largest_drop_off"] = True
    return steps


def friction_matrix(experiment: ReportSubject, settings: AnalysisSettings,
                    units: Mapping[str, int], counts: JourneyCounts) -> list[dict[str, Any]]:
    """Every step × friction kind × treatment cell with friction, BH-adjusted (the heatmap)."""
    control = next(v.key for v in experiment.variants if v.is_control)
    observed = {step for _, step, _ in counts.friction}
    steps = [*experiment.journey, *sorted(observed - set(experiment.journey))]
    tests, cells = [], []
    for step in steps:
        for kind in FRICTION_KINDS:
            base = counts.friction.get((control, step, kind), 0)
            for variant in (v.key for v in experiment.variants if not v.is_control):
                hits = counts.friction.get((variant, step, kind), 0)
                if base == 0 and hits == 0:
                    continue
                arms = [summarize(ProportionStats(units.get(key, 0), count))
                        for key, count in ((control, base), (variant, hits))]
                tests.append(compare("friction", *arms, variant=variant,
                                     method=settings.method, alpha=settings.alpha,
                                     direction="decrease", mde=settings.mde))
                cells.append((step, kind, arms, (base, hits, units.get(control, 0),
                                                 units.get(variant, 0))))
    return [{"step": step, "friction_kind": kind, "variant": comparison.variant,
             "rate": arms[1].mean, "control_rate": arms[0].mean,
             "count": hits, "units": n, "control_count": base, "control_units": control_n,
             "relative_effect": comparison.relative_effect,
             "adjusted_p_value": comparison.adjusted_p_value,
             "chance_to_win": comparison.chance_to_win,
             "significant": comparison.significant}
            for comparison, (step, kind, arms, (base, hits, control_n, n))
            in zip(apply_correction(tests, "bh"), cells, strict=True)]


FRICTION_POINT_FIELDS = ("step", "friction_kind", "variant", "rate", "control_rate",
                         "relative_effect", "adjusted_p_value", "chance_to_win")


def _uncertainty(point: Mapping[str, Any]) -> float:
    """How far from decisive a point is, in its report's framework: the adjusted p-value, or
    (Bayesian) the posterior probability of the other side, min(chance to win, 1 − it)."""
    if point["adjusted_p_value"] is not None:
        return float(point["adjusted_p_value"])
    chance = point.get("chance_to_win")
    return 1.0 if chance is None else min(chance, 1.0 - chance)


def friction_points(matrix: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The significant cells, most significant first (ties: larger |relative effect| first)."""
    points = [{name: cell.get(name) for name in FRICTION_POINT_FIELDS}
              for cell in matrix if cell["significant"]]
    points.sort(key=lambda p: (_uncertainty(p), -abs(p["relative_effect"] or 0.0)))
    return points


def _days(first: date, last: date) -> list[date]:
    count = min((last - first).days + 1, MAX_TIMELINE_DAYS)
    start = last - timedelta(days=count - 1)
    return [start + timedelta(days=i) for i in range(count)]


def timeline_section(experiment: ReportSubject, settings: AnalysisSettings,
                     aggregates: ExperimentAggregates, now: datetime,
                     bandit: bandits.BanditPeriods | None = None) -> list[dict[str, Any]]:
    """Per day: cumulative units and the primary metric's absolute and relative effects with
    their intervals (NPS has only the absolute one, in points). None for a quantile metric:
    its order statistics do not add up per day (the report says so). A bandit's are
    period-weighted, as its metrics table is: pooled, its last day contradicted the table
    (even in sign when the weights moved a lot)."""
    primary = next((m for m in experiment.metrics if m.role == "primary"), None)
    exposure_days = aggregates.units.days()
    if primary is None or primary.kind in ORDER_STATISTIC_KINDS or not exposure_days:
        return []
    first = date.fromisoformat(exposure_days[0])
    if experiment.started_at is not None:
        first = min(first, experiment.started_at.date())
    last = max(now.date(), date.fromisoformat(exposure_days[-1]))
    daily = aggregates.metrics[primary.key]
    points = []
    weighted = _weighted(bandit, primary)
    for day in _days(first, last):
        totals = daily.totals(until=day.isoformat())
        if weighted is not None:
            comparisons = _weighted_comparisons(weighted, settings, primary,
                                                ("", day.isoformat()))
        else:
            _, comparisons = _analyze_metric(experiment, primary, settings, totals, {}, [])
        for comparison in comparisons:
            points.append({"date": day.isoformat(), "variant": comparison.variant,
                           "units": int(totals.get(comparison.variant, {}).get("n", 0)),
                           "absolute_effect": comparison.absolute_effect,
                           "absolute_ci": pair(comparison.absolute_ci),
                           "relative_effect": comparison.relative_effect,
                           "relative_ci": pair(comparison.relative_ci)})
    return points


def _effect(kind: str, control: Sums, treatment: Sums, settings: AnalysisSettings,
            direction: str) -> dict[str, Any]:
    """Absolute effect and its interval for one pair of sums (no CUPED, no correction)."""
    units = {"units": int(treatment.get("n", 0)), "control_units": int(control.get("n", 0))}
    try:
        arms = [summarize(to_stats(kind, sums)[0]) for sums in (control, treatment)]
        result = compare(kind, *arms, method=settings.method,  # type: ignore[arg-type]
                         alpha=settings.alpha, direction=direction,  # type: ignore[arg-type]
                         mde=settings.mde)
    except (StatsInputError, ArithmeticError):
        return {**units, "absolute_effect": None, "absolute_ci": None}
    return {**units, "absolute_effect": result.absolute_effect,
            "absolute_ci": pair(result.absolute_ci)}


def _weighted(bandit: bandits.BanditPeriods | None, metric: Metric
              ) -> bandits.BanditPeriods | None:
    """The bandit's periods when ``metric``'s report numbers are period-weighted."""
    return bandit if bandit is not None and metric.kind in BANDIT_METRIC_KINDS else None


def _weighted_comparisons(bandit: bandits.BanditPeriods, settings: AnalysisSettings,
                          metric: Metric, days: bandits.DaySpan) -> list[Comparison]:
    """Period-weighted comparisons over the units exposed on ``days`` (none on bad data)."""
    try:
        return bandits.weighted_comparisons(bandit, settings, metric, days=days)[1]
    except (StatsInputError, ArithmeticError):
        return []


def metric_timeline_section(experiment: ReportSubject, settings: AnalysisSettings,
                            aggregates: ExperimentAggregates,
                            bandit: bandits.BanditPeriods | None = None
                            ) -> list[dict[str, Any]]:
    """Per metric, exposure day and treatment: that day's cohort effect and the running total.

    Reuses the per-variant/day sums the analysis already holds: no extra query. Only days
    with exposures appear (the chart's x-axis), capped at the last MAX_TIMELINE_DAYS.
    Quantile metrics are left out (not additive per day). A bandit's per-unit means are
    period-weighted, as in its metrics table.
    """
    control = next((v.key for v in experiment.variants if v.is_control), None)
    days = aggregates.units.days()[-MAX_TIMELINE_DAYS:]
    if control is None or not days:
        return []
    treatments = [v.key for v in experiment.variants if not v.is_control]
    out = []
    for metric in (m for m in experiment.metrics if m.kind not in ORDER_STATISTIC_KINDS):
        daily = aggregates.metrics[metric.key]
        running = daily.totals(until=_day_before(days[0]))  # days cut off by the cap
        points = []
        for day in days:
            for key in (control, *treatments):  # running totals: one pass over the days
                for name, value in daily.rows.get((key, day), {}).items():
                    running[key][name] += value
            pairs = {variant: {
                "daily": [daily.rows.get((key, day), {}) for key in (control, variant)],
                "cumulative": [running[key] for key in (control, variant)]}
                for variant in treatments}
            effects = {variant: {name: _effect(metric.kind, *sums, settings, metric.direction)
                                 for name, sums in named.items()}
                       for variant, named in pairs.items()}
            weighted = _weighted(bandit, metric)
            if weighted is not None:
                for name, span in (("daily", (day, day)), ("cumulative", ("", day))):
                    _replace_effects(effects, name, _weighted_comparisons(
                        weighted, settings, metric, span))
            points += [{"date": day, "variant": variant, **effects[variant]}
                       for variant in treatments]
        out.append({"metric": metric.key, "kind": metric.kind, "points": points})
    return out


def _replace_effects(effects: dict[str, dict[str, dict[str, Any]]], name: str,
                     comparisons: Sequence[Comparison]) -> None:
    """Put weighted effects in place of the pooled ones (the unit counts stay pooled)."""
    for variant, named in effects.items():
        comparison = next((c for c in comparisons if c.variant == variant), None)
        named[name].update(
            absolute_effect=None if comparison is None else comparison.absolute_effect,
            absolute_ci=None if comparison is None else pair(comparison.absolute_ci))


def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


# -- the report -----------------------------------------------------------------------------


def previous_p_values(previous: Mapping[str, Any] | None,
                      method: str) -> dict[str, dict[str, Any]]:
    """Raw p-values of the last sequential report, per metric and variant (running minimum)."""
    if method != "sequential" or not previous or previous.get("method") != "sequential":
        return {}
    return {metric["key"]: {c["variant"]: c.get("p_value") for c in metric.get("comparisons", [])}
            for metric in previous.get("metrics", [])}


def build_report(experiment: ReportSubject, settings: AnalysisSettings,
                 aggregates: ExperimentAggregates, *, now: datetime,
                 previous: Mapping[str, Any] | None = None,
                 bandit: bandits.BanditPeriods | None = None) -> dict[str, Any]:
    """The SPEC §6 report body, without its decision (pure: no database access); a
    bandit's per-period aggregates (whose pooled sums are ``aggregates``) make it
    period-weighted (SPEC §13)."""
    warnings: list[str] = []
    totals = aggregates.units.totals()
    units = {v.key: int(totals.get(v.key, {}).get("n", 0)) for v in experiment.variants}
    unknown = sorted(set(totals) - set(units))
    if unknown:
        warnings.append(f"exposures to unknown variants ignored: {', '.join(unknown)}")
    if sum(units.values()) == 0:
        warnings.append("no exposed units yet")
    if aggregates.multi_variant_units:
        warnings.append(f"{aggregates.multi_variant_units} units exposed to several variants "
                        "left out")
    warnings += [f"variant {key} has no units" for key, n in units.items()
                 if n == 0 and sum(units.values())]
    srm = srm_test(list(units.values()), [v.weight for v in experiment.variants])
    matrix = friction_matrix(experiment, settings, units, aggregates.journey)
    if any(m.kind in ORDER_STATISTIC_KINDS for m in experiment.metrics):
        warnings.append(TIMELINE_NOTE)
    body = {
        "experiment": experiment.key, "computed_at": now.isoformat(), "method": settings.method,
        "units": units, "srm": {"p_value": srm.p_value, "detected": srm.detected},
        "metrics": metrics_section(experiment, settings, aggregates,
                                   previous_p_values(previous, settings.method), warnings,
                                   bandit),
        "funnel": funnel_section(experiment.journey, units, aggregates.journey,
                                 aggregates.time_on_step),
        "friction_points": friction_points(matrix),
        "friction_matrix": matrix,
        "timeline": timeline_section(experiment, settings, aggregates, now, bandit),
        "metric_timeline": metric_timeline_section(experiment, settings, aggregates, bandit),
        "decision": None,
        "warnings": list(dict.fromkeys(warnings)),
        # Additive (not in SPEC §6): units left out for being exposed to several variants.
        "data_quality": {"multi_variant_units": aggregates.multi_variant_units},
    }
    body["alerts"] = alerts.report_alerts(body, aggregates.timing, list(units))
    if bandit is not None:
        bandits.apply_to_report(bandit, body)
    return body
