"""The suite's copies of ../shared (tests/fixtures/shared) are the files they were copied from.

A clone without ../shared passes on the copies; beside ../shared this test keeps them current (a
missing ../shared fails under CI=true, see ``shared_path``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI, SHARED, SHARED_COPIES

COPIES = sorted(p for p in SHARED_COPIES.rglob("*") if p.is_file())


def test_the_suite_keeps_copies_of_what_it_reads_from_shared() -> None:
    assert len(COPIES) >= 30


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(SHARED_COPIES)))
def test_each_copy_matches_its_source(copy: Path) -> None:
    source = SHARED / copy.relative_to(SHARED_COPIES)
    if not SHARED.is_dir():
        if IN_CI:
            pytest.fail("../shared is required beside the clone in CI")
        pytest.skip("../shared is not beside this clone")
    assert source.read_bytes() == copy.read_bytes()
