"""The evidence page in headless Chromium (Debian ``chromium``): a real ``pinpoint serve`` on
127.0.0.1 loaded with the v02 vignette, opened through a signed link at 1280 and 400 px.

Chromium is installed with ``apt-get install -y chromium`` when absent and the test runs as root;
otherwise the module is skipped with the reason — except under ``CI=true``, where it fails.
Screenshots go to ``tests/bench/out/`` (ignored by git) for people to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from shared.signing import LinkSigner
from tests.browser.devtools import OUT, DevTools, png_size, run_chromium
from tests.conftest import FIXTURES
from tests.serving import PUSH_HEADERS, clean_env, free_port, push_config, run_pinpoint, serving

pytestmark = pytest.mark.browser

V02 = FIXTURES / "vignettes" / "v02-two-concordant-blocks"
V02_NOW = "2025-03-10T08:00:00-05:00"
SECRET = "browser-test-link-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``pinpoint serve`` on 127.0.0.1 with tokens and a link secret, v02 pushed and evaluated."""
    tmp = tmp_path_factory.mktemp("evidence-browser")
    port = free_port()
    env = clean_env(
        PINPOINT_DATABASE_URL=f"sqlite:///{tmp / 'pinpoint.db'}",
        PINPOINT_API_TOKENS="reader",
        PINPOINT_CONFIG_FILE=push_config(tmp),
        PINPOINT_ADMIN_TOKENS="boss",
        PINPOINT_LINK_SECRET=SECRET,
    )
    log_path = tmp / "serve.log"
    args = ("serve", "--port", str(port))
    with serving(*args, env=env, base=f"http://127.0.0.1:{port}", log_path=log_path) as base:
        pushed = httpx.post(
            f"{base}/fhir",
            content=(V02 / "bundle.json").read_bytes(),
            headers=PUSH_HEADERS,
            timeout=30,
        )
        assert pushed.status_code == 200, pushed.text
        with log_path.open("ab") as log:
            worker = run_pinpoint("worker", "--once", env=env, log=log)
            assert worker.wait(timeout=120) == 0, log_path.read_text()[-2000:]
        yield base


@pytest.fixture(scope="module")
def page_url(server: str) -> str:
    """The link a CDS card carries (signed with the server's secret), at the vignette's date."""
    signed = LinkSigner(SECRET).sign(
        "/patients/default:P-001/evidence", now=datetime.now(UTC), ttl=timedelta(minutes=15)
    )
    query = signed.partition("?")[2]
    return f"{server}/patients/P-001/evidence?{query}&now={quote(V02_NOW)}"


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, cls: str) -> list[tuple[str, dict[str, str | None]]]:
        return [(t, a) for t, a in self.tags if cls in (a.get("class") or "").split()]


def test_the_server_refuses_the_page_without_the_link(server: str, page_url: str) -> None:
    assert httpx.get(f"{server}/patients/P-001/evidence", timeout=10).status_code == 401
    assert httpx.get(page_url, timeout=10).status_code == 200


def test_rendered_dom_has_the_chart_for_the_v02_patient(chromium: str, page_url: str, tmp_path: Path) -> None:
    result = run_chromium(chromium, tmp_path, "--window-size=1280,900", "--dump-dom", page_url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Dom()
    dom.feed(result.stdout)
    charts = [a for t, a in dom.tags if t == "svg" and "chart" in (a.get("class") or "")]
    assert len(charts) == 2 and all(a.get("role") == "img" for a in charts)
    assert len(dom.having("block-marker")) == 2
    assert len(dom.having("baseline-line")) == 2 and len(dom.having("threshold-line")) == 2
    assert len(dom.having("anaesthetic-window")) == 2
    assert len(dom.having("reading")) == 10  # baseline + 4 readings per block
    text = " ".join(dom.text)
    assert "85.7 % relief" in text and "100 % relief" in text
    assert "Facet radiofrequency ablation — right lumbar L4-L5, L5-S1" in text
    assert "On record: CarePlan/" in text  # the worker's stored suggestion


LAYOUT = """JSON.stringify((() => {
  const vw = window.innerWidth;
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {l: r.left, r: r.right, t: r.top, w: r.width, h: r.height};
  };
  const overflow = [...document.querySelectorAll('body *')]
    .filter((e) => !e.closest('.scroll, svg') && e.getBoundingClientRect().right > vw + 1)
    .map((e) => e.tagName + '.' + e.className);
  return {
    vw, scrollW: document.documentElement.scrollWidth,
    charts: [...document.querySelectorAll('svg.chart')].map(box),
    fontPx: parseFloat(getComputedStyle(document.body).fontSize),
    tickPx: [...document.querySelectorAll('svg.chart .x-tick')].map((e) => e.getBoundingClientRect().height),
    overflow,
  };
})())"""


@pytest.mark.parametrize("width", [1280, 400])
def test_layout_intact_and_no_console_errors(
    chromium: str, page_url: str, tmp_path: Path, width: int
) -> None:
    with DevTools(chromium, tmp_path / "profile", width) as tools:
        # the console check can fail: a page logging an error is caught
        tools.open("data:text/html,<script>console.error('control-error')</script>")
        assert any("control-error" in e for e in tools.errors), tools.errors
        tools.errors.clear()
        tools.open(page_url)
        layout = json.loads(tools.evaluate(LAYOUT))
    assert tools.errors == [], tools.errors  # CSP violations and script errors included
    assert layout["vw"] == width
    assert layout["scrollW"] <= width, f"horizontal scrolling at {width}px: {layout['overflow']}"
    assert layout["overflow"] == []
    charts = layout["charts"]
    assert len(charts) == 2
    for c in charts:
        assert c["l"] >= 0 and c["r"] <= width and c["h"] > 0.5 * c["w"] * 236 / 360
    if width == 400:
        assert all(c["w"] >= 300 for c in charts), charts  # each panel gets the whole side panel
        assert charts[1]["t"] > charts[0]["t"] + charts[0]["h"] - 1  # stacked
        assert min(layout["tickPx"]) >= 8  # tick labels stay legible
    else:
        assert abs(charts[0]["t"] - charts[1]["t"]) < 40  # side by side on a laptop


@pytest.mark.parametrize("width", [1280, 400])
def test_screenshot(chromium: str, page_url: str, tmp_path: Path, width: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / f"evidence-v02-{width}.png"
    shot.unlink(missing_ok=True)
    result = run_chromium(chromium, tmp_path, f"--window-size={width},900", f"--screenshot={shot}", page_url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == (width, 900)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
