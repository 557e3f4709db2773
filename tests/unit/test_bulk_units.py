"""Import helpers that need no database: the raw-bytes relevance filter and the cutting of files."""

from __future__ import annotations

from pathlib import Path

from services.ingest.bulk import never_kept, one_type, units


def test_a_line_naming_a_type_never_kept_is_recognised_without_parsing() -> None:
    assert never_kept(b'{"resourceType":"Claim","id":"1"}\n') == "Claim"
    assert never_kept(b' { "resourceType" : "ExplanationOfBenefit", "id": "x"}') == "ExplanationOfBenefit"
    # kept types, other key orders, and junk are left to the parser
    assert never_kept(b'{"resourceType":"Observation","id":"1"}') is None
    assert never_kept(b'{"id":"1","resourceType":"Claim"}') is None
    assert never_kept(b"{not json") is None
    assert never_kept(b"") is None


def test_a_block_of_lines_of_one_type_is_counted_whole_and_a_block_of_mixed_lines_is_not() -> None:
    claim = b'{"resourceType":"Claim","id":"%d","status":"active"}'
    block = b"\n".join(claim % i for i in range(50))
    assert one_type(block + b"\n") == ("Claim", 50)
    assert one_type(block) == ("Claim", 50)  # the file's last line, without its newline
    assert one_type(block.replace(b"\n", b"\r\n") + b"\r\n") == ("Claim", 50)
    assert one_type(b'{"resourceType":"Observation","id":"o"}\n' * 3) == ("Observation", 3)
    # one line of another type, a kept type, a blank line, a type that only begins alike, a
    # line whose type is not first, spaces, junk: each line is read on its own
    for odd in (
        b'{"resourceType":"Encounter","id":"e"}',
        b'{"resourceType":"Observation","id":"o"}',
        b"",
        b'{"resourceType":"ClaimResponse","id":"r"}',
        b'{"id":"x","resourceType":"Claim"}',
        b" " + claim % 99,
        b"{not json",
    ):
        assert one_type(b"\n".join([claim % 1, odd, claim % 2]) + b"\n") is None, odd
        assert one_type(b"\n".join([claim % 1, claim % 2, odd]) + b"\n") is None, odd
    assert one_type(b'{"resourceType":"Claim') is None
    assert one_type(b'{"resourceType":"","id":"x"}\n') is None
    assert one_type(b"") is None


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
