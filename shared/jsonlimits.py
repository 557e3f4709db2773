"""How deep received JSON may nest.

orjson reads up to 1,024 levels but writes only 254, so a body that parses can still fail when a
rejected payload or a fetched resource is written back out (a 500 before this check). FHIR
resources nest a few dozen levels at most (Bundle → entry → resource → contained → extension …);
anything deeper than :data:`MAX_DEPTH` is refused as malformed where it arrives.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of parsed JSON (a scalar is 0), counted without recursion and at most
    ``limit + 1`` (the walk stops once the limit is passed)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def too_deep(value: Any, limit: int = MAX_DEPTH, body: bytes | None = None) -> bool:
    """Whether parsed JSON nests deeper than ``limit``. With the ``body`` it was parsed from, a
    body holding at most ``limit`` opening brackets (counted in C, strings included) cannot, and
    the walk is skipped."""
    if body is not None and body.count(b"{") + body.count(b"[") <= limit:
        return False
    return nesting_depth(value, limit) > limit


TOO_DEEP = f"JSON nests deeper than {MAX_DEPTH} levels"
