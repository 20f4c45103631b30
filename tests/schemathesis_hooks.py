"""Schemathesis hooks (loaded through ``SCHEMATHESIS_HOOKS``): NUL-bearing strings.

PostgreSQL refuses NUL characters in text and jsonb, so a NUL that slips past
validation is a 500 on insert. Every generated body and query string may get a NUL
written into one of its strings (or object keys), nested ones included; the server
must answer with a 4xx, never a 5xx (SPEC §2). Each NUL-bearing request sent is
counted in the file named by ``PARCOURS_NUL_LOG`` so that the test can check that the
strategy really ran.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import schemathesis
from hypothesis import strategies as st

NUL_FORMS = ("\x00", "a\x00", "\x00b", "x\x00y\x00z")
Spot = tuple[tuple[Any, ...], bool]  # (path to a string, whether the string is a dict key)


def string_spots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[Spot]:
    """Every place in a JSON value that holds a string: values and object keys."""
    if isinstance(value, str):
        yield path, False
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), True
            yield from string_spots(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_spots(item, (*path, index))


def with_nul(value: Any, spot: Spot, nul: str) -> Any:
    """A copy of ``value`` whose string (or key) at ``spot`` carries ``nul``."""
    path, is_key = spot
    if not path:
        return value + nul
    copied = copy.deepcopy(value)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if is_key:
        parent[f"{last}{nul}"] = parent.pop(last)
    else:
        parent[last] = f"{parent[last]}{nul}"
    return copied


def nul_bearing(value: Any) -> st.SearchStrategy[Any]:
    """``value`` as generated, or with a NUL in one of its strings (half of the time)."""
    spots = list(string_spots(value))
    if not spots:
        return st.just(value)
    mutated = st.tuples(st.sampled_from(spots), st.sampled_from(NUL_FORMS)).map(
        lambda choice: with_nul(value, *choice))
    return st.one_of(st.just(value), mutated)


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return nul_bearing(body)


@schemathesis.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
    return nul_bearing(query) if isinstance(query, dict) else st.just(query)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    log = os.environ.get("PARCOURS_NUL_LOG")
    sent = json.dumps([case.body if not isinstance(case.body, bytes) else None, case.query],
                      default=str)
    if log and "\\u0000" in sent:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{case.method} {case.path}\n")
