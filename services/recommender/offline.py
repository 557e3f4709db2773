"""Offline evaluation (``pinpoint evaluate``): the file I/O around the one door to the engine.

Reads FHIR R4 Bundles (any type), single resources and NDJSON files (folders: every ``*.json``
and ``*.ndjson`` inside), applies the relevance filter of ingest (CONTRACT §2), validates kept
resources with the fhir.resources R4B models (an invalid one is skipped and named on stderr),
normalises, evaluates and prints the assessment document (§3) as JSON or plain text.
Exit 0 when the evaluation ran; exit 2 when a named file is unreadable, not JSON or not FHIR
(inside a named folder such a file is skipped and named on stderr).
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
from shared.domain.relevance import classify
from shared.fhir.bundle import flatten, resolve
from shared.fhir.resources import ResourceInvalid, validate_r4b


class InputError(Exception):
    """A file that is unreadable, not JSON or not FHIR."""


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".ndjson"))
    return [path]


def _documents(path: Path) -> Iterator[tuple[Mapping[str, Any], str]]:
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
    skipped = 0
    for n, line in enumerate(lines, 1):
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path}: not JSON (line {n}: {exc})") from exc
        if isinstance(item, Mapping) and isinstance(item.get("resourceType"), str):
            parsed.append((item, f"{path}:{n}"))
        else:
            skipped += 1
    if not parsed:
        raise InputError(f"{path}: not FHIR (no line holds a resource with resourceType)")
    if skipped:
        print(f"{path}: skipped {skipped} NDJSON line(s) without resourceType", file=sys.stderr)
    yield from parsed


def _valid(resource: Mapping[str, Any], label: str) -> bool:
    """Validated with the R4B models; an invalid resource is named on stderr with its first
    problem (field and message) and skipped."""
    try:
        validate_r4b(resource)
    except ResourceInvalid as exc:
        rtype = resource.get("resourceType")
        if exc.issues and exc.issues[0][0] == "resourceType":
            print(f"{label}: {rtype} is not an R4 resource type; skipped", file=sys.stderr)
            return False
        where, what = exc.issues[0] if exc.issues else ("", "invalid")
        print(
            f"{label}: {rtype}/{resource.get('id')} fails validation, skipped ({where}: {what})",
            file=sys.stderr,
        )
        return False
    return True


def load_resources(paths: list[Path]) -> list[dict[str, Any]]:
    """Kept, valid, reference-resolved resources of every file (raises :class:`InputError`)."""
    kept: list[dict[str, Any]] = []
    for given in paths:
        if not given.exists():
            raise InputError(f"{given}: no such file or folder")
        for path in _files(given):
            try:
                docs = list(_documents(path))
            except InputError as exc:
                if path == given:
                    raise
                # a file found by walking a folder (e.g. a Bulk Data log.ndjson): skip, say so
                print(f"{exc}; skipped", file=sys.stderr)
                continue
            for doc, label in docs:
                for resource in resolve(flatten(doc)):
                    if not classify(resource).kept:
                        continue
                    if _valid(resource, label):
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


def run(paths: list[Path], policy: str, now: str | None, fmt: str) -> str:
    """Evaluate ``paths`` and return the rendered document (raises InputError / PolicyError)."""
    if fmt not in ("json", "text"):
        raise InputError(f"--format: must be json or text, got {fmt!r}")
    assessor = Assessor.load(policy)
    when = parse_now(now)
    document = assessor.document(load_resources(paths), when)
    if fmt == "text":
        return render_text(document)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
