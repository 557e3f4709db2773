"""Pure helpers for FHIR Bundles on raw JSON: flatten, identify, resolve references.

Used by ``pinpoint evaluate`` and the ingest service. Nothing here validates models.

- :func:`flatten` walks a Bundle of any type (nested ``message``/``document`` Bundles are
  unwrapped; entries without ``resource`` are skipped) and yields ``(fullUrl, resource)``.
- :func:`resource_id` is the identity rule of CONTRACT §2: ``resource.id``; else the uuid of its
  ``urn:uuid:`` fullUrl; else a hash of its content.
- :func:`resolve` returns copies of the resources with ``id`` set and every ``reference``
  rewritten to ``Type/id`` where the Bundle allows (``urn:uuid:``, absolute fullUrls, relative
  references; ``#contained`` and unresolvable conditional references are left as they are).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_UNWRAP_TYPES = frozenset({"message", "document"})


def flatten(
    resource: Mapping[str, Any], full_url: str | None = None
) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """Yield ``(fullUrl, resource)`` for every resource in ``resource``.

    A Bundle yields its entries' resources (recursively for nested Bundles, any type); any other
    resource yields itself. Entries without a ``resource`` object are skipped.
    """
    if resource.get("resourceType") != "Bundle":
        yield full_url, dict(resource)
        return
    for entry in resource.get("entry") or ():
        if not isinstance(entry, Mapping):
            continue
        inner = entry.get("resource")
        if not isinstance(inner, Mapping):
            continue
        url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        if inner.get("resourceType") == "Bundle":
            yield from flatten(inner, url)
        else:
            yield url, dict(inner)


def content_hash(resource: Mapping[str, Any]) -> str:
    """A stable id from the content (sorted-key JSON, SHA-256, 32 hex characters)."""
    raw = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def resource_id(resource: Mapping[str, Any], full_url: str | None = None) -> str:
    """CONTRACT §2 identity: ``id``, else the uuid of a ``urn:uuid:`` fullUrl, else a content hash."""
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if full_url and full_url.startswith("urn:uuid:"):
        return full_url[len("urn:uuid:") :]
    return content_hash(resource)


def local_reference(ref: str) -> str:
    """``https://x/fhir/Patient/1/_history/2`` → ``Patient/1``; other forms unchanged."""
    if "://" not in ref:
        if "/_history/" in ref:
            return ref.split("/_history/")[0]
        return ref
    parts = ref.split("?")[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return f"{parts[-2]}/{parts[-1]}"
    return ref


def _rewrite(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = mapping.get(value) or (value if value.startswith("#") else local_reference(value))
            elif key == "contained":
                out[key] = value
            else:
                out[key] = _rewrite(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node


def resolve(entries: Iterable[tuple[str | None, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Give every resource its identity and rewrite references to ``Type/id`` (see module doc)."""
    items = [(url, dict(res)) for url, res in entries]
    mapping: dict[str, str] = {}
    for url, res in items:
        rid = resource_id(res, url)
        res["id"] = rid
        if url:
            mapping[url] = f"{res.get('resourceType')}/{rid}"
    return [_rewrite(res, mapping) for _, res in items]


def resolve_reference(ref: str | None, resource: Mapping[str, Any]) -> Mapping[str, Any] | str | None:
    """A ``#id`` reference → the contained resource dict; otherwise the local ``Type/id`` string."""
    if not ref:
        return None
    if ref.startswith("#"):
        for contained in resource.get("contained") or ():
            if isinstance(contained, Mapping) and contained.get("id") == ref[1:]:
                return contained
        return None
    return local_reference(ref)
