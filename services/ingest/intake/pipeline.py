"""One resource through intake: relevance on the raw dict, then validation, identity, references,
and patient (CONTRACT §2 "Minimum necessary", "Identity").

Two phases so that rejected input can be kept verbatim: :func:`check` looks without touching
the resource (relevance first — model validation is paid only for what is kept); :func:`prepare`
then sets the id and rewrites references in place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.ingest.intake.references import ReferenceResolver
from services.ingest.intake.repository import Prepared, StoreResult
from shared.domain.relevance import Relevance, classify, patient_reference
from shared.errors import Issue
from shared.fhir.resources import ResourceInvalid, validate_r4
from shared.fhir.text import unstorable_in, unstorable_message

NO_PATIENT_TYPES = frozenset({"Medication", "Substance"})
OUTCOMES = ("kept", "dropped", "unresolved", "rejected")


@dataclass(slots=True)
class Candidate:
    """A resource found in a payload; ``slot`` is its top-level Bundle entry (0 for a resource).
    ``relevance``: already decided on this very dict by the caller (an import's line loop, which
    drops the irrelevant as it parses), else :func:`check` decides it; ``scanned``: the JSON text
    it was parsed from was searched for what cannot be stored
    (:func:`~shared.fhir.text.unstorable_in_body`), so :func:`check` does not serialise it again."""

    slot: int
    resource: dict[str, Any]
    full_url: str | None = None
    context: dict[str, Any] | None = None
    relevance: Relevance | None = None
    scanned: bool = False

    @property
    def resource_type(self) -> str:
        rtype = self.resource.get("resourceType")
        return rtype if isinstance(rtype, str) else "(none)"


@dataclass(slots=True)
class Decision:
    """``kept`` (with ``prepared``), ``dropped`` (irrelevant), ``unresolved`` (patient unknown;
    dropped and counted) or ``rejected`` (not FHIR, invalid): with the reason."""

    candidate: Candidate
    status: str
    reason: str = ""
    issues: tuple[Issue, ...] = ()
    prepared: Prepared | None = None


@dataclass
class Tally:
    """Counts per resource type: kept / dropped / unresolved / rejected."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
    )

    def add(self, rtype: str, outcome: str, n: int = 1) -> None:
        self.counts[rtype][outcome] += n

    def merge(self, other: Tally) -> None:
        for rtype, row in other.counts.items():
            for outcome, n in row.items():
                self.add(rtype, outcome, n)

    def total(self, outcome: str) -> int:
        return sum(row[outcome] for row in self.counts.values())

    def rows(self) -> Iterator[tuple[str, dict[str, int]]]:
        yield from sorted(self.counts.items())


def check(candidate: Candidate, validate: bool = True) -> Decision:
    """Relevance on the raw dict, then FHIR R4 validation of what is kept. Does not modify it.

    ``validate=False`` is for a resource the caller found stored with the same content (it was
    validated when it was stored): everything but the schema validation is still checked."""
    resource = candidate.resource
    if not isinstance(resource.get("resourceType"), str):
        return Decision(
            candidate, "rejected", "not FHIR: no resourceType", (Issue("structure", "no resourceType"),)
        )
    relevance = candidate.relevance or classify(resource)
    if not relevance.kept:
        return Decision(candidate, "dropped", relevance.reason or f"not used ({relevance.category})")
    # a fetched resource has no bytes to scan: serialised and searched here
    bad = None if candidate.scanned else unstorable_in(resource, candidate.resource_type)
    if bad is not None:
        text = unstorable_message(*bad)
        return Decision(candidate, "rejected", text, (Issue("invalid", text, expression=(bad[0],)),))
    try:
        if validate:
            validate_r4(resource)
    except ResourceInvalid as exc:
        issues = tuple(Issue("invalid", f"{loc}: {msg}", expression=(loc,)) for loc, msg in exc.issues) or (
            Issue("invalid", str(exc)),
        )
        return Decision(candidate, "rejected", str(exc), issues)
    return Decision(candidate, "kept", relevance.category)


def patient_key_of(source_id: str, resource: Mapping[str, Any]) -> str | None:
    """``{source}:{patient id}`` from the (reference-resolved) resource, or None."""
    ref = patient_reference(resource)
    if not ref or not ref.startswith("Patient/"):
        return None
    pid = ref[len("Patient/") :]
    if not pid or "/" in pid or "?" in pid:
        return None
    return f"{source_id}:{pid}"


def prepare(decision: Decision, resolver: ReferenceResolver) -> Decision:
    """Give a checked, kept resource its identity, resolved references and patient."""
    if decision.status != "kept":
        return decision
    candidate = decision.candidate
    resource = candidate.resource
    rtype = candidate.resource_type
    rid = resolver.identity(resource, candidate.full_url)
    resource["id"] = rid
    resolver.rewrite(resource)
    pkey = patient_key_of(resolver.source.id, resource)
    if pkey is None and rtype not in NO_PATIENT_TYPES:
        return Decision(candidate, "unresolved", "the patient of this resource cannot be resolved")
    decision.prepared = Prepared(rtype, rid, resource, pkey)
    return decision


def informational(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


@dataclass(frozen=True)
class Rejection:
    """A rejected payload (or part of one) to keep verbatim as a dead letter."""

    payload: bytes
    reason: str
    outcome: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What a payload did: the HTTP answer, counts, and rejections to dead-letter."""

    status: int
    body: dict[str, Any]
    tally: Tally
    rejections: list[Rejection] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    stored: list[StoreResult] = field(default_factory=list)
    empty: bool = False  # answer with no body (what notification senders expect)
