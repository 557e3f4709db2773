"""How deep received JSON nests: read from the text (the CDS hot path) and from the parsed value
agree on every document, escapes and brackets inside strings included."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.jsonlimits import MAX_DEPTH, nesting_depth, text_too_deep, too_deep

TRICKY = ['a"[', "}{", "\\", '\\"]', "\\\\", '"', "[]", "{", "\n", "\u005b", ""]
scalars = st.one_of(
    st.sampled_from(TRICKY), st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.none(), st.booleans()
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(TRICKY) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(documents, st.integers(min_value=0, max_value=8))
def test_the_text_and_the_value_agree(document: Any, limit: int) -> None:
    text = orjson.dumps(document)
    deep = nesting_depth(document, limit) > limit
    assert text_too_deep(text, limit) == deep
    assert too_deep(document, limit, body=text) == deep
    assert too_deep(document, limit, body=orjson.dumps(document, option=orjson.OPT_INDENT_2)) == deep


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b'{"a": ' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, False),
        (b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), True),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), True),
        (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string do not nest
        (b'{"k\\"[[[":"\\\\", "v": "]]]"}', False),
        (b"1", False),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, False),  # just under: exactly the limit
        # just over, with more brackets and escaped quotes inside strings at every level
        (b'[" \\\\\\"[{ ", ' * (MAX_DEPTH + 1) + b"1" + b"]" * (MAX_DEPTH + 1), True),
        (b'["\\"", "[[[", ' * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH, False),
        # fewer opening brackets than the limit outside strings, many more inside them
        (b'{"a": "' + b"{" * 300 + b'", "b": [[["\\\\"]]]}', False),
        (b"  [ [ 1 ] ,\n [ ] ]  ", False),
    ],
)
def test_the_limit(text: bytes, deep: bool) -> None:
    assert text_too_deep(text) is deep
    assert too_deep(orjson.loads(text)) is deep
    assert too_deep(orjson.loads(text), body=text) is deep
