"""Number and date formatting for the templates (None always renders as an en dash)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from admin.messages import summary_line
from experiments.services.decisions import chance_text

DASH = "–"
VERDICT_LABELS = {"better": "Better", "worse": "Worse", "flat": "Flat",
                  "inconclusive": "Inconclusive"}
OUTCOME_LABELS = {"ship": "Ship", "rollback": "Roll back", "keep_running": "Keep running",
                  "no_difference": "No difference"}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Any, digits: int = 1) -> str:
    """0.1234 → '12.3%'."""
    return f"{value * 100:.{digits}f}%" if _finite(value) else DASH


def chance(value: Any, digits: int = 1) -> str:
    """A chance to win or to be best: '97.3%', '>99.9%', '<0.1%' (never certainty)."""
    return chance_text(float(value), digits) if _finite(value) else DASH


def signed_pct(value: Any, digits: int = 1) -> str:
    """0.05 → '+5.0%', with a real minus sign."""
    return f"{value * 100:+.{digits}f}%".replace("-", "−") if _finite(value) else DASH


def interval(bounds: Any, *, relative: bool = True, digits: int = 1) -> str:
    """[a, b] → '[−1.0%, +4.2%]' (or plain numbers for absolute effects)."""
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        return DASH
    render = (lambda v: signed_pct(v, digits)) if relative else number
    return f"[{render(bounds[0])}, {render(bounds[1])}]"


def number(value: Any, digits: int = 4) -> str:
    """A compact number: integers with separators, floats with ``digits`` significant digits."""
    if not _finite(value):
        return DASH
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}g}".replace("-", "−")


def estimate(kind: Any, value: Any) -> str:
    """A metric's estimate in its unit: shares as percentages, NPS in points, else a number."""
    if kind in ("conversion", "friction"):
        return pct(value, 2)
    if kind == "nps" and _finite(value):
        return f"{value:+.1f}".replace("-", "−")
    if _finite(value) and not float(value).is_integer():  # zeros kept: 8.840 beside 6.424
        return _fixed(value)
    return number(value)


def duration(seconds: Any, decimals: int | None = None) -> str:
    """Seconds for people: 42.5 → '42.5 s', 125 → '2 min 5 s', 5400 → '1 h 30 min'; under a
    minute with 3 significant digits, or ``decimals`` places (bounds that share them)."""
    if not _finite(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.{decimals}f} s" if decimals is not None else f"{seconds:.3g} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def signed_duration(seconds: Any, decimals: int | None = None) -> str:
    """A change of duration: '+0.408 s', '−1 min 5 s'."""
    if not _finite(seconds):
        return DASH
    return ("−" if seconds < 0 else "+") + duration(abs(seconds), decimals)


def estimate_in(kind: Any, value: Any, unit: str = "") -> str:
    """:func:`estimate` in the metric's unit: seconds read as durations ('2 min 41 s')."""
    if unit == "s":
        return duration(value)
    return estimate(kind, value) + (f" {unit}" if unit and _finite(value) else "")


def effect_in(kind: Any, value: Any, unit: str = "") -> str:
    """:func:`effect` in the metric's unit: seconds as signed durations ('−8.5 s')."""
    if unit == "s":
        return signed_duration(value)
    return effect(kind, value) + (f" {unit}" if unit and _finite(value) else "")


def effect_interval_in(kind: Any, bounds: Any, unit: str = "") -> str:
    """:func:`effect_interval` in the metric's unit: '[−6.78 s, +7.60 s]' for seconds (bounds
    under a minute share the decimals of the larger one's 3 significant digits)."""
    if unit != "s":
        shown = effect_interval(kind, bounds)
        return shown + (f" {unit}" if unit and shown != DASH else "")
    return _bounds(bounds, lambda bound: signed_duration(bound, _decimals(*bounds) - 1))


def pvalue(value: Any) -> str:
    """p-values as statisticians write them."""
    if not _finite(value):
        return DASH
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def when(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM UTC'."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return DASH
    return value.strftime("%Y-%m-%d %H:%M UTC")


def verdict_label(verdict: Any) -> str:
    return VERDICT_LABELS.get(str(verdict), DASH)


def outcome_label(outcome: Any) -> str:
    return OUTCOME_LABELS.get(str(outcome), str(outcome or DASH))


def error_text(exc: Any) -> str:
    """An ApiError as one line for people: each field's label and problem, said once."""
    details = [d for d in getattr(exc, "details", None) or [] if isinstance(d, dict)]
    if not details or any(not d.get("field") for d in details):
        return str(exc.summary()) if details else str(exc.message)
    lines = dict.fromkeys(summary_line(str(d["field"]), str(d.get("message", ""))) for d in details)
    return "; ".join(lines)


def count(value: Any) -> str:
    """A whole count with thousands separators: 1644 → '1,644'."""
    return f"{int(value):,}" if _finite(value) else DASH


def counts(kind: Any, entry: Any) -> str:
    """What an estimate is made of: '(204 / 1,644)' for rates, '(n = 1,644)' otherwise. A
    bandit's period-weighted rate is not that quotient: '(weighted; raw 204 / 1,644)'."""
    if not isinstance(entry, dict):
        return ""
    if kind in ("conversion", "friction") and _finite(entry.get("conversions")):
        raw = f"{count(entry['conversions'])} / {count(entry.get('units'))}"
        return f"(weighted; raw {raw})" if entry.get("period_weighted") else f"({raw})"
    return f"(n = {count(entry.get('units'))})" if _finite(entry.get("units")) else ""


def _effect_number(kind: Any, value: Any, decimals: int | None = None) -> str:
    if kind in ("conversion", "friction"):
        return f"{value * 100:+.2f}".replace("-", "−")
    if kind == "nps":
        return f"{value:+.1f}".replace("-", "−")
    return _fixed(value, "+", decimals)


def _fixed(value: float, sign: str = "", decimals: int | None = None) -> str:
    """``value`` with ``decimals`` places (default: 4 significant digits), thousands
    separated, a real minus sign."""
    places = _decimals(value) if decimals is None else decimals
    return f"{value:{sign},.{places}f}".replace("-", "−")


def _decimals(*values: float) -> int:
    """Decimal places giving the largest of ``values`` 4 significant digits (never
    scientific notation: '+12,346', '+2.415', '+0.05422')."""
    largest = max(abs(v) for v in values)
    return 3 if largest == 0 else max(0, 3 - math.floor(math.log10(largest)))


def effect_suffix(kind: Any) -> str:
    """The unit of an absolute effect: percentage points for rates, points for NPS."""
    return {"conversion": " pts", "friction": " pts", "nps": " points"}.get(str(kind), "")


def effect(kind: Any, value: Any) -> str:
    """An absolute effect in the metric's unit: '+1.96 pts', '+3.2 points', '+0.41'."""
    return _effect_number(kind, value) + effect_suffix(kind) if _finite(value) else DASH


def risk(kind: Any, value: Any) -> str:
    """A Bayesian expected loss in the metric's unit, unsigned (a loss is never negative:
    '+0.00 pts' read as a gain): '0.90 pts'."""
    return effect(kind, value).removeprefix("+")


def _bounds(bounds: Any, show: Any) -> str:
    """'[low, high]' with each bound shown by ``show``; a dash unless two finite bounds."""
    if not isinstance(bounds, list | tuple) or len(bounds) != 2 or not all(
            _finite(b) for b in bounds):
        return DASH
    return f"[{show(bounds[0])}, {show(bounds[1])}]"


def effect_interval(kind: Any, bounds: Any) -> str:
    """An absolute effect's interval in the metric's unit: '[+0.10, +3.80] pts'."""
    shown = _bounds(bounds, lambda bound: _effect_number(kind, bound, _decimals(*bounds)))
    return shown + effect_suffix(kind) if shown != DASH else DASH


def share(rate: Any, hits: Any, units: Any) -> str:
    """A rate with its counts: '4.0% (40 / 1,000 units)'."""
    if not _finite(hits) or not _finite(units):
        return pct(rate)
    return f"{pct(rate)} ({count(hits)} / {count(units)} units)"
