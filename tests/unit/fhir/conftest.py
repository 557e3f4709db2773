"""Fixtures for the outbound FHIR client unit tests: a respx router as the transport seam."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

BASE = "https://fhir.hospital-a.example/R4"
TOKEN_URL = "https://auth.hospital-a.example/token"


class RecordingSleep:
    """Injected instead of asyncio.sleep: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, assert_all_mocked=True)


@pytest.fixture
async def http(router: respx.Router) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler), timeout=5.0) as client:
        yield client


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()
