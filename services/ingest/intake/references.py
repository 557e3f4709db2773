"""Identity and references inside one payload (CONTRACT §2).

A resource's identity is (source, type, id) with the id it has at its source: ``resource.id``,
else the uuid of its ``urn:uuid:`` fullUrl, else a hash of its content. References are rewritten
to ``Type/id`` where the payload or the store allows: ``urn:uuid:`` and absolute fullUrls of the
payload's entries, relative and absolute URLs (``/_history`` stripped), and conditional
references (``Patient?identifier=system|value``) matched against the payload's resources and the
source's stored Patients. ``#contained`` references stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from sqlmodel import Session

from services.ingest.intake.repository import find_patients_by_identifier
from shared.fhir.bundle import local_reference, resource_id
from shared.settings import Source


def _identifier_keys(resource: Mapping[str, Any]) -> Iterable[tuple[str | None, str]]:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
            system = ident.get("system") if isinstance(ident.get("system"), str) else None
            yield system, ident["value"]
            yield None, ident["value"]


class ReferenceResolver:
    """Resolves the references of one payload (a Bundle, an NDJSON batch, a single resource)."""

    def __init__(
        self,
        session: Session | None,
        source: Source,
        items: Iterable[tuple[str | None, Mapping[str, Any]]],
    ) -> None:
        self.session = session
        self.source = source
        self.by_url: dict[str, str] = {}
        self.by_identifier: dict[tuple[str, str | None, str], set[str]] = {}
        self._stored: dict[tuple[str | None, str], str | None] = {}
        for full_url, resource in items:
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str):
                continue
            rid = resource_id(resource, full_url)
            if full_url:
                self.by_url[full_url] = f"{rtype}/{rid}"
            for system, value in _identifier_keys(resource):
                self.by_identifier.setdefault((rtype, system, value), set()).add(rid)

    def identity(self, resource: Mapping[str, Any], full_url: str | None) -> str:
        return resource_id(resource, full_url)

    def resolve(self, ref: str) -> str:
        if not ref or ref.startswith("#"):
            return ref
        mapped = self.by_url.get(ref)
        if mapped is not None:
            return mapped
        if ref.startswith("urn:"):
            return ref
        if "?" in ref and "://" not in ref.split("?")[0]:
            return self._conditional(ref) or ref
        return local_reference(ref)

    def _conditional(self, ref: str, exclude: str | None = None) -> str | None:
        """``Type/id`` of the one resource a conditional URL matches (in the payload, else the
        source's stored Patients), or None. ``exclude``: an id of the payload not to count (the
        resource a conditional update carries matches its own search)."""
        rtype, _, query = ref.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        token = params.get("identifier")
        if not token or len(params) != 1:
            return None
        system: str | None
        if "|" in token:
            system, _, value = token.partition("|")
            system = system or None
        else:
            system, value = None, token
        if system is None and rtype == "Patient":
            system = self.source.patient_identifier_system
        ids = self.by_identifier.get((rtype, system, value), set()) - {exclude}
        if len(ids) == 1:
            return f"{rtype}/{next(iter(ids))}"
        if ids or rtype != "Patient" or self.session is None:
            return None
        key = (system, value)
        if key not in self._stored:
            found = find_patients_by_identifier(self.session, self.source.id, system, value)
            self._stored[key] = found[0] if len(found) == 1 else None
        stored = self._stored[key]
        return f"Patient/{stored}" if stored else None

    def conditional_identity(self, url: str, own: Mapping[str, Any], full_url: str | None) -> str | None:
        """What a conditional update/create (``Type?identifier=…``) of ``own`` resolves to."""
        return self._conditional(local_reference(url), exclude=self.identity(own, full_url))

    def rewrite(self, node: Any) -> None:
        """Rewrite every ``reference`` in ``node`` in place (contained resources included). Parsed
        JSON holds plain dicts, lists and strings: their exact types are compared (cheaper than
        ``isinstance``; this walks every element of every kept resource)."""
        if type(node) is dict:
            for key, value in node.items():
                kind = type(value)
                if kind is str:
                    if key == "reference":
                        node[key] = self.resolve(value)
                elif kind is dict or kind is list:
                    self.rewrite(value)
        elif type(node) is list:
            for value in node:
                kind = type(value)
                if kind is dict or kind is list:
                    self.rewrite(value)
