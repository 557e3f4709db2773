"""Request validation per hook (STANDARDS §1.3, §1.8).

The hot path reads the request with plain pydantic models of the CDS Hooks envelope and the hook
context only: FHIR resources in ``draftOrders`` and ``prefetch`` are NOT validated with
fhir.resources (80 resources would cost ~7 ms); they are checked for shape (a Bundle of resources
with a ``resourceType``, R4 not DSTU2/STU3) and handed to the engine's tolerant normaliser.

Every problem is a 400 OperationOutcome whose issues name the location (``context.patientId``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from shared.errors import InvalidInput, Issue
from shared.jsonlimits import TOO_DEEP, text_too_deep, too_deep

_ID = r"[A-Za-z0-9\-.]{1,64}"
_REF = re.compile(rf"^([A-Z][A-Za-z]+)/({_ID})$")

#: Resource types that exist only before R4 (DSTU2 / STU3): a context carrying them is not R4.
NOT_R4_TYPES = frozenset(
    {
        "MedicationOrder",
        "ProcedureRequest",
        "ReferralRequest",
        "DiagnosticOrder",
        "DeviceUseRequest",
        "Order",
        "ProcessRequest",
        "EligibilityRequest",
    }
)


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)


class FhirAuthorization(_Envelope):
    """The user's transient access token; held as a SecretStr so it never reaches a repr or log."""

    access_token: SecretStr
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be Bearer")
        return value


class HookRequest(_Envelope):
    hook: str = Field(min_length=1)
    hookInstance: uuid.UUID
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        found = _BASE_URL.fullmatch(value)
        if found is None or not 0 < int(found["port"] or 80) < 65536:
            raise ValueError(
                "fhirServer must be an absolute http(s) base URL: scheme://host[:port][/path], "
                "no user-info, backslash, query or fragment"
            )
        return value


#: An http(s) base URL whose authority every URL parser reads alike: a host name or IP literal
#: and an optional port — no user-info (``user:pw@``), no backslash, nothing ambiguous.
_BASE_URL = re.compile(
    r"https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?"
    r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)


def _user_types(*types: str) -> re.Pattern[str]:
    return re.compile(rf"^({'|'.join(types)})/{_ID}$")


_USER_TYPES = {
    "patient-view": _user_types("Practitioner", "PractitionerRole", "Patient", "RelatedPerson"),
    "order-select": _user_types("Practitioner", "PractitionerRole"),
    "order-sign": _user_types("Practitioner", "PractitionerRole"),
}


@dataclass(frozen=True)
class HookCall:
    """A validated call: what the rest of the service needs, nothing more."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str
    user_id: str
    encounter_id: str | None
    fhir_server: str | None
    access_token: SecretStr | None = field(repr=False)
    draft_orders: list[dict[str, Any]]
    selections: list[str] | None
    prefetch: dict[str, Any] | None


def _issue(loc: str, text: str, code: str = "invalid") -> Issue:
    return Issue(code=code, diagnostics=text, expression=(loc,))


def _pydantic_issues(exc: ValidationError, prefix: str = "") -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        code = "required" if err["type"] == "missing" else "invalid"
        msg = str(err["msg"]).removeprefix("Value error, ")
        issues.append(_issue(prefix + loc if loc else prefix.rstrip(".") or "body", msg, code))
    return issues


def _check_bundle(bundle: Any, loc: str, issues: list[Issue]) -> list[dict[str, Any]]:
    """The resources of a draftOrders Bundle, each with a resourceType and an R4 shape."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        issues.append(_issue(loc, "draftOrders must be a FHIR Bundle"))
        return []
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        issues.append(_issue(f"{loc}.entry", "Bundle.entry must be an array"))
        return []
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else None
        where = f"{loc}.entry[{i}].resource"
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            issues.append(_issue(where, "each entry needs a resource with a resourceType"))
            continue
        problem = not_r4(res)
        if problem:
            issues.append(_issue(where, problem, "not-supported"))
            continue
        out.append(res)
    return out


def not_r4(resource: dict[str, Any]) -> str | None:
    """Why a resource is not FHIR R4, or None.

    Detected by resource type only (DSTU2 ``MedicationOrder``, STU3 ``ProcedureRequest`` …). The
    hook library's own "R4" order-sign example carries an STU3-style MedicationRequest dosage and
    its "STU3" one an R4-style dosage: shapes inside resources Pinpoint does not check (medication
    and nutrition orders) are tolerated, never a reason to refuse the whole call.
    """
    rtype = resource.get("resourceType")
    if rtype in NOT_R4_TYPES:
        return f"{rtype} is not an R4 resource type; this service accepts FHIR R4 only"
    return None


def parse_hook_request(body: bytes, service_id: str, expected_hook: str) -> HookCall:
    """Parse and validate a service call, or raise a 400 naming every problem's location."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"Body is not valid JSON: {exc.msg}", code="structure") from None
    if not isinstance(data, dict):
        raise InvalidInput("Body must be a JSON object", code="structure")
    if text_too_deep(body):  # the parsed text itself: a fifth of walking the parsed prefetch
        raise InvalidInput(f"Body is not a CDS Hooks request: {TOO_DEEP}", code="structure")
    try:
        req = HookRequest.model_validate(data)
    except ValidationError as exc:
        found = _pydantic_issues(exc)
        raise InvalidInput(found[0].diagnostics, issues=found) from None
    issues: list[Issue] = []
    if req.hook != expected_hook:
        issues.append(
            _issue(
                "hook", f"service {service_id} answers hook {expected_hook}, not {req.hook}", "not-supported"
            )
        )
    if req.fhirAuthorization is not None and req.fhirServer is None:
        issues.append(
            _issue("fhirServer", "fhirServer is required when fhirAuthorization is given", "required")
        )
    ctx = req.context
    patient_id = ctx.get("patientId")
    if not isinstance(patient_id, str) or not re.fullmatch(_ID, patient_id):
        issues.append(_context_issue(ctx, "patientId", "a FHIR id"))
    user_id = ctx.get("userId")
    user_re = _USER_TYPES.get(expected_hook, _USER_TYPES["patient-view"])
    if not isinstance(user_id, str) or not user_re.match(user_id):
        issues.append(_context_issue(ctx, "userId", f"a reference matching {user_re.pattern}"))
    encounter = ctx.get("encounterId")
    if encounter is not None and not (isinstance(encounter, str) and re.fullmatch(_ID, encounter)):
        issues.append(_issue("context.encounterId", "encounterId must be a FHIR id"))
    drafts: list[dict[str, Any]] = []
    selections: list[str] | None = None
    if expected_hook in ("order-select", "order-sign"):
        if "draftOrders" not in ctx:
            issues.append(_issue("context.draftOrders", "draftOrders is required", "required"))
        else:
            drafts = _check_bundle(ctx["draftOrders"], "context.draftOrders", issues)
    if expected_hook == "order-select":
        sel = ctx.get("selections")
        if not isinstance(sel, list) or not sel or not all(isinstance(s, str) and _REF.match(s) for s in sel):
            issues.append(_context_issue(ctx, "selections", "a non-empty array of Type/id references"))
        else:
            selections = list(sel)
            present = _entry_refs(ctx.get("draftOrders"))
            for i, s in enumerate(selections):
                if present and s not in present:
                    issues.append(_issue(f"context.selections[{i}]", f"{s} is not in draftOrders"))
    if req.prefetch is not None:
        for key, value in req.prefetch.items():
            if value is not None and not (
                isinstance(value, dict) and isinstance(value.get("resourceType"), str)
            ):
                issues.append(_issue(f"prefetch.{key}", "a prefetch value must be a FHIR resource or null"))
            elif isinstance(value, dict) and not_r4(value):
                issues.append(_issue(f"prefetch.{key}", str(not_r4(value)), "not-supported"))
            elif value is not None and value["resourceType"] == "Bundle":
                # As draftOrders: an absent, null or empty entry (link) is none; anything else
                # not an array is refused here, not met as a TypeError while the data is gathered.
                for part in ("entry", "link"):
                    if not isinstance(value.get(part) or [], list):
                        issues.append(_issue(f"prefetch.{key}.{part}", f"Bundle.{part} must be an array"))
    if issues:
        raise InvalidInput(issues[0].diagnostics, issues=issues)
    assert isinstance(patient_id, str) and isinstance(user_id, str)
    return HookCall(
        service_id=service_id,
        hook=req.hook,
        hook_instance=str(req.hookInstance),
        patient_id=patient_id,
        user_id=user_id,
        encounter_id=encounter,
        fhir_server=req.fhirServer,
        access_token=req.fhirAuthorization.access_token if req.fhirAuthorization else None,
        draft_orders=drafts,
        selections=selections,
        prefetch=req.prefetch,
    )


def _entry_refs(bundle: Any) -> set[str]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    return {
        f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}"
        for e in entries or []
        if isinstance(entries, list) and isinstance(e, dict) and isinstance(e.get("resource"), dict)
    }


def _context_issue(ctx: dict[str, Any], key: str, what: str) -> Issue:
    if key not in ctx:
        return _issue(f"context.{key}", f"context.{key} is required", "required")
    return _issue(f"context.{key}", f"context.{key} must be {what}")


# ---------------------------------------------------------------------------------------- feedback


class _Coding(_Envelope):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class _OverrideReason(_Envelope):
    reason: _Coding | None = None
    userComment: str | None = None


class _Accepted(_Envelope):
    id: str = Field(min_length=1)


class FeedbackItem(_Envelope):
    card: str = Field(min_length=1, max_length=100)
    outcome: str
    acceptedSuggestions: list[_Accepted] | None = None
    overrideReason: _OverrideReason | None = None
    outcomeTimestamp: str = Field(min_length=1, max_length=40)

    @field_validator("outcome")
    @classmethod
    def _outcome(cls, value: str) -> str:
        if value not in ("accepted", "overridden"):
            raise ValueError("outcome must be accepted or overridden")
        return value

    @field_validator("outcomeTimestamp")
    @classmethod
    def _instant(cls, value: str) -> str:
        if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$", value):
            raise ValueError("outcomeTimestamp must be an ISO 8601 instant with a time zone")
        return value


class FeedbackRequest(_Envelope):
    feedback: list[FeedbackItem] = Field(min_length=1)


def parse_feedback(body: bytes) -> FeedbackRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"Body is not valid JSON: {exc.msg}", code="structure") from None
    if too_deep(data):
        raise InvalidInput(f"Body is not CDS Hooks feedback: {TOO_DEEP}", code="structure")
    try:
        req = FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        issues = _pydantic_issues(exc)
        raise InvalidInput(issues[0].diagnostics, issues=issues) from None
    issues = [
        _issue(
            f"feedback[{i}].acceptedSuggestions", "acceptedSuggestions is required when accepted", "required"
        )
        for i, item in enumerate(req.feedback)
        if item.outcome == "accepted" and not item.acceptedSuggestions
    ]
    if issues:
        raise InvalidInput(issues[0].diagnostics, issues=issues)
    return req
