"""Pinpoint's error tree.

Every expected failure is a :class:`PinpointError` carrying the HTTP status and the FHIR
``IssueType`` code; the HTTP layer renders each as an OperationOutcome. Domain code raises these,
never ``HTTPException``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, FHIR issue type code, text, and where."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def as_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource (as JSON) from issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}


@dataclass
class PinpointError(Exception):
    """Base of every expected failure. ``status`` is the HTTP status it maps to."""

    diagnostics: str
    status: int = 400
    code: str = "invalid"
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)
        if not self.issues:
            self.issues = [Issue(code=self.code, diagnostics=self.diagnostics)]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class InvalidInput(PinpointError):
    """400: the body is not JSON, not FHIR, or not a valid resource."""


class Unauthorized(PinpointError):
    def __init__(self, diagnostics: str = "Authentication required") -> None:
        super().__init__(diagnostics, 401, "login", headers={"WWW-Authenticate": "Bearer"})


class Forbidden(PinpointError):
    def __init__(self, diagnostics: str = "Not allowed") -> None:
        super().__init__(diagnostics, 403, "forbidden")


class NotFound(PinpointError):
    def __init__(self, diagnostics: str = "Not found") -> None:
        super().__init__(diagnostics, 404, "not-found")


class Gone(PinpointError):
    def __init__(self, diagnostics: str = "Resource deleted") -> None:
        super().__init__(diagnostics, 410, "deleted")


class Conflict(PinpointError):
    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics, 409, "conflict")


class PreconditionFailed(PinpointError):
    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics, 412, "processing")


class TooLarge(PinpointError):
    """413. A request body over the limit carries what was read of it: its first bytes
    (``head``) and its size (``size``; a lower bound when ``size_exact`` is false: reading stopped
    at the limit)."""

    def __init__(
        self, diagnostics: str, *, head: bytes = b"", size: int = 0, size_exact: bool = True
    ) -> None:
        super().__init__(diagnostics, 413, "too-costly")
        self.head = head
        self.size = size
        self.size_exact = size_exact


class UnsupportedMediaType(PinpointError):
    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics, 415, "not-supported")


class UpstreamError(PinpointError):
    """An upstream FHIR server failed or could not be reached."""

    def __init__(self, diagnostics: str, status: int = 502) -> None:
        super().__init__(diagnostics, status, "transient")


class ConfigError(Exception):
    """Invalid settings or configuration file: one line naming the variable or key."""
