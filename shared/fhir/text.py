"""Text that cannot be stored: NUL (U+0000) and lone surrogates (U+D800–U+DFFF).

PostgreSQL refuses both in ``text`` and ``jsonb``; SQLite would store them. Pinpoint refuses them
at the door on both backends, naming where (a FHIRPath-like expression), so the two behave alike
and nothing reaches the database that it would throw back. They are not FHIR either: a FHIR
string is Unicode text, and R4 says strings SHOULD NOT hold characters below U+0020 other than
tab, carriage return and line feed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shared.errors import InvalidInput, Issue

#: A JSON body can only carry a NUL as this escape (a raw 0x00 byte is not JSON): when it is
#: absent the body holds no NUL and the walk below is skipped.
NUL_ESCAPE = b"\\u0000"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    return _UNSTORABLE.search(text) is None


def _what(text: str) -> str:
    return "a NUL character (U+0000)" if "\x00" in text else "a lone surrogate (U+D800–U+DFFF)"


def find_unstorable(data: Any, root: str) -> tuple[str, str] | None:
    """``(expression, what)`` for the first string — value or property name — in parsed JSON
    that cannot be stored, else ``None``. ``root`` starts the expression (the resource type).

    Iterative (no recursion limit), in document order.
    """
    stack: list[tuple[str, Any]] = [(root, data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            if not is_storable(node):
                return path, _what(node)
        elif isinstance(node, dict):
            children: list[tuple[str, Any]] = []
            for key, value in node.items():
                if not is_storable(key):
                    return f"{path} (a property name)", _what(key)
                children.append((f"{path}.{key}", value))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return None


def unstorable_in_body(body: bytes, data: Any) -> tuple[str, str] | None:
    """:func:`find_unstorable` for a parsed JSON body, skipped when the bytes hold no NUL escape
    (JSON parsers already refuse lone surrogates and invalid UTF-8)."""
    if NUL_ESCAPE not in body:
        return None
    root = data.get("resourceType") if isinstance(data, dict) else None
    return find_unstorable(data, root if isinstance(root, str) and is_storable(root) else "$")


def storable_copy(value: Any) -> Any:
    """``value`` (parsed JSON or a string) with every unstorable character replaced by U+FFFD:
    for the text Pinpoint writes about a payload (reasons, outcomes), which may quote it."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable_copy(k): storable_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_copy(v) for v in value]
    return value


def unstorable_in(data: Any, root: str) -> tuple[str, str] | None:
    """:func:`find_unstorable` for parsed JSON without its bytes (a fetched resource): serialised
    first (fast), walked only when that shows a NUL or fails (a lone surrogate)."""
    try:
        if NUL_ESCAPE not in orjson.dumps(data):
            return None
    except orjson.JSONEncodeError:  # a lone surrogate (or not JSON at all)
        pass
    return find_unstorable(data, root)


def refuse_unstorable_json(raw: bytes) -> None:
    """:class:`~shared.errors.InvalidInput` (400, naming where) when a JSON body holds a NUL;
    a body that is not JSON passes (its parser names that problem)."""
    if NUL_ESCAPE not in raw:
        return
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    bad = find_unstorable(data, "$")
    if bad is not None:
        text = unstorable_message(*bad)
        raise InvalidInput(text, issues=[Issue("invalid", text, expression=(bad[0],))])


def unstorable_message(expression: str, what: str) -> str:
    return f"{expression} holds {what}, which cannot be stored; remove it and send again"
