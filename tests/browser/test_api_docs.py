"""``/docs`` in headless Chromium: Swagger UI renders the API from assets the server itself
serves (the fastapi-offline package's copy of swagger-ui-dist) — no request leaves loopback, so
the page works on a hospital network without internet access."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.devtools import OUT, DevTools
from tests.serving import clean_env, free_port, serving

pytestmark = pytest.mark.browser

RENDERED = """JSON.stringify({
  title: (document.querySelector('.swagger-ui .info .title') || {}).textContent || '',
  operations: document.querySelectorAll('.swagger-ui .opblock').length,
  error: (document.querySelector('.swagger-ui .errors-wrapper') || {}).textContent || '',
})"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("docs-browser")
    port = free_port()
    env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp / 'pinpoint.db'}")
    with serving(
        "serve", "--port", str(port), env=env, base=f"http://127.0.0.1:{port}", log_path=tmp / "log"
    ) as b:
        yield b


def test_docs_render_with_no_request_beyond_the_server(chromium: str, server: str, tmp_path: Path) -> None:
    import json

    with DevTools(chromium, tmp_path / "profile", 1280) as tools:
        tools.open(f"{server}/docs")
        deadline = time.monotonic() + 30
        while True:
            rendered = json.loads(tools.evaluate(RENDERED))
            if rendered["operations"] or rendered["error"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        shot = tools.call("Page.captureScreenshot", format="png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "api-docs-1280.png").write_bytes(base64.b64decode(shot["data"]))
    assert rendered["error"] == ""
    assert rendered["title"].startswith("Pinpoint")
    assert rendered["operations"] > 10  # the API's operations are listed
    assert tools.errors == [], tools.errors
    # the recorder sees the page's own requests (a test that could not fail would see none) …
    paths = {urlsplit(u).path for u in tools.requests}
    assert {"/docs", "/openapi.json", "/static-offline-docs/swagger-ui-bundle.js"} <= paths, paths
    # … and none of them leaves the server
    origin = urlsplit(server).netloc
    outside = [
        u
        for u in tools.requests
        if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != origin
    ]
    assert outside == []
