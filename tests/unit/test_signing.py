"""Signed evidence links: accepted until they expire, refused when tampered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.signing import LinkSigner

NOW = datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
PATH = "/patients/P-001/evidence"


def _parts(link: str) -> tuple[str, str, str]:
    split = urlsplit(link)
    q = parse_qs(split.query)
    return split.path, q["exp"][0], q["sig"][0]


def test_fresh_link_verifies() -> None:
    signer = LinkSigner("k")
    path, exp, sig = _parts(signer.sign(PATH, now=NOW, ttl=timedelta(minutes=15)))
    assert path == PATH
    assert signer.verify(path, exp, sig, now=NOW + timedelta(minutes=14))


@pytest.mark.parametrize(
    ("mutate", "at"),
    [
        pytest.param(lambda p, e, s: (p, e, s), timedelta(minutes=16), id="expired"),
        pytest.param(lambda p, e, s: ("/patients/P-002/evidence", e, s), timedelta(0), id="other-patient"),
        pytest.param(lambda p, e, s: (p, str(int(e) + 3600), s), timedelta(0), id="extended-expiry"),
        pytest.param(lambda p, e, s: (p, e, s[:-2] + "AA"), timedelta(0), id="tampered-signature"),
        pytest.param(lambda p, e, s: (p, None, s), timedelta(0), id="missing-exp"),
    ],
)
def test_bad_links_refused(mutate, at: timedelta) -> None:  # type: ignore[no-untyped-def]
    signer = LinkSigner("k")
    parts = _parts(signer.sign(PATH, now=NOW, ttl=timedelta(minutes=15)))
    assert not signer.verify(*mutate(*parts), now=NOW + at)


def test_other_key_refused() -> None:
    path, exp, sig = _parts(LinkSigner("k1").sign(PATH, now=NOW, ttl=timedelta(minutes=15)))
    assert not LinkSigner("k2").verify(path, exp, sig, now=NOW)
