"""Pinpoint's pure clinical domain: facts, terminology, normalisation and relevance (stdlib only)."""

from shared.domain.facts import PatientFacts
from shared.domain.normalize import normalize
from shared.domain.relevance import Relevance, classify, patient_reference

__all__ = ["PatientFacts", "Relevance", "classify", "normalize", "patient_reference"]
