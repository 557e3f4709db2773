"""Errors raised by the outbound FHIR client and SMART Backend Services auth.

Every class is an :class:`~shared.errors.UpstreamError`, so an error that escapes to one of our
own HTTP endpoints renders as a 502/504 OperationOutcome (``code: transient``) without extra
handling. What the *upstream* server said is kept apart from what *we* answer:

- ``PinpointError.status`` is the status Pinpoint itself would answer (502, or 504 for timeouts);
- ``FhirHttpError.upstream_status`` is the status the FHIR server answered, and
  ``FhirHttpError.upstream_outcome`` its OperationOutcome (``None`` if the body was not one);
  ``outcome()`` (inherited) is still the OperationOutcome *Pinpoint* would answer.

Messages carry methods, resource types, statuses and issue codes only — never query strings,
resource bodies or the server's free-text diagnostics, which may contain patient data.

Tree::

    UpstreamError (shared.errors)
    └── FhirClientError
        ├── FhirTransportError          connect/read timeout, connection refused, protocol error
        ├── FhirHttpError               non-2xx answer (upstream_status, upstream_outcome, issue_codes)
        │   ├── FhirNotFound            404, 410
        │   ├── FhirVersionConflict     409, 412 (If-Match mismatch, >1 conditional match)
        │   └── FhirAuthError           401, 403 (after one re-authentication)
        ├── FhirInvalidResponse         2xx whose body is not the FHIR JSON expected
        ├── ForeignUrlError             refused: URL outside the configured base
        ├── PagingLimitExceeded         a search needed more pages than allowed
        └── SmartAuthError              the token endpoint refused us or failed
"""

from __future__ import annotations

from typing import Any

from shared.errors import UpstreamError

__all__ = [
    "FhirAuthError",
    "FhirClientError",
    "FhirHttpError",
    "FhirInvalidResponse",
    "FhirNotFound",
    "FhirTransportError",
    "FhirVersionConflict",
    "ForeignUrlError",
    "PagingLimitExceeded",
    "SmartAuthError",
]


class FhirClientError(UpstreamError):
    """Base of every outbound FHIR client failure."""


class FhirTransportError(FhirClientError):
    """The server could not be reached or did not answer in time (after all retries)."""

    def __init__(self, diagnostics: str, *, timeout: bool = False) -> None:
        super().__init__(diagnostics, 504 if timeout else 502)
        self.timeout = timeout


class FhirHttpError(FhirClientError):
    """The server answered with a non-2xx status.

    ``upstream_status`` is the server's status, ``upstream_outcome`` its OperationOutcome (a dict)
    when the body was one, and ``retry_after`` the parsed ``Retry-After`` in seconds when present.
    """

    def __init__(
        self,
        diagnostics: str,
        *,
        upstream_status: int,
        upstream_outcome: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.upstream_status = upstream_status
        self.upstream_outcome = upstream_outcome
        self.retry_after = retry_after

    @property
    def issue_codes(self) -> list[str]:
        """The ``issue.code`` values of the server's OperationOutcome (branch on these, not text)."""
        if not self.upstream_outcome:
            return []
        issues = self.upstream_outcome.get("issue")
        if not isinstance(issues, list):
            return []
        return [str(i["code"]) for i in issues if isinstance(i, dict) and "code" in i]


class FhirNotFound(FhirHttpError):
    """404 Not Found or 410 Gone."""


class FhirVersionConflict(FhirHttpError):
    """409 Conflict or 412 Precondition Failed: re-read and retry a read-modify-write."""


class FhirAuthError(FhirHttpError):
    """401 or 403 from the resource server (a 401 is only raised after one re-authentication)."""


class FhirInvalidResponse(FhirClientError):
    """A 2xx answer whose body is not the JSON/resource the interaction requires."""


class ForeignUrlError(FhirClientError):
    """Refused to use a URL outside the client's base (scheme, host, port and path prefix).

    Raised before anything is sent: for a caller-supplied path, a ``next`` paging link, or a
    ``Location`` header that points elsewhere.
    """


class PagingLimitExceeded(FhirClientError):
    """A search needed more pages than ``max_pages`` (or its ``next`` links looped)."""


class SmartAuthError(FhirClientError):
    """The SMART token endpoint refused the client assertion or failed.

    ``oauth_error`` is the OAuth 2.0 ``error`` code (e.g. ``invalid_client``) when the endpoint sent
    one; ``retryable`` is true for 429/5xx answers, which the FHIR client may retry.
    """

    def __init__(
        self,
        diagnostics: str,
        *,
        upstream_status: int | None = None,
        oauth_error: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(diagnostics)
        self.upstream_status = upstream_status
        self.oauth_error = oauth_error
        self.retryable = retryable
