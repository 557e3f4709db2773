"""Import helpers that need no database: the raw-bytes relevance filter and the cutting of files."""

from __future__ import annotations

from pathlib import Path

from services.ingest.bulk import never_kept, units


def test_a_line_naming_a_type_never_kept_is_recognised_without_parsing() -> None:
    assert never_kept(b'{"resourceType":"Claim","id":"1"}\n') == "Claim"
    assert never_kept(b' { "resourceType" : "ExplanationOfBenefit", "id": "x"}') == "ExplanationOfBenefit"
    # kept types, other key orders, and junk are left to the parser
    assert never_kept(b'{"resourceType":"Observation","id":"1"}') is None
    assert never_kept(b'{"id":"1","resourceType":"Claim"}') is None
    assert never_kept(b"{not json") is None
    assert never_kept(b"") is None


def test_units_cut_at_line_boundaries_with_their_first_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    lines = [f'{{"n": {i}, "pad": "{"p" * (i % 7)}"}}\n'.encode() for i in range(200)]
    path.write_bytes(b"".join(lines))
    cut = list(units([path], unit_bytes=500))
    assert len(cut) > 5
    data = path.read_bytes()
    assert b"".join(data[s[0] : s[1]] for _, s, _ in cut if s) == data
    for _, span, size in cut:
        assert span is not None and size == span[1] - span[0]
        start, _, first = span
        assert data[:start].count(b"\n") + 1 == first
        assert start == 0 or data[start - 1 : start] == b"\n"
    small = tmp_path / "small.ndjson"
    small.write_bytes(b"{}\n")
    assert list(units([small], unit_bytes=500)) == [(small, None, 3)]


def test_the_depth_check_skips_the_walk_only_where_the_bytes_cannot_nest_too_deep() -> None:
    import orjson

    from shared.jsonlimits import MAX_DEPTH, too_deep

    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH):
        body = b'{"a":' * depth + b"1" + b"}" * depth
        data = orjson.loads(body)
        assert too_deep(data, body=body) is too_deep(data) is (depth > MAX_DEPTH)
    # brackets inside strings only send the check to the walk, which decides
    shallow = orjson.dumps({"resourceType": "Patient", "text": "{[" * MAX_DEPTH})
    assert too_deep(orjson.loads(shallow), body=shallow) is False
