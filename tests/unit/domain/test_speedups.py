"""The normaliser's and the engine's speed-ups change nothing a caller sees: the quicker frozen
dataclass constructor builds the same values as the dataclass's own, and the remembered
"where does this procedure act" gives the same facts as working it out every time."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from shared.domain import _json as j
from shared.domain._frozen import quick_init, quick_replace
from shared.domain.facts import PainReading, by_time_ref
from shared.fhir.bundle import flatten, resolve
from tests.conftest import FIXTURES, shared_path

n = importlib.import_module("shared.domain.normalize")  # the module (the package exports the function)


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()
    d: list[int] = dataclasses.field(default_factory=list)
    e: int = dataclasses.field(default=5, kw_only=True)


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Quick:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()
    d: list[int] = dataclasses.field(default_factory=list)
    e: int = dataclasses.field(default=5, kw_only=True)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "x"), {}), ((1, "x", (2,), [3]), {"e": 7}), ((), {"a": 2, "c": (1, 2), "e": 0})],
)
def test_quick_init_builds_what_the_dataclass_builds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    plain, quick = _Plain(*args, **kwargs), _Quick(*args, **kwargs)
    assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
    assert repr(quick).removeprefix("_Quick") == repr(plain).removeprefix("_Plain")
    assert quick == _Quick(*args, **kwargs) and hash(quick.c) == hash(plain.c)


def test_quick_init_keeps_the_class_frozen_and_its_rules() -> None:
    q = _Quick(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.a = 2  # type: ignore[misc]
    assert _Quick(1).d is not _Quick(1).d  # a fresh default each time
    assert dataclasses.replace(q, b="z") == _Quick(1, "z")
    with pytest.raises(TypeError):
        _Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Quick(1, "b", (), [], 9)  # type: ignore[call-arg]  # keyword-only stays keyword-only


@pytest.mark.parametrize("changes", [{}, {"b": "z"}, {"a": 3, "d": [1], "e": 0}])
def test_quick_replace_copies_as_dataclasses_replace(changes: dict[str, Any]) -> None:
    q = _Quick(1, "x", (2,), [3], e=7)
    assert quick_replace(q, **changes) == dataclasses.replace(q, **changes)
    with pytest.raises(TypeError):
        quick_replace(q, z=1)


def test_quick_replace_runs_post_init() -> None:
    from services.recommender.engine.model import Assessment, Target  # lazy: engine types

    target = Target("lumbar", ("L4-L5",), "left")
    step = {"system": "http://www.ama-assn.org/go/cpt", "code": "64635"}
    judged = Assessment("facet-rfa", target, "not-met", ())
    assert quick_replace(judged, next_step=step).step_targets == (target,)


def test_remembered_dates_are_the_dates_parsed_each_time() -> None:
    """Each distinct string is parsed once and each offset has one ``timezone``: the values,
    their text and their order are those of parsing every string anew."""
    texts = [
        "2025-02-03T09:00:00-05:00", "2025-02-03T14:00:00Z", "2025-02-03T08:59:00-05:00",
        "2025-02-03T09:00:00+00:00", "2025-02-03", "2025-02", "2025", "2025-02-30", "20250203",
        "2025-02-03T09:00:00", "2025-02-03T09:00:00.123456+05:30", "not a date", "",
    ]  # fmt: skip
    for _ in range(2):  # cold, then remembered
        got = [j.parse_datetime(t) for t in texts]
        fresh = [j._parse_datetime(t) for t in texts]
        assert got == fresh
        assert [repr(d) for d in got] == [repr(d) for d in fresh]
        assert [d.isoformat() for d in got if d] == [d.isoformat() for d in fresh if d]
        assert [j.parse_date(t) for t in texts] == [d.date() if d else None for d in fresh]
    minus5 = {id(j.parse_datetime(t).tzinfo) for t in texts[:3:2]}  # type: ignore[union-attr]
    assert len(minus5) == 1, "one timezone object for -05:00"
    facts = [PainReading(f"Observation/{i}", "72514-3", 1.0, d, (), None) for i, d in enumerate(got) if d]
    assert sorted(facts, key=by_time_ref) == sorted(facts, key=lambda f: (f.time, f.ref))


def test_quick_init_runs_post_init() -> None:
    from services.recommender.engine.model import Assessment, Target  # lazy: engine types

    target = Target("lumbar", ("L4-L5",), "left")
    step = {"system": "http://www.ama-assn.org/go/cpt", "code": "64635"}
    assert Assessment("facet-rfa", target, "supported", (), next_step=step).step_targets == (target,)
    assert Assessment("facet-rfa", target, "not-met", ()).step_targets == ()


def _bundles() -> list[Path]:
    local = sorted((FIXTURES / "vignettes").glob("*/bundle.json"))
    shared = sorted(shared_path("clinical", "vignettes").glob("*/bundle.json"))
    return local + shared


def _resources(path: Path) -> list[dict[str, Any]]:
    return list(resolve(flatten(json.loads(path.read_text()))))


def test_remembered_sites_give_the_facts_of_sites_worked_out_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundles = _bundles()
    assert len(bundles) >= 20
    computed = [n.normalize(_resources(p)) for p in bundles]  # cold, then warm: the cache fills
    again = [n.normalize(_resources(p)) for p in bundles]
    assert n._SITES, "the bundles' procedures were remembered"
    monkeypatch.setattr(n, "_site", n._site_of)
    n._SITES.clear()
    plain = [n.normalize(_resources(p)) for p in bundles]
    assert computed == plain
    assert again == plain
    assert not n._SITES
