"""``pinpoint import``: Bulk Data NDJSON files/folders and Bundle files into the store.

- NDJSON is streamed line by line (flat memory whatever the file size) and written in batched
  transactions (``batch_size`` resources per transaction: one SELECT and one multi-row upsert).
- A Bundle file (any type; nested Bundles unwrapped) is read whole — its ``urn:uuid:``
  references need every fullUrl — and written in the same bounded batches. Each resource counts
  on its own (an import is not a transaction).
- Bad lines and invalid kept resources become dead letters (kind ``import``) with file and line,
  written in the batch's own transaction.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import orjson
from sqlalchemy.engine import Engine

from services.ingest.intake.bundles import flatten
from services.ingest.intake.pipeline import Candidate, Decision, Tally, check, prepare
from services.ingest.intake.references import ReferenceResolver
from services.ingest.intake.repository import store_resources
from shared.db.deadletters import add_dead_letters
from shared.db.models import DeadLetter, utcnow
from shared.db.session import session_scope
from shared.errors import Issue, operation_outcome
from shared.fhir.text import unstorable_in_body, unstorable_message
from shared.logging import get_logger
from shared.settings import Source

log = get_logger("pinpoint.ingest.bulk")

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl")
JSON_SUFFIXES = (".json",)
Progress = Callable[[int], None]


@dataclass
class ImportReport:
    tally: Tally = field(default_factory=Tally)
    files: int = 0
    resources: int = 0
    dead_letters: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files to import: the given files, and the NDJSON/JSON files under given folders (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.name.lower().endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
                )
            )
        else:
            out.append(path)
    return out


def _is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith(NDJSON_SUFFIXES)


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


@dataclass(frozen=True)
class _Bad:
    payload: bytes
    reason: str
    context: dict[str, Any]


class Importer:
    """Writes candidates in batches for one source; counts everything in :attr:`report`."""

    def __init__(self, engine: Engine, source: Source, batch_size: int = 1000) -> None:
        self.engine = engine
        self.source = source
        self.batch_size = batch_size
        self.report = ImportReport()

    def _flush(self, items: list[Candidate | _Bad], resolver: ReferenceResolver) -> None:
        if not items:
            return
        tally = self.report.tally
        with session_scope(self.engine) as session:
            resolver.session = session
            decisions: list[Decision] = []
            dead: list[DeadLetter] = []
            now = utcnow()
            for item in items:
                if isinstance(item, _Bad):
                    tally.add("(none)", "rejected")
                    dead.append(self._dead(item.payload, item.reason, item.context, now))
                    continue
                decision = check(item)
                if decision.status == "rejected":
                    tally.add(item.resource_type, "rejected")
                    payload = orjson.dumps(item.resource)
                    dead.append(
                        self._dead(payload, decision.reason, item.context or {}, now, decision.issues)
                    )
                    continue
                decision = prepare(decision, resolver)
                tally.add(item.resource_type, decision.status)
                decisions.append(decision)
            kept = [d.prepared for d in decisions if d.prepared is not None]
            store_resources(session, self.source.id, kept)
            add_dead_letters(session, dead)
            resolver.session = None
        self.report.resources += len(items)
        self.report.dead_letters += len(dead)

    def _dead(
        self,
        payload: bytes,
        reason: str,
        context: dict[str, Any],
        now: Any,
        issues: tuple[Issue, ...] = (),
    ) -> DeadLetter:
        return DeadLetter(
            source=self.source.id,
            kind="import",
            reason=reason[:2000],
            content_type="application/fhir+json",
            payload=payload,
            outcome=operation_outcome(list(issues) or [Issue("structure", reason)]),
            context=context,
            created_at=now,
        )

    def _batches(self, items: Iterator[Candidate | _Bad], resolver: ReferenceResolver) -> None:
        batch: list[Candidate | _Bad] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                self._flush(batch, resolver)
                batch = []
        self._flush(batch, resolver)

    def ndjson(self, path: Path, progress: Progress | None = None) -> None:
        def lines() -> Iterator[Candidate | _Bad]:
            with _open(path) as fh:
                for number, line in enumerate(fh, start=1):
                    if progress:
                        progress(len(line))
                    if not line.strip():
                        continue
                    context = {"file": str(path), "line": number}
                    try:
                        data = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        yield _Bad(line.rstrip(b"\r\n"), f"line is not JSON: {exc.msg}", context)
                        continue
                    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                        yield _Bad(
                            line.rstrip(b"\r\n"), "line is not a FHIR resource (no resourceType)", context
                        )
                        continue
                    bad = unstorable_in_body(line, data)
                    if bad is not None:
                        yield _Bad(line.rstrip(b"\r\n"), unstorable_message(*bad), context)
                        continue
                    yield Candidate(number, data, None, context)

        self._batches(lines(), ReferenceResolver(None, self.source, ()))

    def json_file(self, path: Path, progress: Progress | None = None) -> None:
        raw = path.read_bytes()
        if progress:
            progress(len(raw))
        context: dict[str, Any] = {"file": str(path)}
        try:
            data = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
        except orjson.JSONDecodeError as exc:
            self._flush(
                [_Bad(raw, f"file is not JSON: {exc.msg}", context)], ReferenceResolver(None, self.source, ())
            )
            return
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            self._flush(
                [_Bad(raw, "file is not a FHIR resource", context)], ReferenceResolver(None, self.source, ())
            )
            return
        bad = unstorable_in_body(raw, data)
        if bad is not None:
            self._flush(
                [_Bad(raw, unstorable_message(*bad), context)], ReferenceResolver(None, self.source, ())
            )
            return
        del raw
        candidates = list(flatten(data, None, 0))
        for n, c in enumerate(candidates):
            c.context = {"file": str(path), "entry": n}
        resolver = ReferenceResolver(None, self.source, ((c.full_url, c.resource) for c in candidates))
        self._batches(iter(candidates), resolver)

    def run(self, paths: Iterable[Path], progress: Progress | None = None) -> ImportReport:
        start = time.perf_counter()
        for path in paths:
            self.report.files += 1
            if _is_ndjson(path):
                self.ndjson(path, progress)
            else:
                self.json_file(path, progress)
            log.info("ingest.import.file", resources=self.report.resources)
        self.report.seconds = time.perf_counter() - start
        log.info(
            "ingest.import.done",
            files=self.report.files,
            resources=self.report.resources,
            kept=self.report.tally.total("kept"),
            rejected=self.report.tally.total("rejected"),
            seconds=round(self.report.seconds, 2),
        )
        return self.report


def import_paths(
    engine: Engine,
    source: Source,
    paths: Iterable[Path],
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> ImportReport:
    return Importer(engine, source, batch_size).run(expand(paths), progress)
