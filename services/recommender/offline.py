"""Offline evaluation (``pinpoint evaluate``): the file I/O around the one door to the engine.

Reads FHIR R4 Bundles (any type), single resources and NDJSON files (folders: every ``*.json``
and ``*.ndjson`` inside), applies the relevance filter of ingest (CONTRACT §2), validates kept
resources against FHIR R4 (its published JSON schema) (an invalid one is skipped and named on stderr),
normalises, evaluates and prints the assessment document (§3) as JSON or plain text.

Nothing is dropped silently: every input that cannot be used — a resource that fails
validation, a kept resource without the date the rules need, an NDJSON line that is not a
resource, an unreadable file inside a folder — is named on stderr with its field and reason
(``Procedure/x: performedDateTime missing — R5 `occurrence[x]`?``) and listed in the document's
``ignored`` (docs/assessment-document.md).

Exit codes (the project's convention): 0 the evaluation ran on every input; 1 it ran but some
input was ignored (the verdicts may rest on incomplete data); 2 a named file is unreadable, not
JSON or not FHIR, or the policy is invalid.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.recommender.assessor import Assessor
from services.recommender.engine import render_text
from shared.domain import _json as j
from shared.domain.relevance import classify
from shared.fhir.bundle import flatten, resolve
from shared.fhir.resources import ResourceInvalid, validate_r4

#: exit code when the evaluation ran but some input was ignored
EXIT_IGNORED = 1

#: R5 elements an R4 reader does not know, and the R4 element the rules look for instead
_R5_HINTS = {
    ("Procedure", "occurrence"): "performedDateTime",
    ("MedicationAdministration", "occurence"): "effectiveDateTime",
    ("MedicationAdministration", "occurrence"): "effectiveDateTime",
    ("ServiceRequest", "bodyStructure"): "bodySite",
}
#: the date each kept resource type needs (prefix of <prefix>DateTime / <prefix>Period)
_DATES = {"Procedure": "performed", "MedicationAdministration": "effective", "Observation": "effective"}
_VOID = frozenset({"entered-in-error", "not-done"})


class InputError(Exception):
    """A file that is unreadable, not JSON or not FHIR."""


class Ignored(list[dict[str, str]]):
    """The inputs left out of an evaluation, each ``{input, resource, field, reason}``; every one
    is also named on stderr as it is found."""

    def add(self, label: str, resource: str, field: str, reason: str) -> None:
        self.append({"input": label, "resource": resource, "field": field, "reason": reason})
        where = f"{resource}: " if resource else ""
        print(f"{label}: {where}{field + ' ' if field else ''}{reason}; ignored", file=sys.stderr)


def _hint(rtype: str, resource: Mapping[str, Any]) -> str:
    for (kind, stem), r4 in _R5_HINTS.items():
        if kind == rtype and any(str(k).startswith(stem) for k in resource):
            r5 = next(str(k) for k in resource if str(k).startswith(stem))
            return f" — R5 `{r5}`? Pinpoint reads R4 `{r4}`"
    return ""


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".ndjson"))
    return [path]


def _documents(path: Path, ignored: Ignored) -> Iterator[tuple[Mapping[str, Any], str]]:
    """Parsed JSON documents of one file with a label for messages (NDJSON: one per line)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if doc is not None:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("resourceType"), str):
            raise InputError(f"{path}: not FHIR (a JSON object with resourceType is expected)")
        yield doc, str(path)
        return
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path}: not JSON (empty file)")
    parsed: list[tuple[Mapping[str, Any], str]] = []
    skipped: list[int] = []
    for n, line in enumerate(lines, 1):
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path}: not JSON (line {n}: {exc})") from exc
        if isinstance(item, Mapping) and isinstance(item.get("resourceType"), str):
            parsed.append((item, f"{path}:{n}"))
        else:
            skipped.append(n)
    if not parsed:
        raise InputError(f"{path}: not FHIR (no line holds a resource with resourceType)")
    for n in skipped:
        ignored.add(f"{path}:{n}", "", "resourceType", "missing: not a FHIR resource")
    yield from parsed


def _valid(resource: Mapping[str, Any], label: str, ignored: Ignored) -> bool:
    """Validated against FHIR R4; an invalid resource is ignored and named with its first
    problem (field and message), with a hint when the field is an R5 element."""
    rtype = str(resource.get("resourceType"))
    ref = f"{rtype}/{resource.get('id')}"
    try:
        validate_r4(resource)
    except ResourceInvalid as exc:
        if exc.issues and exc.issues[0][0] == f"{rtype}.resourceType":
            ignored.add(label, ref, "resourceType", f"{rtype} is not an R4 resource type")
            return False
        where, what = exc.issues[0] if exc.issues else ("", "invalid")
        field = where.removeprefix(f"{rtype}.")
        hint = _hint(rtype, resource)
        more = f" (and {len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
        ignored.add(label, ref, field, f"fails R4 validation: {what}{more}{hint}")
        return False
    return _usable(resource, label, ref, ignored)


def _usable(resource: Mapping[str, Any], label: str, ref: str, ignored: Ignored) -> bool:
    """A kept resource without the date the rules need is ignored and named."""
    rtype = str(resource.get("resourceType"))
    prefix = _DATES.get(rtype)
    if prefix is None or str(resource.get("status") or "") in _VOID:
        return True
    start, _end = j.period_start_end(resource, prefix)
    if start is not None:
        return True
    ignored.add(label, ref, "", f"{prefix}DateTime missing{_hint(rtype, resource) or ''}")
    return False


def load_resources(paths: list[Path], ignored: Ignored | None = None) -> list[dict[str, Any]]:
    """Kept, valid, reference-resolved resources of every file (raises :class:`InputError`);
    what is left out is added to ``ignored``."""
    ignored = Ignored() if ignored is None else ignored
    kept: list[dict[str, Any]] = []
    for given in paths:
        if not given.exists():
            raise InputError(f"{given}: no such file or folder")
        for path in _files(given):
            try:
                docs = list(_documents(path, ignored))
            except InputError as exc:
                if path == given:
                    raise
                # a file found by walking a folder (e.g. a Bulk Data log.ndjson): ignore, say so
                ignored.add(str(path), "", "", str(exc).removeprefix(f"{path}: "))
                continue
            for doc, label in docs:
                for resource in resolve(flatten(doc)):
                    if not classify(resource).kept:
                        continue
                    if _valid(resource, label, ignored):
                        kept.append(resource)
    return kept


def parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    text = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--now: not an ISO date or date-time: {value!r}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def run(paths: list[Path], policy: str, now: str | None, fmt: str) -> tuple[str, int]:
    """Evaluate ``paths``: the rendered document and the exit code (0, or :data:`EXIT_IGNORED`
    when an input was ignored). Raises InputError / PolicyError."""
    if fmt not in ("json", "text"):
        raise InputError(f"--format: must be json or text, got {fmt!r}")
    assessor = Assessor.load(policy)
    when = parse_now(now)
    ignored = Ignored()
    document = assessor.document(load_resources(paths, ignored), when)
    if ignored:
        document["ignored"] = list(ignored)
    code = EXIT_IGNORED if ignored else 0
    if fmt == "text":
        text = render_text(document)
        if ignored:
            text += "\nIgnored inputs (the verdicts above may rest on incomplete data):\n" + "".join(
                f"  {i['input']}: {i['resource'] + ': ' if i['resource'] else ''}"
                f"{i['field'] + ' ' if i['field'] else ''}{i['reason']}\n"
                for i in ignored
            )
        return text, code
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n", code
