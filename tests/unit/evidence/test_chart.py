"""The evidence page's chart geometry, checklist and HTML on vignette data (no database)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from services.recommender.assessor import Assessor
from services.recommender.evidence import chart
from services.recommender.evidence.page import PageView, build
from services.recommender.evidence.render import render_page
from shared.fhir.bundle import resolve
from tests.conftest import FIXTURES

VIGNETTES = FIXTURES / "vignettes"


def _view(name: str, policy: str = "cms-lcd") -> PageView:
    data = json.loads((VIGNETTES / name / "bundle.json").read_text())
    expected = json.loads((VIGNETTES / name / "expected.json").read_text())
    resources = list(resolve((None, e["resource"]) for e in data["entry"]))
    patient = expected["assessments"][0]["patient"] if expected.get("assessments") else "Patient/P-001"
    key = "default:" + patient.removeprefix("Patient/")
    return build(resources, key, Assessor.load(policy), policy, datetime.fromisoformat(expected["now"]))


@pytest.fixture(scope="module")
def v02() -> PageView:
    return _view("v02-two-concordant-blocks")


def _y(panel: chart.Panel, value: float) -> float:
    _, y0, _, y1 = panel.plot
    return round(y1 - value / panel.y_max * (y1 - y0), 1)


def test_v02_one_target_two_blocks_in_time_order(v02: PageView) -> None:
    [target] = v02.targets
    assert target.pathway == "facet-rfa" and target.verdict == "supported"
    assert target.target == "right lumbar L4-L5, L5-S1"
    labels = [p.block.label for p in target.timeline.panels]
    assert labels == ["Block 1", "Block 2"]
    assert target.timeline.gaps == (None, "21 days later")
    assert [p.block.end.isoformat() for p in target.timeline.panels] == [
        "2025-02-03T09:20:00-05:00",
        "2025-02-24T09:20:00-05:00",
    ]


def test_v02_baseline_threshold_and_points_sit_at_their_pain_values(v02: PageView) -> None:
    first, second = v02.targets[0].timeline.panels
    for p in (first, second):
        assert p.y_max == 10  # NRS 0-10
        assert p.block.baseline == 7 and p.block.threshold == 80
        assert p.baseline_y == _y(p, 7)
        # 80 % relief of a baseline of 7 = pain 1.4 or less
        assert p.threshold_value == pytest.approx(1.4)
        assert p.threshold_y == _y(p, 1.4)
        assert p.threshold_y > p.baseline_y  # lower pain is drawn lower
    assert [pt.value for pt in first.points] == [7, 1, 1, 2, 6]
    assert first.points[0].baseline and not any(pt.baseline for pt in first.points[1:])
    assert [round(pt.relief, 1) for pt in first.points[1:] if pt.relief is not None] == [
        85.7,
        85.7,
        71.4,
        14.3,
    ]
    assert [pt.value for pt in second.points] == [7, 0, 1, 1, 3]
    for p in (first, second):
        assert all(pt.y == _y(p, pt.value) for pt in p.points)
        xs = [pt.x for pt in p.points]
        assert xs == sorted(xs), "readings are drawn in time order"
    assert first.peak is not None and first.peak.value == 1 and first.block.peak_relief == 85.7
    assert second.peak is not None and second.peak.value == 0 and second.block.peak_relief == 100


def test_v02_anaesthetic_window_is_the_agents_minimum_from_the_block_end(v02: PageView) -> None:
    first, second = v02.targets[0].timeline.panels
    assert first.block.window_minutes == 60  # lidocaine (policy agents.lidocaine.minimum_minutes)
    assert second.block.window_minutes == 180  # bupivacaine
    for p in (first, second):
        assert p.window is not None and p.window[0] == p.marker_x
    # lidocaine relief held exactly 60 min: the sustained run ends where the window ends
    assert first.sustained == (first.marker_x, first.window[1])  # type: ignore[index]
    # bupivacaine: 240 min at or above the threshold, past the 180 min window
    assert second.sustained is not None and second.window is not None
    assert second.sustained[1] > second.window[1]
    span = second.window[1] - second.window[0]
    assert second.sustained[1] - second.sustained[0] == pytest.approx(span * 240 / 180, abs=0.2)


def test_every_drawn_coordinate_is_inside_the_viewbox(v02: PageView) -> None:
    for p in v02.targets[0].timeline.panels:
        x0, y0, x1, y1 = p.plot
        xs = [pt.x for pt in p.points] + [p.marker_x, *p.block_span, *(p.window or ()), *(p.sustained or ())]
        ys = [pt.y for pt in p.points] + [p.baseline_y or y0, p.threshold_y or y0]
        assert all(x0 <= x <= x1 for x in xs), xs
        assert all(y0 <= y <= y1 for y in ys), ys
        assert len(p.x_ticks) >= 3 and all(x0 <= t.pos <= x1 for t in p.x_ticks)
        assert [t.label for t in p.y_ticks] == ["0", "2", "4", "6", "8", "10"]


def test_x_ticks_are_round_clock_times_in_the_blocks_offset(v02: PageView) -> None:
    first = v02.targets[0].timeline.panels[0]
    labels = [t.label for t in first.x_ticks]
    assert labels[:3] == ["09:00", "10:00", "11:00"]  # local (-05:00), hourly for a ~5 h span


def test_vas_scale_runs_to_100() -> None:
    block = chart.BlockInput(
        label="Block 1",
        start=datetime.fromisoformat("2025-01-01T09:00:00+00:00"),
        end=datetime.fromisoformat("2025-01-01T09:15:00+00:00"),
        scale="38214-3",
        baseline=80,
        baseline_time=datetime.fromisoformat("2025-01-01T08:30:00+00:00"),
        readings=[chart.Reading(datetime.fromisoformat("2025-01-01T10:00:00+00:00"), 20)],
        threshold=50,
        window_minutes=None,
        peak_relief=75,
        sustained_minutes=45,
        positive=False,
    )
    p = chart.panel(block)
    assert p.y_max == 100 and p.threshold_value == 40 and p.window is None
    assert [t.label for t in p.y_ticks][-1] == "100"


def test_v02_overview_strip_marks_both_blocks_before_now(v02: PageView) -> None:
    strip = v02.targets[0].strip
    assert strip is not None and strip.now_x is not None
    assert [(m.label, m.positive) for m in strip.marks] == [("1", True), ("2", True)]
    first, second = strip.marks
    x0, x1, _ = strip.axis
    assert x0 <= first.x < second.x < strip.now_x <= x1
    # 21 days between the blocks, 14 from the second block to the evaluation
    assert (second.x - first.x) / (strip.now_x - second.x) == pytest.approx(
        (21 * 24 * 60) / (14 * 24 * 60 - 80), rel=0.01
    )


def test_v02_checklist_is_all_met_with_policy_citations(v02: PageView) -> None:
    rows = v02.targets[0].checklist
    assert rows and all(r.status == "met" for r in rows)
    by_key = {c.key: c for r in rows for c in r.citations}
    assert by_key["pathways.facet-rfa.threshold"].value == "80"
    threshold = by_key["pathways.facet-rfa.threshold"]
    assert (threshold.source, threshold.link) == (
        "LCD L38773",
        "https://www.cms.gov/medicare-coverage-database/view/lcd.aspx?lcdid=38773",
    )
    assert all(r.citations for r in rows), [r.label for r in rows if not r.citations]  # every row cites
    assert by_key["rules.untreated-radiculopathy"].source == "LCD L38773"
    assert by_key["pathways.facet-rfa.blocks_required"].value == "2"
    assert by_key["agents.lidocaine.minimum_minutes"].value == "60"
    assert by_key["agents.bupivacaine.minimum_minutes"].value == "180"
    relief = next(r for r in rows if r.label.startswith("Relief of at least 80 %"))
    assert relief.detail == "Block 1: 85.7 %; block 2: 100 %"


def test_missing_baseline_shows_missing_data_and_the_principal_reason() -> None:
    view = _view("v14-missing-baseline")
    target = view.targets[0]
    assert target.verdict == "not-evaluable"
    assert target.principal == "There is no pain score before the block"
    statuses = {r.label: r.status for r in target.checklist}
    relief = next(label for label in statuses if label.startswith("Relief of at least"))
    assert statuses[relief] == "missing-data"


def test_second_block_below_threshold_is_not_met() -> None:
    view = _view("v03-second-block-below-80")
    target = view.targets[0]
    assert target.verdict == "not-met"
    rows = {r.label: r for r in target.checklist}
    relief = next(r for label, r in rows.items() if label.startswith("Relief of at least 80 %"))
    assert relief.status == "not-met" and relief.reasons
    assert (
        relief.detail
        == "71.4 % relief after the block on 24 Feb 2025 < 80 % required. Block 1: 85.7 %; block 2: 71.4 %"
    )
    blocks = next(r for label, r in rows.items() if label.startswith("2 positive diagnostic blocks"))
    assert blocks.status == "not-met" and blocks.detail == "1 of the 2 required is positive"
    duration = next(r for label, r in rows.items() if label.startswith("Relief lasts"))
    assert "block 2: never reached the threshold" in duration.detail
    assert [p.block.positive for p in target.timeline.panels] == [True, False]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _classes(tags: list[tuple[str, dict[str, Any]]], cls: str) -> list[dict[str, Any]]:
    return [a for _, a in tags if cls in (a.get("class") or "").split()]


def test_v02_html_is_accessible_and_self_contained(v02: PageView) -> None:
    html = render_page(v02)
    parser = _Collect()
    parser.feed(html)
    tags = parser.tags
    names = [t for t, _ in tags]
    assert ("html", {"lang": "en"}) in tags
    assert "title" in names and "h1" in names and names.count("h2") >= 2
    svgs = [a for t, a in tags if t == "svg"]
    assert len(svgs) == 3  # the overview strip and one panel per block
    assert [a["viewbox"] for a in svgs] == ["0 0 360 62", "0 0 360 236", "0 0 360 236"]
    for svg in svgs:
        assert svg["role"] == "img"
        title_id, desc_id = svg["aria-labelledby"].split()
        assert ("title", {"id": title_id}) in tags and ("desc", {"id": desc_id}) in tags
    assert len(_classes(tags, "block-marker")) == 2
    assert len(_classes(tags, "baseline-line")) == 2 and len(_classes(tags, "threshold-line")) == 2
    assert len(_classes(tags, "anaesthetic-window")) == 2
    text = " ".join(parser.text)
    assert "85.7 % relief" in text and "100 % relief" in text
    assert "table" in names and "caption" in names  # the chart's data table alternative
    # no script, no external asset
    assert "script" not in names and "link" not in names and "img" not in names
    # the only web addresses are links (not assets) to the policy's public sources
    links = re.findall(r'<a href="(https://[^"]+)"', html)
    assert "https://www.cms.gov/medicare-coverage-database/view/lcd.aspx?lcdid=38773" in links
    bare = re.sub(r'<a href="https://[^"]+"', "", html).replace("http://www.w3.org", "")
    assert "http://" not in bare and "https://" not in bare


def test_patient_text_is_escaped() -> None:
    view = _view("v02-two-concordant-blocks")
    html = render_page(replace(view, patient="<script>x</script>"))
    assert "<script>" not in html and "&lt;script&gt;" in html


def _patients(name: str) -> list[str]:
    data = json.loads((VIGNETTES / name / "bundle.json").read_text())
    return sorted({e["resource"]["id"] for e in data["entry"] if e["resource"]["resourceType"] == "Patient"})


@pytest.mark.parametrize("name", sorted(p.name for p in VIGNETTES.iterdir() if (p / "bundle.json").exists()))
def test_every_vignette_renders_one_section_per_assessment(name: str) -> None:
    data = json.loads((VIGNETTES / name / "bundle.json").read_text())
    expected = json.loads((VIGNETTES / name / "expected.json").read_text())
    resources = list(resolve((None, e["resource"]) for e in data["entry"]))
    evaluator = Assessor.load(expected.get("policy", "cms-lcd"))
    now = datetime.fromisoformat(expected["now"])
    for pid in _patients(name):
        view = build(resources, f"default:{pid}", evaluator, evaluator.policy.id, now)
        if "assessments" in expected:  # the r* vignettes state order checks only
            wanted = [a for a in expected["assessments"] if a["patient"] == f"Patient/{pid}"]
            got = [(t.pathway, t.verdict) for t in view.targets if t.order is None]
            assert sorted(got) == sorted((a["pathway"], a["verdict"]) for a in wanted)
        html = render_page(view)
        parser = _Collect()
        parser.feed(html)
        shown = "".join(parser.text)
        assert not re.search(r"\b(Procedure|Observation|QuestionnaireResponse)/", shown), "no resource ids"
        assert not re.search(r"\b\d{4}-\d{2}-\d{2}\b", shown), "dates are written for people"
        assert "unknown ·" not in shown and "– min" not in shown, "nothing unknown spelled out"
        panels = sum(len(t.timeline.panels) for t in view.targets)
        assert len(_classes(parser.tags, "block-marker")) == panels
        charts = [a for t, a in parser.tags if t == "svg" and a.get("class") == "chart"]
        assert len(charts) == panels
        strips = [a for t, a in parser.tags if t == "svg" and a.get("class") == "strip"]
        assert len(strips) == sum(1 for t in view.targets if t.procedures)
        marks = sum(len(t.procedures) for t in view.targets)
        assert len(_classes(parser.tags, "strip-mark")) == marks
        for t in view.targets:
            assert t.checklist, "every target has its criteria"
            if t.verdict != "supported":
                assert t.principal, "a verdict other than supported names its principal reason"
                assert any(r.status != "met" for r in t.checklist), "some criterion shows why"
