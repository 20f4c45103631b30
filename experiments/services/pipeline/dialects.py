"""Every SQL dialect difference of the pipeline, as a named construct compiled per dialect.

The stages are written once in SQLAlchemy Core; wherever engines disagree the stages use
one of these constructs, and ``@compiles`` picks the spelling for the connection's
dialect (``default`` is SQLite's). What each one hides:

* time arithmetic (:class:`seconds_between`, :class:`hours_between`,
  :class:`before_hours_after`, :class:`within_hours`): PostgreSQL
  subtracts timestamps into an interval, SQLite stores text (epoch seconds plus the
  microsecond tail: exact, where ``julianday`` loses ~50 µs),
  DuckDB has ``epoch``, ClickHouse ``dateDiff``, BigQuery ``TIMESTAMP_DIFF``, Snowflake
  ``DATEDIFF``; PostgreSQL keeps the interval form so the window test can use an index;
* UTC day truncation (:class:`utc_day`): a DATE of the UTC instant whatever the session
  time zone (SQLite: the text prefix); a fixed instant to the microsecond
  (:class:`utc_instant`: ClickHouse's drivers bind whole seconds);
* conditional aggregates (:class:`count_if`): ``COUNT(*) FILTER (WHERE …)`` where it exists,
  ``count_if`` on DuckDB (cheaper than its FILTER), ``countIf`` on ClickHouse, ``COUNTIF`` on
  BigQuery, ``COUNT_IF`` on Snowflake;
* a column constant within each group (:class:`group_value`): ``any_value`` (ClickHouse
  ``any``) where it exists, MIN elsewhere;
* bit packing (:class:`packed_flags`, :class:`has_bits`): the per-unit OR of flags is
  ``bit_or`` where an OR aggregate exists (PostgreSQL, DuckDB, ClickHouse's ``groupBitOr``,
  BigQuery ``BIT_OR``, Snowflake ``BITOR_AGG``), one MAX per flag elsewhere; the bit test
  is ``&`` or ``bitAnd``/``BITAND``;
* the "last answer" key (:class:`answer_key`, :class:`answer_class`): a sortable (time,
  event id, class) value whose MAX is the unit's last NPS answer — one 128-bit integer on
  DuckDB and ClickHouse, an array on PostgreSQL, a zero-padded text elsewhere;
* grouping sets (:class:`grouping_sets_select`): one ``GROUP BY GROUPING SETS`` statement
  where the engine has it, each row's set told by ``GROUPING()``; SQLite has none: one
  SELECT per set, ``UNION ALL``'d;
* NULL-filling of outer joins (:func:`prepare`): ClickHouse fills the missing side
  of an outer join with default values (0, '') unless ``join_use_nulls = 1``;
* non-equi join conditions: ClickHouse refuses inequalities in ``JOIN … ON``, so the stages
  join on the unit only and put the window test in ``WHERE`` (the same plan elsewhere);
* join sides: ClickHouse builds a join's hash table from its right side, and so does DuckDB
  with the warehouse defaults (``engines.ENGINE_SETTINGS``), so every join of events with
  exposures writes the events on the left: the table is one row per unit, not per event.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import reduce
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import CompileError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement, Label
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

# Dialect names: duckdb-engine registers "duckdb" (a PostgreSQL subclass, so it must be named
# where it differs), chdb-sqlalchemy "chdb", clickhouse-connect "clickhousedb".
CLICKHOUSE = ("chdb", "clickhousedb", "clickhouse")


def _args(element: Any, compiler: Any, **kw: Any) -> list[str]:
    return [compiler.process(c, **kw) for c in element.clauses]


def _each(construct: Any, names: tuple[str, ...]) -> Any:
    """``@compiles`` for several dialect names at once."""
    def register(function: Any) -> Any:
        for name in names:
            compiles(construct, name)(function)
        return function
    return register


def const(value: int) -> Any:
    """An inline integer constant (bit masks are not worth a bind parameter each)."""
    return literal_column(str(int(value)), BigInteger())


# -- time arithmetic --------------------------------------------------------------------------


class seconds_between(FunctionElement[float]):  # lower case: reads as a SQL function
    """Seconds from the first timestamp to the second, as a float, on every backend."""

    type = Float()
    inherit_cache = True


class hours_between(FunctionElement[float]):  # lower case: reads as a SQL function
    """Hours from the first timestamp to the second, as a float, on every backend."""

    type = Float()
    inherit_cache = True


# Per dialect: the elapsed time from {start} to {end}, and its units per second.
_ELAPSED: dict[str | None, tuple[str, int]] = {
    "postgresql": ("EXTRACT(EPOCH FROM ({end} - {start}))", 1),
    "duckdb": ("(epoch_us({end}) - epoch_us({start}))", 1_000_000),
    **dict.fromkeys(CLICKHOUSE, ("dateDiff('microsecond', {start}, {end})", 1_000_000)),
    "bigquery": ("TIMESTAMP_DIFF({end}, {start}, MICROSECOND)", 1_000_000),
    "snowflake": ("DATEDIFF('microsecond', {start}, {end})", 1_000_000),
    # SQLite (the default): whole seconds since the epoch of the text without its fraction
    # (strftime rounds the time to the millisecond first, so '…:52.999712' would give 53),
    # then the '.ffffff' tail of the stored text: exact to the microsecond, like the other
    # engines (julianday's day fractions lose ~50 µs).
    None: ("((strftime('%s', substr({end}, 1, 19)) - strftime('%s', substr({start}, 1, 19)))"
           " + (CAST(substr({end}, 20) AS REAL) - CAST(substr({start}, 20) AS REAL)))", 1),
}


def _elapsed_in(seconds: int, template: str, per_second: int) -> Any:
    def compile_(element: Any, compiler: Any, **kw: Any) -> str:
        start, end = _args(element, compiler, **kw)
        return f"({template.format(start=start, end=end)} / {seconds * per_second}.0)"
    return compile_


for _dialect, (_template, _per_second) in _ELAPSED.items():
    for _construct, _seconds in ((seconds_between, 1), (hours_between, 3600)):
        _compile = _elapsed_in(_seconds, _template, _per_second)
        if _dialect is None:
            compiles(_construct)(_compile)
        else:
            compiles(_construct, _dialect)(_compile)


class before_hours_after(FunctionElement[bool]):  # lower case: reads as a SQL function
    """``later < earlier + hours``: index-friendly on PostgreSQL, hours elsewhere."""

    type = Boolean()
    inherit_cache = True


@compiles(before_hours_after, "postgresql")
def _before_pg(element: before_hours_after, compiler: Any, **kw: Any) -> str:
    earlier, later, hours = _args(element, compiler, **kw)
    return f"({later} < {earlier} + {hours} * INTERVAL '1 hour')"


class within_hours(FunctionElement[bool]):  # lower case: reads as a SQL function
    """``|later - earlier| < hours``: inside the window on either side of the exposure
    (the analysis window and the CUPED pre-period). One absolute elapsed time where the
    engine computes it (DuckDB at 1 M units: the join's filter took about a quarter less
    CPU than a branch per side); PostgreSQL keeps a branch per side, each index-friendly."""

    type = Boolean()
    inherit_cache = True


@compiles(within_hours, "postgresql")
def _within_pg(element: within_hours, compiler: Any, **kw: Any) -> str:
    earlier, later, hours = element.clauses
    either = or_(and_(later >= earlier, before_hours_after(earlier, later, hours)),
                 and_(later < earlier, before_hours_after(later, earlier, hours)))
    return f"({compiler.process(either, **kw)})"


def _hours_under(function: str) -> Any:
    """Compile ``function(hours from the first argument to the second) < the third``."""
    def compile_(element: Any, compiler: Any, **kw: Any) -> str:
        earlier, later, hours = element.clauses
        return f"({function}({compiler.process(hours_between(earlier, later), **kw)}) < " \
               f"{compiler.process(hours, **kw)})"
    return compile_


compiles(before_hours_after)(_hours_under(""))
compiles(within_hours)(_hours_under("abs"))


# -- UTC day ------------------------------------------------------------------------------------


class utc_day(FunctionElement[Any]):  # lower case: reads as a SQL function
    """The UTC calendar day of a timestamp, whatever the session time zone (a DATE where the
    engine has one, far cheaper per row than formatting; 'YYYY-MM-DD' text on SQLite):
    :func:`day_key` turns either into the text key."""

    inherit_cache = True


@compiles(utc_day, "postgresql")
def _day_pg(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = _args(element, compiler, **kw)
    return f"CAST(({column} AT TIME ZONE 'UTC') AS DATE)"


@compiles(utc_day, "duckdb")
def _day_duckdb(element: utc_day, compiler: Any, **kw: Any) -> str:
    # A cast reads a TIMESTAMPTZ (the sync's columns) in the session's TimeZone, by default
    # the machine's; the microseconds since the epoch are UTC's for it and for a naive
    # TIMESTAMP (an events_sql column) alike.
    (column,) = _args(element, compiler, **kw)
    return f"(DATE '1970-01-01' + CAST(floor(epoch_us({column}) / 86400000000) AS INTEGER))"


@_each(utc_day, CLICKHOUSE)
def _day_ch(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = _args(element, compiler, **kw)
    return f"toDate({column}, 'UTC')"


@compiles(utc_day, "bigquery")
def _day_bq(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = _args(element, compiler, **kw)
    return f"DATE({column}, 'UTC')"


@compiles(utc_day, "snowflake")
def _day_sf(element: utc_day, compiler: Any, **kw: Any) -> str:
    (column,) = _args(element, compiler, **kw)
    return f"TO_DATE(CONVERT_TIMEZONE('UTC', {column}))"


@compiles(utc_day)
def _day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # SQLite stores UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    (column,) = _args(element, compiler, **kw)
    return f"substr({column}, 1, 10)"


def day_key(value: date | str) -> str:
    """The 'YYYY-MM-DD' key of a :class:`utc_day` value."""
    return value if isinstance(value, str) else value.isoformat()


class utc_instant(ColumnElement[datetime]):  # lower case: reads as a SQL literal
    """A fixed instant compared with a time column (a bandit's period start, the bounds of
    the event scan), exact to the microsecond: a bind parameter of the column's type, except
    on ClickHouse, whose drivers bind a datetime as ``toDateTime(?)`` (whole seconds, and
    the text read in the server's zone): a ``DateTime64(6, 'UTC')`` literal there, its text
    rendered when the statement runs, so the compiled statement is cached as with a bind.
    A naive ``at`` is UTC there (chDB reads its ``DateTime64(6, 'UTC')`` columns so), not
    the machine's local time; elsewhere it is bound as it is, naive or aware like the column
    it was read from (DuckDB casts a TIMESTAMP column to compare it with a TIMESTAMPTZ bind:
    1 M units, +0.5 s)."""

    inherit_cache = True
    _traverse_internals = [("bound", InternalTraversal.dp_clauseelement),
                           ("utc_text", InternalTraversal.dp_clauseelement)]

    def __init__(self, at: datetime, type_: Any) -> None:
        utc = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        self.type, self.bound = type_, literal(at, type_)
        self.utc_text = bindparam(None, utc.strftime("%Y-%m-%d %H:%M:%S.%f"), String(),
                                  literal_execute=True)


@compiles(utc_instant)
def _instant_bound(element: utc_instant, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.bound, **kw))


@_each(utc_instant, CLICKHOUSE)
def _instant_ch(element: utc_instant, compiler: Any, **kw: Any) -> str:
    return f"toDateTime64({compiler.process(element.utc_text, **kw)}, 6, 'UTC')"


# -- conditional aggregates ---------------------------------------------------------------------


class group_value(FunctionElement[Any]):  # lower case: reads as a SQL aggregate
    """The value a column has on every row of the group (a unit's exposure columns, grouped
    by its exposure id): ``any_value`` where the engine has it, MIN elsewhere. DuckDB's MIN
    compares every row's text (at 1 M units, a fifth of the per-unit aggregate's CPU)."""

    inherit_cache = True

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = column.type


def _on_first(function: str) -> Any:
    """Compile a construct as ``function(its first argument)``."""
    def compile_(element: Any, compiler: Any, **kw: Any) -> str:
        first, *_ = element.clauses
        return f"{function}({compiler.process(first, **kw)})"
    return compile_


compiles(group_value)(_on_first("min"))
compiles(group_value, "duckdb")(_on_first("any_value"))
compiles(group_value, "bigquery")(_on_first("ANY_VALUE"))
compiles(group_value, "snowflake")(_on_first("ANY_VALUE"))
_each(group_value, CLICKHOUSE)(_on_first("any"))


class count_if(FunctionElement[int]):  # lower case: reads as a SQL aggregate
    """Rows where the condition holds (``COUNT(*) FILTER (WHERE …)``)."""

    type = BigInteger()
    inherit_cache = True


@compiles(count_if)
def _count_if_filter(element: count_if, compiler: Any, **kw: Any) -> str:
    (condition,) = _args(element, compiler, **kw)
    return f"count(*) FILTER (WHERE {condition})"


@compiles(count_if, "duckdb")
def _count_if_duckdb(element: count_if, compiler: Any, **kw: Any) -> str:
    # DuckDB's own aggregate: the report's wide query (~60 flag counts per grouping set) took
    # ~25 % less CPU than with FILTER. It is NULL over no rows, where COUNT is 0.
    (condition,) = _args(element, compiler, **kw)
    return f"coalesce(count_if({condition}), 0)"


@_each(count_if, CLICKHOUSE)
def _count_if_ch(element: count_if, compiler: Any, **kw: Any) -> str:
    (condition,) = _args(element, compiler, **kw)
    return f"toInt64(countIf({condition}))"


@compiles(count_if, "bigquery")
def _count_if_bq(element: count_if, compiler: Any, **kw: Any) -> str:
    (condition,) = _args(element, compiler, **kw)
    return f"COUNTIF({condition})"


@compiles(count_if, "snowflake")
def _count_if_sf(element: count_if, compiler: Any, **kw: Any) -> str:
    (condition,) = _args(element, compiler, **kw)
    return f"COUNT_IF({condition})"


# -- bit packing ----------------------------------------------------------------------------------


class packed_flags(FunctionElement[int]):  # lower case: reads as a SQL aggregate
    """Per-unit OR of event flags: ``bit_or`` of a packed word where the engine has it.

    The first argument is the packed per-event word (a few CASEs per event); the others
    are the same flags one by one (``CASE WHEN … THEN 2^bit ELSE 0 END``), equal to it by
    construction, for backends without a bitwise-or aggregate (one MAX per flag).
    """

    type = BigInteger()
    inherit_cache = True


compiles(packed_flags, "postgresql")(_on_first("bit_or"))
compiles(packed_flags, "duckdb")(_on_first("bit_or"))
compiles(packed_flags, "bigquery")(_on_first("BIT_OR"))
compiles(packed_flags, "snowflake")(_on_first("BITOR_AGG"))
_each(packed_flags, CLICKHOUSE)(_on_first("groupBitOr"))


@compiles(packed_flags)
def _packed_generic(element: packed_flags, compiler: Any, **kw: Any) -> str:
    _, *flags = element.clauses
    return "(" + " + ".join(f"max({compiler.process(f, **kw)})" for f in flags) + ")"


class bits_or(FunctionElement[int]):  # lower case: reads as a SQL function
    """``a | b``: two packed words merged (a unit's flags over two sets of its events)."""

    type = BigInteger()
    inherit_cache = True


def _spelled(template: str) -> Any:
    """A compiler writing the construct's arguments into ``template``."""
    def compile_(element: Any, compiler: Any, **kw: Any) -> str:
        return template.format(*_args(element, compiler, **kw))
    return compile_


compiles(bits_or)(_spelled("({} | {})"))
_each(bits_or, CLICKHOUSE)(_spelled("bitOr({}, {})"))
compiles(bits_or, "snowflake")(_spelled("BITOR({}, {})"))


class has_bits(FunctionElement[bool]):  # lower case: reads as a SQL function
    """``word & mask = mask``: every bit of the mask is set in the word."""

    type = Boolean()
    inherit_cache = True


@compiles(has_bits)
def _has_bits(element: has_bits, compiler: Any, **kw: Any) -> str:
    word, mask = _args(element, compiler, **kw)
    return f"(({word} & {mask}) = {mask})"


@_each(has_bits, CLICKHOUSE)
def _has_bits_ch(element: has_bits, compiler: Any, **kw: Any) -> str:
    word, mask = _args(element, compiler, **kw)
    return f"(bitAnd({word}, {mask}) = {mask})"


@compiles(has_bits, "snowflake")
def _has_bits_sf(element: has_bits, compiler: Any, **kw: Any) -> str:
    word, mask = _args(element, compiler, **kw)
    return f"(BITAND({word}, {mask}) = {mask})"


# -- the last NPS answer ----------------------------------------------------------------------


class answer_key(FunctionElement[Any]):  # lower case: reads as a SQL function
    """A sortable (time, event id, answer class) key: its max is the unit's last answer."""

    inherit_cache = True


@compiles(answer_key, "postgresql")
def _answer_key_pg(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = _args(element, compiler, **kw)
    return (f"ARRAY[CAST(EXTRACT(EPOCH FROM {at}) * 1000000 AS BIGINT), "
            f"CAST({event_id} AS BIGINT), CAST({klass} AS BIGINT)]")


# A 128-bit key where the engine has 128-bit integers: microseconds since the epoch times
# 2**67, plus the id times 4, plus the class. The id (a 64-bit integer) times 4 stays
# under 2**67 in size, so the key orders like (time, id, class); its class is the key's
# remainder modulo 4. Its MAX is one integer comparison per event, where an array or a
# text costs an allocation: at 1 M units / 10 M events, 0.4 s of chDB's 4 s report.
ANSWER_TIME_FACTOR = "147573952589676412928"  # 2**67


@compiles(answer_key, "duckdb")
def _answer_key_duckdb(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = _args(element, compiler, **kw)
    return (f"(CAST(epoch_us({at}) AS HUGEINT) * CAST('{ANSWER_TIME_FACTOR}' AS HUGEINT) "
            f"+ CAST({event_id} AS HUGEINT) * 4 + {klass})")


def _padded_key(micros: str, event_id: str, klass: str, concat: str, pad: str) -> str:
    # Microseconds since the epoch and the id, zero-padded to 20 digits: text order is
    # (time, id) order, which breaks ties like ORDER BY occurred_at, id; then the class.
    return concat.format(pad.format(micros), pad.format(event_id), klass)


@_each(answer_key, CLICKHOUSE)
def _answer_key_ch(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = _args(element, compiler, **kw)
    return (f"(toInt128(toUnixTimestamp64Micro(toDateTime64({at}, 6, 'UTC'))) "
            f"* toInt128('{ANSWER_TIME_FACTOR}') + toInt128({event_id}) * 4 + {klass})")


@compiles(answer_key, "bigquery")
def _answer_key_bq(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = _args(element, compiler, **kw)
    return _padded_key(f"UNIX_MICROS({at})", event_id, klass,
                       "CONCAT({}, {}, CAST({} AS STRING))", "LPAD(CAST({} AS STRING), 20, '0')")


@compiles(answer_key, "snowflake")
def _answer_key_sf(element: answer_key, compiler: Any, **kw: Any) -> str:
    at, event_id, klass = _args(element, compiler, **kw)
    return _padded_key(f"DATE_PART(EPOCH_MICROSECOND, {at})", event_id, klass,
                       "CONCAT({}, {}, TO_VARCHAR({}))", "LPAD(TO_VARCHAR({}), 20, '0')")


@compiles(answer_key)
def _answer_key_sqlite(element: answer_key, compiler: Any, **kw: Any) -> str:
    # SQLite stores UtcDateTime as fixed-width 'YYYY-MM-DD HH:MM:SS.ffffff': text order is
    # time order, and the zero-padded id breaks ties like ORDER BY occurred_at, id.
    at, event_id, klass = _args(element, compiler, **kw)
    return f"({at} || printf('%020d', {event_id}) || {klass})"


class answer_class(FunctionElement[int]):  # lower case: reads as a SQL function
    """The answer class packed in an :class:`answer_key` (NULL when there is no answer)."""

    type = Integer()
    inherit_cache = True


@compiles(answer_class, "postgresql")
def _answer_class_pg(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    return f"({key})[3]"


@compiles(answer_class, "duckdb")
def _answer_class_duckdb(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    # A bitwise AND, not % (which keeps the sign before 1970, and divides: 0.04 s of a
    # 0.37 s scheduled report at 1 M units): two's complement keeps the low bits right.
    return f"CAST(({key}) & 3 AS INTEGER)"


@_each(answer_class, CLICKHOUSE)
def _answer_class_ch(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    return f"toInt32(bitAnd({key}, 3))"  # as DuckDB's: the low bits, no division


@compiles(answer_class, "bigquery")
def _answer_class_bq(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    return f"CAST(SUBSTR({key}, -1) AS INT64)"


@compiles(answer_class, "snowflake")
def _answer_class_sf(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    return f"CAST(RIGHT({key}, 1) AS INTEGER)"


@compiles(answer_class)
def _answer_class_sqlite(element: answer_class, compiler: Any, **kw: Any) -> str:
    (key,) = _args(element, compiler, **kw)
    return f"CAST(substr({key}, -1) AS INTEGER)"


# -- unit buckets ---------------------------------------------------------------------------------


class unit_bucket(FunctionElement[int]):  # lower case: reads as a SQL function
    """Which of ``buckets`` a unit id falls in (0 … buckets - 1), by the engine's own hash of
    the text: a pass over one bucket's units at a time holds a share of the units in its
    hash tables (:attr:`~.sources.PipelineSources.units_per_pass`). Only the in-process
    engines split a pass so (their memory is Parcours's process's)."""

    type = BigInteger()
    inherit_cache = True


@compiles(unit_bucket)
def _unit_bucket_elsewhere(element: unit_bucket, compiler: Any, **kw: Any) -> str:
    raise CompileError(f"unit_bucket: a pass is split by unit only on DuckDB and ClickHouse, "
                       f"not on {compiler.dialect.name}")


compiles(unit_bucket, "duckdb")(_spelled("(hash({}) % {})"))
_each(unit_bucket, CLICKHOUSE)(_spelled("(cityHash64({}) % {})"))


# -- JSON attributes ------------------------------------------------------------------------------


class json_attribute(FunctionElement[str]):  # lower case: reads as a SQL function
    """The top-level key ``name`` of a JSON object column, as text (NULL when absent or
    JSON null): the exposure's attribute snapshot, for segments."""

    type = String()
    inherit_cache = True


def _json_with(template: str) -> Any:
    def compile_(element: json_attribute, compiler: Any, **kw: Any) -> str:
        column, name = _args(element, compiler, **kw)
        return template.format(column=column, name=name)
    return compile_


# SQLite's json_extract gives numbers as numbers: cast, so every engine gives text (JSON
# booleans are then '1'/'0' on SQLite, 'true'/'false' elsewhere).
compiles(json_attribute)(_json_with(
    "CAST(json_extract({column}, '$.\"' || {name} || '\"') AS TEXT)"))
compiles(json_attribute, "postgresql")(_json_with("(CAST({column} AS JSONB) ->> {name})"))
# DuckDB parses the text itself: a CAST to JSON first would validate it once more (a third
# of the extraction's time; the snapshot is always JSON, written by Parcours).
compiles(json_attribute, "duckdb")(_json_with(
    "json_extract_string({column}, '$.\"' || {name} || '\"')"))
# JSONType is 'Null' for a missing key too. A non-empty string (the usual level) is read by
# one parse: the other branches run only where JSONExtractString gives '' (short circuit).
_each(json_attribute, CLICKHOUSE)(_json_with(
    "multiIf(JSONExtractString({column}, {name}) != '', JSONExtractString({column}, {name}), "
    "JSONType({column}, {name}) = 'String', '', JSONType({column}, {name}) = 'Null', NULL, "
    "JSONExtractRaw({column}, {name}))"))
compiles(json_attribute, "bigquery")(_json_with("JSON_VALUE({column}, CONCAT('$.', {name}))"))
compiles(json_attribute, "snowflake")(_json_with("GET(PARSE_JSON({column}), {name})::STRING"))


# -- grouping sets ----------------------------------------------------------------------------


class grouping_sets_select(Executable, ClauseElement):  # lower case: reads as a SQL statement
    """``SELECT grouping_set, *keys, *aggregates … GROUP BY GROUPING SETS (…)``: the
    aggregates per grouping set, in one statement. ``keys`` are labelled expressions (what
    the rows are grouped by), ``sets`` name, per set, the keys it groups by; every row says
    its set in ``grouping_set`` (the position in ``sets``) and carries every key — those its
    set does not group by hold NULL (ClickHouse: the type's default), never to be read.

    Where the engine has grouping sets (PostgreSQL, DuckDB, ClickHouse, BigQuery,
    Snowflake) the rows are read once, each aggregated into every set, and the set is told by
    the standard ``GROUPING()`` (1 where the key is not grouped; ClickHouse keeps to the
    standard with ``force_grouping_standard_compatibility``, see :func:`prepare`). SQLite
    has none: one SELECT per set, ``UNION ALL``'d, where a key the set does not group by is
    its minimum over the row's group (a value of the key's type: a NULL's type in a UNION
    differs by engine).
    """

    _traverse_internals = [("keys", InternalTraversal.dp_clauseelement_list),
                           ("sets", InternalTraversal.dp_plain_obj),
                           ("aggregates", InternalTraversal.dp_clauseelement_list)]

    def __init__(self, keys: Sequence[Label[Any]], sets: Sequence[Sequence[str]],
                 aggregates: Sequence[Any]) -> None:
        self.keys = list(keys)
        self.sets = tuple(tuple(names) for names in sets)
        self.aggregates = list(aggregates)

    @property
    def _all_selected_columns(self) -> list[Any]:
        # A compiled form cached for an equal statement is reused: SQLAlchemy then maps
        # this statement's columns to the result's by position.
        return [literal_column("grouping_set"), *self.keys, *self.aggregates]

    def grouped(self, number: int) -> list[Any]:
        """The expressions set ``number`` groups by."""
        return [key.element for key in self.keys if key.name in self.sets[number]]


@compiles(grouping_sets_select)
def _grouping_sets_union(element: grouping_sets_select, compiler: Any, **kw: Any) -> str:
    branches = []
    for number, names in enumerate(element.sets):
        keys = [key if key.name in names else func.min(key.element).label(key.name)
                for key in element.keys]
        branches.append(select(literal_column(str(number)).label("grouping_set"), *keys,
                               *element.aggregates).group_by(*element.grouped(number)))
    return compiler.process(union_all(*branches), **kw)


def _grouping_sets(element: grouping_sets_select, compiler: Any, **kw: Any) -> str:
    # Bit i of the mask: GROUPING() of the i-th key some set leaves out (1: not grouped).
    varying = [key for key in element.keys if not all(key.name in s for s in element.sets)]
    mask = reduce(operator.add, (func.grouping(key.element) * const(1 << bit)
                                 for bit, key in enumerate(varying)))
    number = case({const(sum(1 << bit for bit, key in enumerate(varying)
                             if key.name not in names)): const(position)
                   for position, names in enumerate(element.sets)}, value=mask)
    statement = (select(number.label("grouping_set"), *element.keys, *element.aggregates)
                 .group_by(func.grouping_sets(*(tuple_(*element.grouped(position))
                                                for position in range(len(element.sets))))))
    return compiler.process(statement, **kw)


for _dialect in ("postgresql", "duckdb", *CLICKHOUSE, "bigquery", "snowflake"):
    compiles(grouping_sets_select, _dialect)(_grouping_sets)


# -- tables made from a query ---------------------------------------------------------------


class table_from_select(Executable, ClauseElement):  # lower case: reads as a SQL statement
    """``CREATE TABLE name AS SELECT …`` with the query's parameters bound (SQLAlchemy's
    ``CreateTableAs`` renders them as literals, which not every dialect can do for times);
    ClickHouse needs a table engine: a MergeTree in insertion order."""

    inherit_cache = False

    def __init__(self, name: str, query: Any) -> None:
        self.name, self.query = name, query


@compiles(table_from_select)
def _table_from_select(element: table_from_select, compiler: Any, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    return f"CREATE TABLE {name} AS {compiler.process(element.query, **kw)}"


@_each(table_from_select, CLICKHOUSE)
def _table_from_select_ch(element: table_from_select, compiler: Any, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    return (f"CREATE TABLE {name} ENGINE = MergeTree ORDER BY tuple() "
            f"AS {compiler.process(element.query, **kw)}")


# -- session settings -------------------------------------------------------------------------


def dialect_name(connection: Connection | Session) -> str:
    """The dialect of a Connection or a Session's bind."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    return bind.dialect.name


def prepare(connection: Connection | Session) -> None:
    """Engine settings for the pipeline's queries, in the current transaction/session.

    PostgreSQL: no JIT for this transaction (compiling the wide query costs more than it
    saves; work_mem is the server's, batched hashes are cache friendlier — except for the
    segments' crossed groups, see :func:`hashed_grouping`).
    ClickHouse: ``join_use_nulls = 1`` so the missing side of an outer join is NULL (as in
    SQL), not the column type's default (0, ''), which would count as a value; and
    ``GROUPING()`` as the SQL standard has it (1 where the key is not grouped): ClickHouse's
    own is the reverse without ``force_grouping_standard_compatibility``.
    """
    name = dialect_name(connection)
    if name == "postgresql":
        connection.execute(text("SET LOCAL jit = off"))
    elif name in CLICKHOUSE:
        connection.execute(text("SET join_use_nulls = 1"))
        connection.execute(text("SET force_grouping_standard_compatibility = 1"))


HASHED_GROUPING_WORK_MEM = "64MB"


@contextmanager
def hashed_grouping(connection: Connection | Session, *, when: bool = True
                    ) -> Iterator[None]:
    """PostgreSQL, ``when`` the statements run inside cross several grouping sets: hash,
    never sort, in them (the transaction's own settings come back afterwards). For groups it
    cannot estimate (a segment's JSON level, the UTC day of exposure times) the planner
    assumes one per row and sorts every per-unit row — several times slower than hashing the
    few thousand real groups, whose table fits in :data:`HASHED_GROUPING_WORK_MEM` (a hash
    aggregate that outgrows it spills to disk: never a failure). Elsewhere: nothing."""
    if not when or dialect_name(connection) != "postgresql":
        yield
        return
    before = connection.execute(text(
        "SELECT current_setting('enable_sort'), current_setting('work_mem')")).one()
    _set_local(connection, "off", HASHED_GROUPING_WORK_MEM)
    try:
        yield
    finally:
        _set_local(connection, *before)


# When a table's planner statistics are stale: never analysed (a table just made or filled:
# its counts reach pg_stat_user_tables only once its writer flushes them), or more rows
# changed since its last ANALYZE than autovacuum's default threshold (50 rows + 10 %).
STALE_STATISTICS = ("(coalesce(last_analyze, last_autoanalyze) IS NULL "
                    "OR n_mod_since_analyze > 50 + 0.1 * n_live_tup)")
# How long an ANALYZE waits for a table another ANALYZE or a VACUUM holds (autovacuum, on
# it already): then the analysis goes on without it.
STATISTICS_LOCK_WAIT = "1s"
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout


def refresh_statistics(bind: Session | Connection | Engine, tables: Sequence[str], *,
                       lock_wait: str = STATISTICS_LOCK_WAIT) -> list[str]:
    """PostgreSQL: ANALYZE those of ``tables`` (that exist) whose planner statistics are
    missing or stale (:data:`STALE_STATISTICS`), each in a short transaction of its own on a
    connection of its own; the names of those analysed (nothing elsewhere). ``bind``:
    Parcours's session, or a warehouse's engine or connection. A table whose lock is not
    granted within ``lock_wait`` is left to whoever holds it.

    Why: autovacuum may be off (it is on this project's test and bench servers), or not
    have come round since a bulk arrival (a launch, an import, the demo). The planner then
    plans for the tables as it last saw them — 11 exposures where the seeded demo had
    6,000 — and nested loops planned for a few rows are a cliff, not a slope (the other
    half of that demo's 16-36 s report is ``PipelineSources.hashed_groups``). ANALYZE reads
    a sample (30,000 rows by default) and blocks no reads or writes; a database user that
    does not own the tables gets a warning from it, not an error."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    if bind.dialect.name != "postgresql":
        return []
    engine = bind if isinstance(bind, Engine) else bind.engine
    analysed = []
    with engine.connect() as connection:
        stale = list(connection.execute(text(
            "SELECT CAST(CAST(relid AS regclass) AS text) FROM pg_stat_user_tables "
            "WHERE relid IN (SELECT to_regclass(name) FROM unnest(CAST(:tables AS text[])) "
            f"AS name) AND {STALE_STATISTICS}"), {"tables": list(tables)}).scalars())
        connection.commit()
        for name in stale:  # regclass text: quoted and qualified as the search path needs
            try:
                with connection.begin():
                    connection.execute(text("SELECT set_config('lock_timeout', :wait, true)"),
                                       {"wait": lock_wait})
                    connection.execute(text(f"ANALYZE {name}"))
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                continue
            analysed.append(name)
    return analysed


# chDB's join algorithm for Parcours's statements, as warehouses.engines.ENGINE_SETTINGS sets
# it (tested equal; the engines module stays light to import): a partial merge keeps a first
# report's join of every event to the exposures within ~1.3 GB at 10 M units.
CHDB_JOIN = "partial_merge"


# DuckDB's buffer pool for a statement over kept per-unit values: it scans one row per
# unit once and joins only what arrived since, but DuckDB keeps every block it reads cached
# up to its memory limit (80 % of RAM by default): at 10 M units 1.4 GB for that statement
# alone, 0.45 GB for the whole scheduled report under this bound (3.6 s against 2.8 s).
KEPT_DUCKDB_MEMORY = "200MB"
# Marks a DuckDB connection whose memory limit no setting chose (warehouses.engines).
DUCKDB_DEFAULT_MEMORY = "parcours_duckdb_default_memory"


@contextmanager
def kept_values_settings(connection: Connection | Session, *, when: bool = True
                         ) -> Iterator[None]:
    """Engine settings for one statement, ``when`` it reads kept per-unit values (one row
    per unit; the events that arrived since are few), restored afterwards:

    - chDB, when the session joins by :data:`CHDB_JOIN`: a hash join — with a small right
      side, or the exposures when the rows are joined back to them (at 10 M units 6.1 s
      and 1.7 GB against 9.1 s and 1.4 GB). A join algorithm the warehouse's own settings
      chose is kept.
    - DuckDB, when no setting chose its memory limit (:data:`DUCKDB_DEFAULT_MEMORY`): the
      limit (the whole database's, for the statement's time) is :data:`KEPT_DUCKDB_MEMORY`,
      then DuckDB's default again.

    Elsewhere: nothing."""
    dialect = dialect_name(connection) if when else None
    if dialect == "chdb":
        before = connection.execute(text("SELECT getSetting('join_algorithm')")).scalar()
        if before == CHDB_JOIN:
            connection.execute(text("SET join_algorithm = 'hash'"))
            try:
                yield
            finally:
                connection.execute(text(f"SET join_algorithm = '{CHDB_JOIN}'"))
            return
    elif dialect == "duckdb" and isinstance(connection, Connection) \
            and connection.info.get(DUCKDB_DEFAULT_MEMORY):
        connection.execute(text(f"SET memory_limit = '{KEPT_DUCKDB_MEMORY}'"))
        try:
            yield
        finally:
            connection.execute(text("RESET memory_limit"))
        return
    yield


def _set_local(connection: Connection | Session, sort: str, work_mem: str) -> None:
    """``enable_sort`` and ``work_mem`` for the rest of the transaction (``SET LOCAL``), in
    one round trip."""
    connection.execute(text("SELECT set_config('enable_sort', :sort, true), "
                            "set_config('work_mem', :work_mem, true)"),
                       {"sort": sort, "work_mem": work_mem})


__all__ = ["CHDB_JOIN", "CLICKHOUSE", "HASHED_GROUPING_WORK_MEM", "answer_class",
           "answer_key", "before_hours_after", "bits_or", "const", "count_if", "day_key",
           "dialect_name", "group_value", "grouping_sets_select", "has_bits", "hashed_grouping",
           "hours_between", "json_attribute", "kept_values_settings", "packed_flags", "prepare",
           "refresh_statistics", "seconds_between", "table_from_select",
           "unit_bucket", "utc_day", "utc_instant", "within_hours"]
