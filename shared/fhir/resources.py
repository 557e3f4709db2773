"""The ONLY module importing ``fhir.resources`` models — explicitly R4B (the package top level is R5
and silently drops R4 fields). :func:`validate_r5` uses that top level on purpose, for R5 write-back.

Model validation is the expensive step of ingest (~50–90 µs per resource): callers decide
relevance on the raw dict first and validate only what they keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from fhir.resources import get_fhir_model_class as get_r5_model_class  # the top level IS R5
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

__all__ = ["ResourceInvalid", "validate_r4b", "validate_r5"]


class ResourceInvalid(ValueError):
    """A resource fails R4B validation; ``issues`` are ``(FHIRPath-ish location, message)`` pairs."""

    def __init__(self, resource_type: str, issues: list[tuple[str, str]], release: str = "R4") -> None:
        self.resource_type = resource_type
        self.issues = issues
        first = f"{issues[0][0]}: {issues[0][1]}" if issues else "invalid"
        super().__init__(f"{resource_type} is not valid FHIR {release}: {first}")


@cache
def _model(resource_type: str) -> type[BaseModel] | None:
    try:
        model: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return model


def is_known_type(resource_type: str) -> bool:
    return _model(resource_type) is not None


def load_models(resource_types: Iterable[str]) -> None:
    """Import the R4B models of these types now (each is otherwise imported on first use): a
    process about to fork workers loads them once for all of them."""
    for resource_type in resource_types:
        _model(resource_type)


@cache
def _r5_model(resource_type: str) -> type[BaseModel] | None:
    try:
        model: type[BaseModel] = get_r5_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return model


def validate_r4b(resource: Mapping[str, Any]) -> None:
    """Raise :class:`ResourceInvalid` when ``resource`` is not a valid R4B resource of its type."""
    _validate(resource, _model, "R4")


def validate_r5(resource: Mapping[str, Any]) -> None:
    """Raise :class:`ResourceInvalid` when ``resource`` is not a valid R5 resource of its type
    (e.g. an R4 ``CarePlan.activity.detail`` or ``activity.reference`` is refused)."""
    _validate(resource, _r5_model, "R5")


def _validate(
    resource: Mapping[str, Any], model_of: Callable[[str], type[BaseModel] | None], release: str
) -> None:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ResourceInvalid("Resource", [("resourceType", "missing")], release)
    model = model_of(rtype)
    if model is None:
        raise ResourceInvalid(rtype, [("resourceType", f"unknown resource type {rtype!r}")], release)
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        issues = [
            (
                ".".join([rtype, *(str(p) for p in err.get("loc", ()))]),
                str(err.get("msg", "invalid"))[:300],
            )
            for err in exc.errors()[:10]
        ]
        raise ResourceInvalid(rtype, issues, release) from None
