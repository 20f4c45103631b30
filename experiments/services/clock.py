"""Clock-skew correction of client times (SPEC §4, §5), shared by events and exposures.

A browser's clock can be off by seconds to hours. When a request says what the
client's clock read as it sent (``sent_at``), the difference with the server's
receive time is that client's skew plus the (small) transit time, and adding it
to each client time puts it on the server's clock (Segment's rule). What is
corrected can still not be later than the moment it reached the server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MAX_EXPOSURE_AGE = timedelta(hours=24)
_NO_LAG = timedelta(0)


def corrected(occurred_at: datetime, received_at: datetime, sent_at: datetime | None
              ) -> datetime:
    """``occurred_at + (received_at − sent_at)``, never after ``received_at``; unchanged
    without ``sent_at`` (an old client: its time is trusted as before).

    Any valid ``sent_at`` works, a clock reset to 1970 or one reading year 9999 alike:
    the sum is taken as ``received_at − (sent_at − occurred_at)``, and the lag between
    two client times always fits a timedelta. Only a result before year 1 cannot be
    represented; it comes back as the earliest time there is, for the caller to refuse
    or clamp like any other time that is too early.
    """
    if sent_at is None:
        return occurred_at
    lag = sent_at - occurred_at  # how long before the send it happened, on one clock
    if lag <= _NO_LAG:
        return received_at  # at or after its own send: not after it reached the server
    try:
        return received_at - lag
    except OverflowError:  # shifted back before year 1
        return datetime.min.replace(tzinfo=UTC)


def exposure_time(occurred_at: datetime | None, sent_at: datetime | None,
                  received_at: datetime, started_at: datetime | None) -> datetime:
    """When an exposure happened on the server's clock: the client's time corrected and
    clamped to [received − 24 h, received], and never before the experiment started
    (nothing was shown before then); without a client time, the received time (which a
    caller such as the simulator may set in the past on purpose)."""
    if occurred_at is None:
        return received_at
    when = max(min(corrected(occurred_at, received_at, sent_at), received_at),
               received_at - MAX_EXPOSURE_AGE)
    if started_at is not None and when < started_at:
        when = started_at
    return when
