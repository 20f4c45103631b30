"""Report alerts (SPEC §6): what a manager must see now, whatever ``min_days``.

Three kinds: ``guardrail_breach`` (a guardrail significantly worse for a treatment, by the
report's own framework: its comparison's verdict is ``worse``), ``srm`` (sample ratio
mismatch detected) and ``events_before_exposure`` (more than 5 % of a variant's metric
events in the window happened before the unit's exposure: clocks or the integration are
off). The same alerts are the risks of shipping a winner (``lifecycle.ship_risks``), and a
breach is announced once per metric and variant (``guardrail.breached``), which
:func:`first_breaches` remembers in ``guardrail_notifications``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.models import GuardrailNotification

BEFORE_EXPOSURE_SHARE = 0.05  # above this share of a variant's events, the alert fires
Alert = dict[str, Any]


def _alert(kind: str, metric: str | None, variant: str | None, message: str) -> Alert:
    return {"kind": kind, "metric": metric, "variant": variant, "message": message}


def _lift(comparison: Mapping[str, Any]) -> str:
    relative = comparison.get("relative_effect")
    if isinstance(relative, int | float):
        return f" ({relative:+.1%})"
    absolute = comparison.get("absolute_effect")
    return f" ({absolute:+.3g})" if isinstance(absolute, int | float) else ""


def breached_guardrails(body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(guardrail key, comparison) for every treatment significantly worse on a guardrail."""
    return [(metric["key"], comparison)
            for metric in body.get("metrics") or [] if metric.get("role") == "guardrail"
            for comparison in metric.get("comparisons") or []
            if comparison.get("verdict") == "worse"]


def guardrail_breaches(body: Mapping[str, Any]) -> list[Alert]:
    """A ``guardrail_breach`` per guardrail and treatment whose verdict is ``worse``."""
    return [_alert("guardrail_breach", key, comparison["variant"],
                   f"guardrail {key} is significantly worse for "
                   f"{comparison['variant']}{_lift(comparison)}")
            for key, comparison in breached_guardrails(body)]


def srm_alerts(body: Mapping[str, Any]) -> list[Alert]:
    """The ``srm`` alert when the report detected a sample ratio mismatch."""
    srm = body.get("srm") or {}
    if not srm.get("detected"):
        return []
    p_value = srm.get("p_value")
    shown = f" (p = {p_value:.2g})" if isinstance(p_value, int | float) else ""
    return [_alert("srm", None, None, f"sample ratio mismatch{shown}: the units per variant "
                   "do not follow the configured weights, so the results cannot be trusted")]


def before_exposure_alerts(timing: Mapping[str, Sequence[float]],
                           variants: Sequence[str]) -> list[Alert]:
    """An ``events_before_exposure`` alert per variant whose early share exceeds 5 %."""
    alerts = []
    for variant in variants:
        before, after = timing.get(variant, (0.0, 0.0))
        total = before + after
        if total and before / total > BEFORE_EXPOSURE_SHARE:
            alerts.append(_alert(
                "events_before_exposure", None, variant,
                f"{before / total:.1%} of {variant}'s metric events ({int(before):,} of "
                f"{int(total):,}) happened before the unit's exposure: check the clocks and "
                "that the exposure is sent when the variant is shown"))
    return alerts


def report_alerts(body: Mapping[str, Any], timing: Mapping[str, Sequence[float]],
                  variants: Sequence[str]) -> list[Alert]:
    """Every alert of a report body, guardrail breaches first."""
    return [*guardrail_breaches(body), *srm_alerts(body),
            *before_exposure_alerts(timing, variants)]


def risks_of_shipping(body: Mapping[str, Any] | None, winner: str) -> list[Alert]:
    """What a report says against shipping ``winner``: its guardrail breaches and an SRM."""
    if not body or body.get("error"):
        return []
    return [*(a for a in guardrail_breaches(body) if a["variant"] == winner), *srm_alerts(body)]


def first_breaches(session: Session, experiment_id: int, report_id: int,
                   body: Mapping[str, Any], now: datetime) -> list[Alert]:
    """The breaches never announced before for their metric and variant, now remembered."""
    breaches = guardrail_breaches(body)
    if not breaches:
        return []
    known = {(row.metric_key, row.variant_key) for row in session.execute(
        select(GuardrailNotification.metric_key, GuardrailNotification.variant_key)
        .where(GuardrailNotification.experiment_id == experiment_id))}
    fresh = [a for a in breaches if (a["metric"], a["variant"]) not in known]
    session.add_all(GuardrailNotification(experiment_id=experiment_id, metric_key=a["metric"],
                                          variant_key=a["variant"], report_id=report_id,
                                          notified_at=now) for a in fresh)
    return fresh
