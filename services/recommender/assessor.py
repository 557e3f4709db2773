"""The one door to the criteria engine.

Every caller — the worker, the read API (``/patients/{id}/assessment``), the evidence page, CDS
Hooks and ``pinpoint evaluate`` — turns raw FHIR resources into the assessment document (CONTRACT
§3) through an :class:`Assessor`: normalise (which applies the relevance filter) → evaluate →
document. The policy comes from :func:`services.recommender.policies.load_policy`, the one policy
cache of the process. Pure: no I/O beyond reading the policy once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.recommender.engine import (
    PatientContext,
    PatientResult,
    Policy,
    PolicyError,
    assessment_document,
    evaluate,
    used_sources,
)
from services.recommender.engine.completeness import mark_unavailable
from services.recommender.engine.document import patient_entry
from services.recommender.engine.policy import PolicyRef
from services.recommender.engine.practice import procedure_outcomes, unchanged_until
from services.recommender.policies import load_policy
from shared.domain.facts import PatientFacts
from shared.domain.normalize import normalize
from shared.errors import ConfigError

Resources = Iterable[Mapping[str, Any]]


def empty_entry(patient_ref: str) -> dict[str, Any]:
    return {"patient": patient_ref, "assessments": [], "orderChecks": [], "alerts": [], "outcomes": []}


@dataclass(frozen=True)
class Assessed:
    """A CDS call's evaluation: the §3 document, the facts it was drawn from and the engine's
    per-patient indexes over them (the evidence snapshot reads both), per patient."""

    document: dict[str, Any]
    facts: dict[str, PatientFacts]
    contexts: dict[str, PatientContext]


@dataclass(frozen=True)
class Assessor:
    policy: Policy

    @classmethod
    def load(cls, name_or_path: str) -> Assessor:
        """A policy by built-in name or file (:class:`PolicyError` when invalid)."""
        return cls(load_policy(name_or_path))

    @classmethod
    def configured(cls, policy_setting: str) -> Assessor:
        """The configured policy (``PINPOINT_POLICY``); an invalid one is a :class:`ConfigError`."""
        try:
            return cls.load(policy_setting)
        except PolicyError as exc:
            raise ConfigError(f"PINPOINT_POLICY: {exc}") from None

    @property
    def ref(self) -> PolicyRef:
        return self.policy.ref

    def facts(self, resources: Resources) -> dict[str, PatientFacts]:
        """Facts per patient (``Patient/<id>``) of reference-resolved raw resources."""
        return normalize(resources)

    def results(self, resources: Resources, now: datetime) -> list[PatientResult]:
        return [evaluate(f, self.policy, now=now) for f in self.facts(resources).values()]

    def document(self, resources: Resources, now: datetime) -> dict[str, Any]:
        """The §3 document of every patient the resources name (CDS Hooks, ``pinpoint evaluate``)."""
        document: dict[str, Any] = assessment_document(self.results(resources, now), self.policy, now)
        return document

    def assess(
        self, resources: Resources, now: datetime, unavailable: frozenset[str] = frozenset()
    ) -> Assessed:
        """:meth:`document` plus the facts (normalised once; CDS keeps them as the evidence
        snapshot). ``unavailable``: kinds of data that could not be retrieved
        (:data:`~services.recommender.engine.completeness.DATA_KINDS`); the targets that need them
        are ``not-evaluable`` / ``data-unavailable``."""
        facts = self.facts(resources)
        contexts = {ref: PatientContext(f, self.policy) for ref, f in facts.items()}
        results = [evaluate(f, self.policy, now=now, ctx=contexts[ref]) for ref, f in facts.items()]
        document: dict[str, Any] = assessment_document(results, self.policy, now)
        if unavailable:
            document["patients"] = [mark_unavailable(p, unavailable) for p in document["patients"]]
        return Assessed(document, facts, contexts)

    def patient_entry(self, resources: Resources, patient_ref: str, now: datetime) -> dict[str, Any]:
        """The §3 entry of ``patient_ref`` (``Patient/<id>``), each alert with its evidence references
        (``alerts[].evidence``, for the DetectedIssues); empty lists when nothing applies."""
        return self.entry(self.facts(resources).get(patient_ref), patient_ref, now)

    def contexts(self, facts: Mapping[str, PatientFacts]) -> dict[str, PatientContext]:
        """Each patient's :class:`PatientContext` (the engine's indexes and judged blocks, which
        depend on the facts and the policy only), for a caller that asks both :meth:`entry` and
        :meth:`outcomes_of` of one patient (the worker): built once, they serve both."""
        return {ref: PatientContext(f, self.policy) for ref, f in facts.items()}

    def entry(
        self, facts: PatientFacts | None, patient_ref: str, now: datetime, ctx: PatientContext | None = None
    ) -> dict[str, Any]:
        """:meth:`patient_entry` from facts already normalised (the evidence page draws them too);
        ``ctx``: their context when the caller keeps it (:meth:`contexts`)."""
        if facts is None:
            return empty_entry(patient_ref)
        result = evaluate(facts, self.policy, now=now, ctx=ctx)
        entry = patient_entry(result, self.policy)
        for doc_alert, alert in zip(entry["alerts"], result.alerts, strict=True):
            if alert.evidence:
                doc_alert["evidence"] = list(alert.evidence)
        return entry

    def procedure_outcomes(
        self, resources: Resources, now: datetime
    ) -> tuple[list[tuple[Mapping[str, Any], bool | None]], datetime | None]:
        """Per definitive or therapeutic procedure of the patients named: its outcome at ``now``
        and whether its pathway's criteria were met the day before (None: not assessed) — what
        :meth:`entry` would say now and on each day before, at the cost of what the practice's
        outcomes summary reads (:func:`~services.recommender.engine.practice.procedure_outcomes`)
        — and until when the same resources give the same rows (None: for ever)."""
        return self.outcomes_of(self.facts(resources).values(), now)

    def outcomes_of(
        self, patients: Iterable[PatientFacts | PatientContext], now: datetime
    ) -> tuple[list[tuple[Mapping[str, Any], bool | None]], datetime | None]:
        """:meth:`procedure_outcomes` from facts already normalised, or from their contexts
        (:meth:`contexts`: the worker's, which its :meth:`entry` has used already — the outcomes at
        ``now`` are then not computed again)."""
        rows: list[tuple[Mapping[str, Any], bool | None]] = []
        until: datetime | None = None
        for one in patients:
            ctx = one if isinstance(one, PatientContext) else PatientContext(one, self.policy)
            found = procedure_outcomes(ctx, now)
            rows += found
            end = unchanged_until(ctx.facts, found, now)
            if end is not None and (until is None or end < until):
                until = end
        return rows, until

    def patient_document(self, resources: Resources, patient_ref: str, now: datetime) -> dict[str, Any]:
        """The whole §3 document for one patient (alerts exactly as §3: code, severity, text)."""
        entry = self.patient_entry(resources, patient_ref, now)
        for alert in entry["alerts"]:
            alert.pop("evidence", None)
        document: dict[str, Any] = {
            "policy": {"id": self.policy.id, "version": str(self.policy.version)},
            "evaluatedAt": now.isoformat(),
            "patients": [entry],
        }
        document["sources"] = used_sources(document, self.policy)
        return document
