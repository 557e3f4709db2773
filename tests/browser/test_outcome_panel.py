"""The evidence page's outcome panel (issue 19) in headless Chromium: a real ``pinpoint serve``
loaded with the f05 case (two ablations), opened through a signed link at 1280 and 400 px;
screenshots in ``tests/bench/out/`` (``conftest.chromium`` finds or installs Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from shared.signing import LinkSigner
from tests.browser.devtools import OUT, png_size, run_chromium
from tests.browser.test_evidence_page import SECRET, _Dom
from tests.conftest import FIXTURES
from tests.serving import PUSH_HEADERS, clean_env, free_port, push_config, run_pinpoint, serving

pytestmark = pytest.mark.browser

F05 = FIXTURES / "vignettes" / "f05-outcomes-relief-duration-censoring"
F05_NOW = "2025-02-01T09:00:00-05:00"


@pytest.fixture(scope="module")
def outcome_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("outcome-browser")
    port = free_port()
    env = clean_env(
        PINPOINT_DATABASE_URL=f"sqlite:///{tmp / 'pinpoint.db'}",
        PINPOINT_API_TOKENS="reader",
        PINPOINT_CONFIG_FILE=push_config(tmp),
        PINPOINT_LINK_SECRET=SECRET,
    )
    log_path = tmp / "serve.log"
    with serving(
        "serve", "--port", str(port), env=env, base=f"http://127.0.0.1:{port}", log_path=log_path
    ) as base:
        pushed = httpx.post(
            f"{base}/fhir",
            content=(F05 / "bundle.json").read_bytes(),
            headers=PUSH_HEADERS,
            timeout=30,
        )
        assert pushed.status_code == 200, pushed.text
        with log_path.open("ab") as log:
            worker = run_pinpoint("worker", "--once", env=env, log=log)
            assert worker.wait(timeout=120) == 0, log_path.read_text()[-2000:]
        signed = LinkSigner(SECRET).sign(
            "/patients/default:P-001/evidence", now=datetime.now(UTC), ttl=timedelta(minutes=15)
        )
        yield f"{base}/patients/P-001/evidence?{signed.partition('?')[2]}&now={quote(F05_NOW)}"


def test_outcome_panel_shows_both_ablations(chromium: str, outcome_url: str, tmp_path: Path) -> None:
    result = run_chromium(chromium, tmp_path, "--window-size=1280,900", "--dump-dom", outcome_url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Dom()
    dom.feed(result.stdout)
    assert len(dom.having("outcome")) == 2
    assert len(dom.having("mcid-band")) == 1  # the ODI of the first ablation
    assert len(dom.having("reference")) == 3  # two 50 % lines and one ODI baseline
    text = " ".join(dom.text)
    assert (
        "At least 50 % relief for 182 days, then lost; next procedure on the same target after 287 days."
        in text
    )
    assert "At least 50 % relief for 91 days, still relieved at the last reading." in text
    assert "Oswestry Disability Index 22 (18 better; beyond the MCID)" in text
    assert "after the next procedure" in text and "not yet due" in text


@pytest.mark.parametrize("width", [1280, 400])
def test_practice_outcomes_page_screenshot(
    chromium: str, outcome_url: str, tmp_path: Path, width: int
) -> None:
    """``/outcomes`` as served (fetched with the API token), rendered by Chromium from a file."""
    base = outcome_url.split("/patients/")[0]
    page = httpx.get(f"{base}/outcomes", headers={"authorization": "Bearer reader"}, timeout=60)
    assert page.status_code == 200 and 'class="km-curve"' in page.text
    html = tmp_path / "outcomes.html"
    html.write_text(page.text, encoding="utf-8")
    dom = _Dom()
    dom.feed(run_chromium(chromium, tmp_path, "--window-size=1280,900", "--dump-dom", html.as_uri()).stdout)
    assert len(dom.having("km-curve")) == 1 and len(dom.having("pathway")) == 1  # the two RFAs of f05
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / f"outcomes-page-{width}.png"
    shot.unlink(missing_ok=True)
    result = run_chromium(
        chromium, tmp_path, f"--window-size={width},900", f"--screenshot={shot}", html.as_uri()
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == (width, 900)


@pytest.mark.parametrize("width", [1280, 400])
def test_outcome_panel_screenshot(chromium: str, outcome_url: str, tmp_path: Path, width: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / f"evidence-outcomes-f05-{width}.png"
    shot.unlink(missing_ok=True)
    result = run_chromium(
        chromium, tmp_path, f"--window-size={width},3600", f"--screenshot={shot}", outcome_url
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == (width, 3600)
    assert shot.stat().st_size > 20_000
