"""How deep received JSON may nest.

orjson reads up to 1,024 levels but writes only 254, so a body that parses can still fail when a
rejected payload or a fetched resource is written back out (a 500 before this check). FHIR
resources nest a few dozen levels at most (Bundle → entry → resource → contained → extension …);
anything deeper than :data:`MAX_DEPTH` is refused as malformed where it arrives.
"""

from __future__ import annotations

import re
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
    """Whether parsed JSON nests deeper than ``limit``. With the ``body`` it was parsed from (the
    exact bytes orjson read), no walk over the value: a body holding at most ``limit`` opening
    brackets (counted in C, strings included) cannot, and any other is read by
    :func:`text_too_deep` (a notification of a few hundred bytes: 0.4 µs against 12 µs for the
    walk)."""
    if body is None:
        return nesting_depth(value, limit) > limit
    if len(body) - len(body.translate(None, b"{[")) <= limit:
        return False
    return text_too_deep(body, limit)


#: ``text_too_deep``: every byte but quotes and brackets dropped, braces read as brackets.
_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_STRING = re.compile(rb'"[^"]*"')


def text_too_deep(text: bytes, limit: int = MAX_DEPTH) -> bool:
    """:func:`too_deep` read from the JSON text itself — ``text`` must be valid JSON (parsed
    already) — at C speed: about a fifth of the walk over the parsed value for an 80-resource CDS
    prefetch. Escapes go first when the text holds a backslash at all (an escaped backslash, then
    an escaped quote), then everything but quotes and brackets; strings are dropped (``""`` pairs
    at once: two quotes side by side enclose nothing outside a string), and each pass removes the
    innermost ``[]`` pairs: one level a pass."""
    if b"\\" in text:  # one byte's search (memchr) spares most bodies both two-byte passes
        if b"\\\\" in text:
            text = text.replace(b"\\\\", b"")
        text = text.replace(b'\\"', b"")
    skeleton = text.translate(_AS_BRACKETS, _STRUCTURE)
    if len(skeleton) <= limit:  # quotes and brackets: at most ``limit`` opening ones
        return False
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _STRING.sub(b"", skeleton)
    for _ in range(limit):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return bool(skeleton)


TOO_DEEP = f"JSON nests deeper than {MAX_DEPTH} levels"
