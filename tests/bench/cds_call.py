"""Benchmark: the per-call work of a CDS patient-view, in process, without the server (not a test).

Run: ``.venv/bin/python tests/bench/cds_call.py [N] [--before REF] [--rounds R]`` (default 300
calls). The calls are ``tests/bench/cds_hooks.py``'s: 80-resource prefetches (v02's pain history,
a card, plus unrelated conditions, medications and scores that differ per patient). Per call,
CPU time of one core, the best of five passes over the N calls, with the serving process's
collector settings: parsing the body (``parse_hook_request``), gathering the data as ``gather``
does with nothing stored (the prefetch read key by key, its bundles flattened, merged with the
draft orders: ``read_prefetch``, ``merge``), then what ``handle_call`` does with them —
assessing (normalise, engine, §3 document: ``Assessor.assess``), the cards, and the evidence
snapshot built after the answer has left. The server's own work (framework, auth, writers) is
``tests/bench/cds_hooks.py``'s to measure.

``--before REF`` (e.g. the commit a branch started from): this script also runs over that
commit's source (``git archive``; ``--tree DIR`` runs it over DIR), each side a fresh process,
alternately, ``--rounds`` of each; then each side's figures with the load average.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

# --tree DIR: the source to measure (--before runs this script over the older commit's)
sys.path.insert(
    0,
    sys.argv[sys.argv.index("--tree") + 1]
    if "--tree" in sys.argv
    else str(Path(__file__).resolve().parents[2]),
)

from services.recommender.assessor import Assessor
from services.recommender.cds_hooks.cards import CardContext, cards_for
from services.recommender.cds_hooks.data import as_draft_orders, merge, read_prefetch
from services.recommender.cds_hooks.models import parse_hook_request
from services.recommender.evidence.snapshots import patient_header, snapshot_body, snapshot_rows
from tests.bench._load import loadavg
from tests.bench.cds_hooks import request_body

SERVICE = ("pinpoint-patient-view", "patient-view")
PARTS = ("parse", "gather", "assess", "cards", "snapshot")


def _gathered(call: Any) -> list[dict[str, Any]]:
    """The resources ``gather`` hands the engine when the store holds nothing for the patient."""
    ehr = [r for s in read_prefetch(call.prefetch).values() for r in s.resources]
    return merge((), ehr, as_draft_orders(call.draft_orders, call.patient_id))


def one_call(assessor: Assessor, body: bytes, now: datetime, clock: dict[str, float]) -> int:
    """One call's work; each part's CPU time added to ``clock``; the number of cards."""
    c0 = time.process_time()
    call = parse_hook_request(body, *SERVICE)
    cp = time.process_time()
    resources = _gathered(call)
    c1 = time.process_time()
    assessed = assessor.assess(resources, now)
    c2 = time.process_time()
    ref = f"Patient/{call.patient_id}"
    ctx = CardContext("https://pinpoint.bench.example/evidence", {"id": "cms-lcd"}, order_hook=False)
    rendered = cards_for(
        assessed.document, patient_ref=ref, hook=SERVICE[1], drafts={}, selections=[], ctx=ctx
    )
    c3 = time.process_time()
    entry = next((p for p in assessed.document["patients"] if p.get("patient") == ref), {})
    body_ = snapshot_body(
        entry=entry,
        facts=assessed.facts.get(ref),
        context=assessed.contexts.get(ref),
        policy=assessor.policy,
        patient=patient_header(resources, call.patient_id),
        now=now,
    )
    snapshot_rows(
        (r.card["uuid"] for r in rendered),
        patient_key=f"default:{call.patient_id}",
        service_id=SERVICE[0],
        body=body_,
        now=now,
        retention=timedelta(days=7),
    )
    c4 = time.process_time()
    for part, spent in zip(PARTS, (cp - c0, c1 - cp, c2 - c1, c3 - c2, c4 - c3), strict=True):
        clock[part] += spent
    return len(rendered)


def main(n: int) -> None:
    bodies = [orjson.dumps(request_body(k)) for k in range(1, n + 1)]
    assessor = Assessor.load("cms-lcd")
    now = datetime(2025, 6, 1, 9, tzinfo=UTC)
    for body in bodies[:30]:  # warm-up: policy, caches
        one_call(assessor, body, now, dict.fromkeys(PARTS, 0.0))
    gc.collect()  # as `pinpoint serve` after start-up: the heap frozen, collections rarer
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    best: dict[str, float] | None = None
    cards = 0
    for _ in range(5):
        clock = dict.fromkeys(PARTS, 0.0)
        cards = sum(one_call(assessor, body, now, clock) for body in bodies)
        if best is None or sum(clock.values()) < sum(best.values()):
            best = clock
    assert best is not None
    us = {k: v * 1e6 / n for k, v in best.items()}
    print(
        f"per call (CPU, best of 5 passes over {n} calls, {cards / n:.0f} card): {sum(us.values()):.0f} µs —"
        f" parse {us['parse']:.0f}, gather {us['gather']:.0f}, assess {us['assess']:.0f},"
        f" cards {us['cards']:.0f}, snapshot {us['snapshot']:.0f}"
    )
    print(f"/proc/loadavg: {loadavg()}")


def side_by_side(n: int, before: str, rounds: int) -> None:
    from tests.bench.startup import alternate

    rows: list[tuple[str, list[float], str]] = []
    for label, out in alternate(str(Path(__file__).resolve()), n, before, rounds):
        found = re.findall(
            r": (\d+) µs — parse (\d+), gather (\d+), assess (\d+), cards (\d+), snapshot (\d+)", out
        )[0]
        rows.append((label, [float(x) for x in found], loadavg()))
        print(
            f"{label:>12}: {found[0]} µs a call (parse {found[1]}, gather {found[2]},"
            f" assess {found[3]}, cards {found[4]}, snapshot {found[5]}); load {rows[-1][2]}"
        )
    for label in (before, "this tree"):
        mine = [r[1] for r in rows if r[0] == label]
        med = [sorted(col)[len(col) // 2] for col in zip(*mine, strict=True)]
        print(
            f"{label:>12}: median {med[0]:.0f} µs CPU a call (parse {med[1]:.0f}, gather {med[2]:.0f},"
            f" assess {med[3]:.0f}, cards {med[4]:.0f}, snapshot {med[5]:.0f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=300)
    parser.add_argument("--before", metavar="REF", help="also run git REF, alternating with this tree")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side with --before")
    parser.add_argument("--tree", metavar="DIR", help="measure the source in DIR (what --before uses)")
    args = parser.parse_args()
    if args.before:
        side_by_side(args.n, args.before, args.rounds)
    else:
        main(args.n)
