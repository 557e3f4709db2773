"""Pinpoint driven as the CDS Hooks Sandbox drives it, nothing stored in Pinpoint, and every
card's link followed in headless Chromium to a rendered evidence page.

- the EHR's FHIR server: the fake FHIR server on loopback holding the v02 vignette, an *open*
  source of Pinpoint (no outbound credential);
- the calls: ES384 JWTs with a ``jku`` header (the Sandbox's; Pinpoint never follows it: the
  issuer's keys are allow-listed), ``fhirServer`` = the fake, no ``fhirAuthorization``, a prefetch
  without its ``observations`` key, order-select (with ``selections``) and order-sign with the
  draft RFA order;
- Pinpoint: ``build_app`` served by uvicorn on loopback (its CDS clock pinned to the vignette's
  date, the only seam replaced);
- then the Observation search fails at the EHR (503): the card says the pain scores could not be
  retrieved, never a clinical reason.

Screenshots of each card (its JSON rendered into a simple HTML mock of a card) and of the page it
links to go to ``tests/bench/out/cds-sandbox-*.png``.
"""

from __future__ import annotations

import html
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from markdown_it import MarkdownIt
from sqlalchemy.engine import Engine

from shared.settings import CdsConfig, ConfigFile, Settings, Source, TrustedIssuer
from tests.browser.devtools import OUT, png_size, run_chromium
from tests.browser.test_evidence_page import _Dom
from tests.conftest import FIXTURES
from tests.fakes.fhir_server import FakeFhirServer, Fault, LiveServer, serve_in_thread
from tests.serving import free_port, serve_app

pytestmark = pytest.mark.browser

V02 = FIXTURES / "vignettes" / "v02-two-concordant-blocks"
NOW = datetime.fromisoformat("2025-03-10T08:00:00-05:00")
SANDBOX = "https://sandbox.cds-hooks.org"
KEYS = FIXTURES / "cds"


@pytest.fixture
def ehr() -> Iterator[LiveServer]:
    fake = FakeFhirServer()
    fake.load_bundle(json.loads((V02 / "bundle.json").read_text()))
    with serve_in_thread(fake) as live:
        yield live


def _sign(aud: str) -> str:
    """A CDS client JWT as the Sandbox makes it: ES384, ``kid``, ``typ``, and a ``jku``."""
    jwk = next(
        k
        for k in json.loads((KEYS / "smart-jwks-ES384-private-EXAMPLE-ONLY.json").read_text())["keys"]
        if "d" in k
    )
    now = int(NOW.timestamp())  # Pinpoint's CDS clock is pinned to the vignette's date
    claims = {"iss": SANDBOX, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    headers = {"kid": jwk["kid"], "typ": "JWT", "jku": f"{SANDBOX}/.well-known/jwks.json"}
    return jwt.encode(claims, jwt.PyJWK(jwk).key, algorithm="ES384", headers=headers)


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _call(hook: str, fhir_server: str) -> dict[str, Any]:
    """The vignette as the Sandbox sends it: prefetch answered, but ``observations`` left out."""
    resources = [e["resource"] for e in json.loads((V02 / "bundle.json").read_text())["entry"]]
    by_type = lambda t: [r for r in resources if r["resourceType"] == t]  # noqa: E731
    order = by_type("ServiceRequest")[0]
    context: dict[str, Any] = {
        "userId": "Practitioner/dr-1",
        "patientId": "P-001",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
    }
    if hook == "order-select":
        context["selections"] = [f"ServiceRequest/{order['id']}"]
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server,  # no fhirAuthorization
        "context": context,
        "prefetch": {
            "patient": by_type("Patient")[0],
            "procedures": _searchset(by_type("Procedure")),
            "conditions": _searchset(by_type("Condition")),
            "medications": _searchset([]),
            "medicationStatements": _searchset(by_type("MedicationStatement")),
            "medicationRequests": _searchset([]),
        },
    }


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def _md(text: str) -> str:
    """The card's detail as an EHR shows it: CommonMark with GitHub's pipe tables (CDS Hooks
    2.0: detail is GitHub Flavored Markdown); raw HTML in it stays text."""
    return _MARKDOWN.render(text)


def card_mock(card: dict[str, Any]) -> str:
    """The card as a CDS client shows it (indicator bar, summary, source, detail, suggestion, link)."""
    colour = {"info": "#2f6db5", "warning": "#c77700", "critical": "#b3261e"}[card["indicator"]]
    suggestions = "".join(f"<button>{html.escape(s['label'])}</button>" for s in card.get("suggestions", []))
    links = "".join(
        f"<a class=link href='{html.escape(l['url'])}'>{html.escape(l['label'])} ({l['type']})</a>"
        for l in card["links"]  # noqa: E741
    )
    return f"""<!doctype html><meta charset=utf-8><style>
body{{font:14px system-ui,sans-serif;background:#eef1f4;margin:0;padding:16px}}
.card{{background:#fff;border-left:6px solid {colour};border-radius:4px;padding:12px 16px;max-width:760px}}
.summary{{font-size:16px;font-weight:600}} .source{{color:#555;font-size:12px;margin:4px 0 8px}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px}}
button{{margin:8px 8px 0 0;padding:4px 10px}} .link{{display:inline-block;margin-top:10px}}</style>
<div class=card><div class=summary>{html.escape(card["summary"])}</div>
<div class=source>{card["indicator"]} · {html.escape(card["source"]["label"])}</div>
{_md(card.get("detail", ""))}{suggestions}<div>{links}</div></div>"""


def _await_snapshots(engine: Engine, cards: list[str]) -> None:
    deadline = time.monotonic() + 15
    query = sa.text("SELECT count(*) FROM evidence_snapshot WHERE card IN :cards").bindparams(
        sa.bindparam("cards", expanding=True)
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query, {"cards": cards}).scalar_one() == len(cards):
                return
        time.sleep(0.05)
    pytest.fail("the cards' evidence snapshots were not written")


def _dom(binary: str, tmp: Path, url: str) -> _Dom:
    result = run_chromium(binary, tmp, "--window-size=1280,900", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Dom()
    dom.feed(result.stdout)
    return dom


def _shot(binary: str, tmp: Path, url: str, name: str, height: int = 900) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / name
    shot.unlink(missing_ok=True)
    result = run_chromium(binary, tmp, f"--window-size=1280,{height}", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == (1280, height) and shot.stat().st_size > 10_000
    return shot


def test_sandbox_calls_and_every_card_link_opens_a_rendered_evidence_page(
    chromium: str,
    ehr: LiveServer,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
) -> None:
    from services.server import Role, build_app

    config = ConfigFile(
        sources=[Source(id="ehr", fhir_base_url=ehr.base_url)],  # type: ignore[arg-type]  # open: no credential
        cds=CdsConfig(
            trusted_issuers=[TrustedIssuer(iss=SANDBOX, jwks_file=KEYS / "smart-jwks-ES384-public.json")]
        ),
    )
    port = free_port()
    settings = Settings(
        database_url=db_url,
        public_base_url=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]  # JWT aud and card links
        link_secret="sandbox-test",  # type: ignore[arg-type]
        config=config,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = build_app(settings, Role.all, engine)
    app.state.recommender.cds.clock = lambda: NOW
    fake = ehr.fake
    with serve_app(app, port=port) as origin:
        http = httpx.Client(base_url=origin, timeout=30)
        answers: list[tuple[str, dict[str, Any]]] = []
        for hook in ("order-select", "order-sign"):
            path = f"/cds-services/pinpoint-{hook}"
            fake.clear_requests()
            r = http.post(
                path,
                json=_call(hook, ehr.base_url),
                headers={"authorization": f"Bearer {_sign(origin + path)}"},
            )
            assert r.status_code == 200, r.text
            # the absent key was read from the open source, without a token
            [obs] = fake.requests_to("GET", "Observation")
            assert "authorization" not in obs.headers and obs.status == 200
            [card] = r.json()["cards"]
            assert card["indicator"] == "info" and ": supported — 2 blocks" in card["summary"], card
            answers.append((hook, card))
        # the EHR cannot answer the Observation search: the data is named as missing
        fake.inject("GET", "Observation", Fault.error(503), Fault.error(503), Fault.error(503))
        path = "/cds-services/pinpoint-order-sign"
        r = http.post(
            path,
            json=_call("order-sign", ehr.base_url),
            headers={"authorization": f"Bearer {_sign(origin + path)}"},
        )
        assert r.status_code == 200, r.text
        [card] = r.json()["cards"]
        assert card["indicator"] == "warning"
        assert "pain scores could not be retrieved from the EHR" in card["summary"], card["summary"]
        assert "no pain score" not in json.dumps(card).lower()  # never a clinical reason
        assert "suggestions" not in card  # no advice on the order without its data
        answers.append(("order-sign-observations-failed", card))
        with engine.connect() as conn:  # nothing was stored in Pinpoint
            assert conn.execute(sa.text("SELECT count(*) FROM resource")).scalar_one() == 0
        _await_snapshots(engine, [c["uuid"] for _, c in answers])

        for n, (name, card) in enumerate(answers, 1):
            [link] = card["links"]
            assert link["type"] == "absolute" and link["url"].startswith(
                f"{origin}/evidence/cards/{card['uuid']}?"
            )
            mock = tmp_path / f"card-{n}.html"
            mock.write_text(card_mock(card))
            shot = _shot(chromium, tmp_path, mock.as_uri(), f"cds-sandbox-card-{name}.png", height=700)
            assert shot.exists()
            dom = _dom(chromium, tmp_path, link["url"])
            text = " ".join(" ".join(dom.text).split())
            assert "Base-L Testpatient" in text and "Born 12 Jun 1957" in text and "Female" in text
            assert "As evaluated on 10 Mar 2025 at 08:00 from the EHR's data" in text  # the data's zone
            assert "Facet radiofrequency ablation — right lumbar L4-L5, L5-S1" in text
            if name.endswith("failed"):
                assert "Pain scores could not be retrieved from the EHR" in text
            else:
                assert "Criteria met" in text
                charts = [a for t, a in dom.tags if t == "svg" and "chart" in (a.get("class") or "")]
                assert len(charts) == 2  # both blocks drawn from the snapshot's readings
            _shot(chromium, tmp_path, link["url"], f"cds-sandbox-evidence-{name}.png")

        # a browser with an unsigned, expired or unknown link gets a page saying what to do
        links = app.state.recommender.links
        unsigned = f"{origin}/evidence/cards/{answers[0][1]['uuid']}"
        expired = links.card_url(answers[0][1]["uuid"], now=datetime.now(NOW.tzinfo), ttl=-links.ttl)
        unknown = links.card_url(str(uuid.uuid4()), now=datetime.now(NOW.tzinfo))
        for url, status, says in (
            (unsigned, 401, "Open the card again from the patient's chart"),
            (expired, 401, "Open the card again from the patient's chart"),
            (unknown, 404, "Open the patient's chart in the EHR again"),
        ):
            text = " ".join(" ".join(_dom(chromium, tmp_path, url).text).split())
            assert says in text and f"HTTP {status}" in text, text
            api = http.get(url)  # an API client keeps the OperationOutcome
            assert api.status_code == status and api.json()["resourceType"] == "OperationOutcome"
        http.close()
