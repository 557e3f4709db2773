"""Patient ids as people and links give them, and the evaluation instant of a request."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.db.models import utcnow
from shared.errors import InvalidInput


def patient_key(value: str) -> str:
    """``P-1``, ``Patient/P-1`` (default source) or ``source:P-1`` → ``source:P-1``."""
    value = value.strip().removeprefix("Patient/")
    if not value:
        raise InvalidInput("A patient id is required", code="required")
    source, sep, pid = value.partition(":")
    if not sep:
        return f"default:{value}"
    if not source or not pid:
        raise InvalidInput(f"Not a patient id: {value!r} (use <id> or <source>:<id>)", code="value")
    return f"{source}:{pid.removeprefix('Patient/')}"


def patient_ref(patient_key: str) -> str:
    """``source:P-1`` → ``Patient/P-1`` (the reference inside that source's data)."""
    return f"Patient/{patient_key.partition(':')[2]}"


def parse_now(value: str | None, *, name: str = "now") -> datetime:
    """An ISO 8601 date or date-time (UTC when it names no zone); the current time when ``None``.
    A value that is not one is :class:`InvalidInput` naming ``name``."""
    if value is None:
        return utcnow()
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"{name}: not an ISO date or date-time: {value!r}", code="value") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
