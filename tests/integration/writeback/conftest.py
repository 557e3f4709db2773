"""Fixtures of the write-back tests: a fake FHIR server served on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fhir_server import FakeFhirServer, LiveServer, serve_in_thread


@pytest.fixture
def fake() -> FakeFhirServer:
    return FakeFhirServer()


@pytest.fixture
def live(fake: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(fake) as running:
        yield running
