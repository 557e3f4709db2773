"""The landing page and the worklist in headless Chromium: a real ``pinpoint serve`` with API
tokens, every vignette loaded as its own patient and judged by ``pinpoint worker --once``, the
pages opened with the reader's token at 1280 and 400 px (layout, console, screenshots)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from shared.db.models import AuditLog, CdsFeedback
from shared.db.session import make_engine, session_scope
from tests.api.recommender.helpers import VIGNETTES
from tests.api.worklist.test_worklist import _as
from tests.browser.devtools import OUT, DevTools
from tests.serving import PUSH_HEADERS, clean_env, free_port, push_config, run_pinpoint, serving

pytestmark = pytest.mark.browser

READER = {"Authorization": "Bearer reader"}

LAYOUT = """JSON.stringify((() => {
  const vw = window.innerWidth;
  const overflow = [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > vw + 1)
    .map((e) => e.tagName + '.' + e.className);
  const rows = [...document.querySelectorAll('tr.entry')];
  const first = rows.length ? rows[0].getBoundingClientRect() : null;
  return {
    vw, scrollW: document.documentElement.scrollWidth, overflow,
    rows: rows.length,
    firstRow: first && {w: first.width, h: first.height},
    links: [...document.querySelectorAll('tr.entry td.who a')].map((a) => a.getAttribute('href')),
    fontPx: parseFloat(getComputedStyle(document.querySelector('td') || document.body).fontSize),
  };
})())"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("worklist-browser")
    port = free_port()
    env = clean_env(
        PINPOINT_DATABASE_URL=f"sqlite:///{tmp / 'pinpoint.db'}",
        PINPOINT_API_TOKENS="reader",
        PINPOINT_CONFIG_FILE=push_config(tmp),
        PINPOINT_ADMIN_TOKENS="boss",
    )
    log_path = tmp / "serve.log"
    with serving(
        "serve", "--port", str(port), env=env, base=f"http://127.0.0.1:{port}", log_path=log_path
    ) as base:
        names = sorted(p.name for p in VIGNETTES.iterdir() if (p / "bundle.json").exists())
        for n, name in enumerate(names, 1):
            pushed = httpx.post(
                f"{base}/fhir",
                content=_as(name, f"WL-{n:02d}"),
                headers=PUSH_HEADERS,
                timeout=30,
            )
            assert pushed.status_code == 200, pushed.text
        with log_path.open("ab") as log:
            worker = run_pinpoint("worker", "--once", env=env, log=log)
            assert worker.wait(timeout=180) == 0, log_path.read_text()[-2000:]
        _cards_and_feedback(f"sqlite:///{tmp / 'pinpoint.db'}")
        yield base


def _cards_and_feedback(url: str) -> None:
    """Cards some EHR was shown and its clinicians' answers, as the CDS service records them."""
    at = datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
    engine = make_engine(url)
    with session_scope(engine) as s:
        for n, (pathway, verdict, outcome) in enumerate(
            [
                ("facet-rfa", "supported", "accepted"),
                ("facet-rfa", "supported", "accepted"),
                ("facet-rfa", "not-met", "overridden"),
                ("knee-steroid", "not-met", "overridden"),
                ("alert:cumulative-steroid", "needs-review", None),
            ]
        ):
            card = f"card-{n}"
            about = {
                "pathway": pathway,
                "verdict": verdict,
                "policy": "cms-lcd",
                "policyVersion": "2025.11-1",
            }
            s.add(AuditLog(at=at, actor="https://ehr.example", action="cds.card", target=card, detail=about))
            if outcome:
                body: dict[str, object] = {"card": card, "outcome": outcome, "pinpoint": about}
                if outcome == "overridden":
                    body["overrideReason"] = {"reason": {"code": "x", "display": "Clinical judgement"}}
                s.add(
                    CdsFeedback(
                        service_id="pinpoint-order-sign",
                        card=card,
                        outcome=outcome,
                        outcome_at=at.isoformat(),
                        body=body,
                        received_at=at,
                    )
                )
    engine.dispose()


def test_the_worklist_needs_the_token(server: str) -> None:
    assert httpx.get(f"{server}/patients", timeout=10).status_code == 401
    assert httpx.get(f"{server}/patients.csv", timeout=10).status_code == 401
    assert httpx.get(f"{server}/patients", headers=READER, timeout=10).status_code == 200


@pytest.mark.parametrize("width", [1280, 400])
def test_worklist_layout_console_and_screenshot(
    chromium: str, server: str, tmp_path: Path, width: int
) -> None:
    with DevTools(chromium, tmp_path / "profile", width) as tools:
        tools.call("Network.setExtraHTTPHeaders", headers=READER)
        tools.open(f"{server}/patients")
        layout = json.loads(tools.evaluate(LAYOUT))
        shot = tools.call("Page.captureScreenshot", format="png")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"worklist-{width}.png").write_bytes(base64.b64decode(shot["data"]))
        # a row's link opens that patient's evidence page
        tools.open(server + layout["links"][0])
        title = tools.evaluate("document.title")
    assert tools.errors == [], tools.errors  # CSP violations and script errors included
    assert layout["vw"] == width
    assert layout["scrollW"] <= width, f"horizontal scrolling at {width}px: {layout['overflow']}"
    assert layout["overflow"] == []
    assert layout["rows"] >= 15  # one per vignette assessment, on the first page
    assert layout["fontPx"] >= 14
    if width == 400:
        assert layout["firstRow"]["w"] <= 400 and layout["firstRow"]["h"] > 100  # a card per row
    else:
        assert layout["firstRow"]["h"] < 120  # a table row
    assert title.startswith("Evidence for ") and title.endswith(
        " · Pinpoint"
    )  # named when the Patient is known
    outside = [u for u in tools.requests if not u.startswith((server, "data:"))]
    assert outside == []


@pytest.mark.parametrize("width", [1280, 400])
def test_landing_page(chromium: str, server: str, tmp_path: Path, width: int) -> None:
    with DevTools(chromium, tmp_path / "profile", width) as tools:
        tools.open(f"{server}/")
        layout = json.loads(tools.evaluate(LAYOUT))
        links = tools.evaluate("[...document.querySelectorAll('main a')].map((a) => a.getAttribute('href'))")
        shot = tools.call("Page.captureScreenshot", format="png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"landing-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    assert tools.errors == []
    assert layout["scrollW"] <= width and layout["overflow"] == []
    assert {"/patients", "/docs", "/readyz"} <= set(links)


@pytest.mark.parametrize("width", [1280, 400])
def test_feedback_page(chromium: str, server: str, tmp_path: Path, width: int) -> None:
    with DevTools(chromium, tmp_path / "profile", width) as tools:
        tools.call("Network.setExtraHTTPHeaders", headers=READER)
        tools.open(f"{server}/feedback")
        layout = json.loads(tools.evaluate(LAYOUT))
        text = tools.evaluate("document.body.innerText")
        shot = tools.call("Page.captureScreenshot", format="png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"feedback-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    assert tools.errors == []
    assert layout["scrollW"] <= width and layout["overflow"] == []
    assert layout["rows"] == 4  # facet RFA met / not met, knee, the alert
    assert "5 cards shown, 2 accepted, 2 overridden" in text
    assert "Clinical judgement (1)" in text


@pytest.mark.parametrize("width", [1280, 400])
def test_whatif_page(chromium: str, server: str, tmp_path: Path, width: int) -> None:
    with DevTools(chromium, tmp_path / "profile", width) as tools:
        tools.call("Network.setExtraHTTPHeaders", headers=READER)
        tools.open(f"{server}/whatif?baseline=cms-lcd&policy=consensus-2020")
        tools.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; }), 0")
        layout = json.loads(tools.evaluate(LAYOUT))
        text = tools.evaluate("document.body.innerText")
        links = tools.evaluate(
            "[...document.querySelectorAll('ul.changes a')].map((a) => a.getAttribute('href'))"
        )
        shot = tools.call("Page.captureScreenshot", format="png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"whatif-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    assert tools.errors == []
    assert layout["scrollW"] <= width and layout["overflow"] == []
    assert "patients judged under cms-lcd" in text and "Facet radiofrequency ablation" in text
    assert layout["rows"] >= 3  # matrix cells
    assert links and all(h.startswith("/patients/WL-") and h.endswith("/evidence") for h in links)
