"""``pinpoint import``: Bulk Data NDJSON files/folders and Bundle files into the store.

- NDJSON is streamed a block of whole lines at a time (flat memory whatever the file size) and
  read line by line, but for a block of lines that all begin with the same type Pinpoint never
  keeps (a Bulk Data export's ``Claim.ndjson``), counted as dropped at once; written in batched
  transactions (``batch_size`` resources per transaction: one SELECT and one multi-row upsert).
- A Bundle file (any type; nested Bundles unwrapped) is read whole — its ``urn:uuid:``
  references need every fullUrl — and written in the same bounded batches. Each resource counts
  on its own (an import is not a transaction).
- Bad lines and invalid kept resources become dead letters (kind ``import``) with file and line,
  written in the batch's own transaction.
- Relevance first, on the raw bytes: a line that begins ``{"resourceType":"<type>"`` with a type
  Pinpoint never keeps (Claim, Encounter, ExplanationOfBenefit…) is counted as dropped without
  being parsed; everything else is parsed, classified, and only kept resources are validated.
- ``jobs`` > 1: plain NDJSON files are cut at line boundaries into units of about
  :data:`UNIT_BYTES` (gzip and Bundle files are one unit each) and the units run in that many
  worker processes, each with its own database connection and bounded batches.
"""

from __future__ import annotations

import gc
import gzip
import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.intake.pipeline import Candidate, Decision, Tally, check, prepare
from services.ingest.intake.references import ReferenceResolver
from services.ingest.intake.repository import content_hash, store_resources, stored_digests
from shared.db.deadletters import add_dead_letters
from shared.db.models import DeadLetter, utcnow
from shared.db.session import driver_rows, make_engine, session_scope
from shared.domain.relevance import KEPT_TYPES, classify
from shared.errors import Issue, operation_outcome
from shared.fhir.resources import compile_validators
from shared.fhir.text import unstorable_in_body, unstorable_message
from shared.jsonlimits import TOO_DEEP, too_deep
from shared.logging import get_logger
from shared.settings import Source

if TYPE_CHECKING:
    import multiprocessing.context

log = get_logger("pinpoint.ingest.bulk")

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl")
JSON_SUFFIXES = (".json",)
Progress = Callable[[int], None]

#: Bytes of NDJSON per unit of work when importing with several processes.
UNIT_BYTES = 4 * 1024 * 1024
#: Bytes read at a time: while cutting a file into units, and while reading NDJSON.
_PIECE = 256 * 1024
#: A line whose first key is its resourceType (as Bulk Data exporters and Synthea write them).
_LEADING_TYPE = re.compile(rb'\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]{1,64})"')
_KEPT = frozenset(t.encode() for t in KEPT_TYPES)


def never_kept(line: bytes) -> str | None:
    """The resource type of a line that names a type Pinpoint never keeps first, else None."""
    m = _LEADING_TYPE.match(line)
    if m is None or m.group(1) in _KEPT:
        return None
    return m.group(1).decode()


_TYPE_FIRST = b'{"resourceType":"'
_HEAD = re.compile(rb'\{"resourceType":"[A-Za-z]{1,64}"')


def one_type(block: bytes) -> tuple[str, int] | None:
    """``(type, lines)`` when every line of ``block`` (whole lines) begins with the same
    ``{"resourceType":"<type>"``, as the lines of a Bulk Data export's file do; else None. Found by
    counting: a block of a type never kept (``Claim.ndjson``) is dropped whole, as
    :func:`never_kept` would drop each line, and the lines of a kept type skip that test."""
    head = block[: block.find(b'"', len(_TYPE_FIRST)) + 1] if block.startswith(_TYPE_FIRST) else b""
    if not _HEAD.fullmatch(head):
        return None
    lines = block.count(b"\n") + (not block.endswith(b"\n"))
    if block.count(b"\n" + head) != lines - 1:  # each line after the first begins with it
        return None
    return head[len(_TYPE_FIRST) : -1].decode(), lines


def _blocks(fh: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """The bytes of ``fh`` from ``start`` to ``end`` (-1: to its end), :data:`_PIECE` bytes at a
    time extended to the end of their last line: whole lines, memory flat in the file's size."""
    if start:
        fh.seek(start)
    at = start
    while end < 0 or at < end:
        block = fh.read(_PIECE if end < 0 else min(_PIECE, end - at))
        if not block:
            return
        if not block.endswith(b"\n"):
            block += fh.readline()
        at += len(block)
        yield block


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


class Statistics:
    """Refreshes PostgreSQL's statistics as one process's writes grow the tables (x4 each time),
    so that the per-batch identity lookup keeps an index plan instead of scanning every stored
    row of a type (planned on an empty table, or where autovacuum is off, it would not). One per
    process, whatever the number of units it imports."""

    def __init__(self, engine: Engine, first: int) -> None:
        self.engine = engine
        self.written = 0
        self.analyze_at = first

    def wrote(self, n: int) -> None:
        self.written += n
        if self.written < self.analyze_at:
            return
        self.analyze_at = self.written * 4
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                # the identity's and the patient's columns: not the stored JSON, whose statistics no
                # query here uses and which costs most of a full ANALYZE
                sa.text(
                    "ANALYZE resource (source, resource_type, resource_id, patient_key), evaluation_queue"
                )
            )


#: The pooled connection's ``info`` key: it commits without waiting for the WAL flush.
_ASYNC_COMMIT = "pinpoint.async_commit"


def _commit_mode(session: Session, info: dict[Any, Any], durable: bool) -> None:
    """PostgreSQL: ``synchronous_commit`` of the connection for this batch's transaction, set in
    the session (one statement a run of batches, not one a batch). Back to on for a durable batch,
    with a commit record of its own even should the batch write nothing (a transaction id): its
    commit waits for the WAL up to it, the earlier batches' commits included."""
    if not durable and not info.get(_ASYNC_COMMIT):
        driver_rows(session, "SET synchronous_commit = off", None)
        info[_ASYNC_COMMIT] = True
    elif durable and info.get(_ASYNC_COMMIT):
        driver_rows(session, "SELECT set_config('synchronous_commit', 'on', false), txid_current()", None)
        info.pop(_ASYNC_COMMIT)


class Importer:
    """Writes candidates in batches for one source; counts everything in :attr:`report`."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        batch_size: int = 1000,
        statistics: Statistics | None = None,
        look_first: bool = True,
    ) -> None:
        self.engine = engine
        self.source = source
        self.batch_size = batch_size
        self.report = ImportReport()
        self.statistics = statistics or Statistics(engine, 2 * batch_size)
        #: look up the batch's stored identities before validating (see :meth:`_flush`)
        self.look_first = look_first

    def _flush(
        self, items: list[Candidate | _Bad], resolver: ReferenceResolver, durable: bool = True
    ) -> None:
        """One batch in one transaction. ``durable=False`` (PostgreSQL): its commit does not wait
        for the WAL to reach the disk; see :meth:`_batches`."""
        if not items:
            return
        tally = self.report.tally
        postgres = self.engine.dialect.name == "postgresql"
        with session_scope(self.engine) as session:
            info = session.connection().info
            asynchronous = bool(info.get(_ASYNC_COMMIT))
            if postgres:
                _commit_mode(session, info, durable)
            try:
                resolver.session = session
                decisions: list[Decision] = []
                dead: list[DeadLetter] = []
                now = utcnow()
                unchanged = self._stored_unchanged(session, items, resolver) if self.look_first else set()
                for item in items:
                    if isinstance(item, _Bad):
                        tally.add("(none)", "rejected")
                        dead.append(self._dead(item.payload, item.reason, item.context, now))
                        continue
                    decision = check(item, validate=id(item) not in unchanged)
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
                results = store_resources(session, self.source.id, kept, expect_new=not self.look_first)
                add_dead_letters(session, dead)
                resolver.session = None
            except BaseException:
                if asynchronous or info.get(_ASYNC_COMMIT):  # never back to the pool so
                    session.connection().invalidate()
                raise
        self.report.resources += len(items)
        self.report.dead_letters += len(dead)
        self.statistics.wrote(len(kept))
        # look before validating while batches meet stored identities (a re-import); a first
        # import pays the look-up for its first batch only (a process's, whatever its units)
        self.look_first = any(r.outcome != "created" for r in results)

    def _stored_unchanged(
        self, session: Session, items: list[Candidate | _Bad], resolver: ReferenceResolver
    ) -> set[int]:
        """``id()`` of the candidates whose identity is stored with the very content they would
        be stored with (a re-import of the same file): validated when they were stored, they
        are not validated again. The content is worked out on a copy (the candidate stays as it
        came, for its dead letter should it be rejected)."""
        by_key: dict[tuple[str, str], Candidate] = {}
        for item in items:
            if isinstance(item, Candidate) and item.resource_type in KEPT_TYPES:
                by_key[(item.resource_type, resolver.identity(item.resource, item.full_url))] = item
        stored = stored_digests(session, self.source.id, by_key)
        same: set[int] = set()
        for key, item in by_key.items():
            digest = stored.get(key)
            if digest is None:
                continue
            copy = orjson.loads(orjson.dumps(item.resource))
            copy["id"] = key[1]
            resolver.rewrite(copy)
            if content_hash(copy) == digest:
                same.add(id(item))
        return same

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
        """The items in batches. On PostgreSQL every batch but the last of a file (of a unit) commits
        without waiting for its WAL flush (``synchronous_commit = off``: one disk wait a file, not
        one a batch); the last one waits, and the WAL being flushed in order, all of them are on
        disk once it has committed. Nothing is reported imported before that — a unit's counts,
        a file's log line, the command's summary all come after its last commit — so a crash of
        the database loses nothing reported: at most batches of a file not finished, which the
        import, stopped with an error, never counted, and which a re-run writes (harmlessly)."""
        held: list[Candidate | _Bad] = []
        batch: list[Candidate | _Bad] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                self._flush(held, resolver, durable=False)
                held, batch = batch, []
        if batch:
            self._flush(held, resolver, durable=False)
        else:
            batch = held
        self._flush(batch, resolver)

    def ndjson(
        self, path: Path, progress: Progress | None = None, span: tuple[int, int, int] | None = None
    ) -> None:
        """The file, or its bytes ``[start, end)`` starting at line ``first`` (``span``)."""
        tally = self.report.tally
        report = self.report
        name = str(path)

        def context(number: int) -> dict[str, Any]:
            return {"file": name, "line": number}

        def lines() -> Iterator[Candidate | _Bad]:
            start, end, number = span or (0, -1, 1)
            with _open(path) as fh:
                for block in _blocks(fh, start, end):
                    if progress:
                        progress(len(block))
                    same = one_type(block)
                    if same is not None and same[0] not in KEPT_TYPES:  # counted a block at a time
                        tally.add(same[0], "dropped", same[1])
                        report.resources += same[1]
                        number += same[1]
                        continue
                    for line in io.BytesIO(block):
                        number += 1
                        item = read(line, number - 1, kept_type=same is not None)
                        if item is not None:
                            yield item

        def read(line: bytes, number: int, kept_type: bool) -> Candidate | _Bad | None:
            """The line's candidate, or why it is refused; None when it is dropped (counted) or
            blank. ``kept_type``: the line is known to begin with a type Pinpoint keeps."""
            dropped = None if kept_type else never_kept(line)
            if dropped is not None:
                tally.add(dropped, "dropped")
                report.resources += 1
                return None
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if line.strip():  # a blank line is no resource (checked here: rare)
                    return _Bad(line.rstrip(b"\r\n"), f"line is not JSON: {exc.msg}", context(number))
                return None
            if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                return _Bad(
                    line.rstrip(b"\r\n"), "line is not a FHIR resource (no resourceType)", context(number)
                )
            if too_deep(data, body=line):
                return _Bad(line.rstrip(b"\r\n"), f"line is not FHIR: {TOO_DEEP}", context(number))
            bad = unstorable_in_body(line, data)
            if bad is not None:
                return _Bad(line.rstrip(b"\r\n"), unstorable_message(*bad), context(number))
            # relevance here, on the dict: what is dropped goes no further than this line
            relevance = classify(data)
            if not relevance.kept:
                tally.add(data["resourceType"], "dropped")
                report.resources += 1
                return None
            return Candidate(number, data, None, context(number), relevance, scanned=True)

        self._batches(lines(), ReferenceResolver(None, self.source, ()))

    def json_file(self, path: Path, progress: Progress | None = None) -> None:
        from services.ingest.intake.bundles import flatten  # lazy: NDJSON needs no Bundle reader

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
        deep = too_deep(data, body=raw)
        if deep or not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            reason = TOO_DEEP if deep else "file is not a FHIR resource"
            self._flush([_Bad(raw, reason, context)], ReferenceResolver(None, self.source, ()))
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

    def unit(self, path: Path, span: tuple[int, int, int] | None) -> None:
        if _is_ndjson(path):
            self.ndjson(path, None, span)
        else:
            self.json_file(path)

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


Unit = tuple[Path, "tuple[int, int, int] | None", int]


def units(paths: Iterable[Path], unit_bytes: int = UNIT_BYTES) -> Iterator[Unit]:
    """``(path, (start, end, first line) or None, bytes)``: plain NDJSON cut at line boundaries
    (one pass over the file, :data:`_PIECE` bytes of it in memory at a time), other files whole."""
    for path in paths:
        size = path.stat().st_size
        if not _is_ndjson(path) or path.name.lower().endswith(".gz") or size <= unit_bytes:
            yield path, None, size
            continue
        with path.open("rb") as fh:
            start, line = 0, 1
            while True:
                size = newlines = 0
                while size < unit_bytes:  # counted a piece at a time: the parent's memory stays small
                    piece = fh.read(min(_PIECE, unit_bytes - size))
                    if not piece:
                        break
                    size += len(piece)
                    newlines += piece.count(b"\n")
                rest = fh.readline()
                size += len(rest)
                newlines += rest.count(b"\n")
                if not size:
                    break
                yield path, (start, start + size, line), size
                start += size
                line += newlines


def _most_units(files: Iterable[Path], unit_bytes: int = UNIT_BYTES) -> int:
    """How many units :func:`units` makes of the files at most, without reading them."""
    return sum(
        -(-p.stat().st_size // unit_bytes) if _is_ndjson(p) and not p.name.lower().endswith(".gz") else 1
        for p in files
    )


_WORKER_ENGINE: Engine | None = None
_WORKER_STATISTICS: Statistics | None = None
#: whether the worker's next unit starts by looking up stored identities (its last batch met some)
_WORKER_LOOK_FIRST = True


def quiet_collector() -> None:
    """For a process that does nothing but import: what is loaded now (modules, compiled validators) is
    left out of the cyclic garbage collector's walks (``gc.freeze``; in a forked worker its
    pages also stay shared), and young collections run less often. Parsing allocates tens of
    objects a line, and each collection walked everything alive: ~20 % of an import's CPU.
    Memory stays flat: parsed resources hold no cycles and are freed by reference counting."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _start_worker(url: str, batch_size: int) -> None:
    """A worker process's one engine (one pooled connection) and statistics refresher, reused by
    all its units."""
    global _WORKER_ENGINE, _WORKER_STATISTICS
    quiet_collector()
    _WORKER_ENGINE = make_engine(url, pool_size=1)
    _WORKER_STATISTICS = Statistics(_WORKER_ENGINE, 2 * batch_size)


def _import_unit(source: Source, batch_size: int, unit: Unit) -> tuple[dict[str, dict[str, int]], int, int]:
    """One unit in a worker process, with its own report."""
    global _WORKER_LOOK_FIRST
    assert _WORKER_ENGINE is not None
    importer = Importer(_WORKER_ENGINE, source, batch_size, _WORKER_STATISTICS, _WORKER_LOOK_FIRST)
    importer.unit(unit[0], unit[1])
    _WORKER_LOOK_FIRST = importer.look_first
    r = importer.report
    return {t: dict(row) for t, row in r.tally.rows()}, r.resources, r.dead_letters


def _workers_context(engine: Engine) -> multiprocessing.context.BaseContext:
    """``fork`` where it is safe — Linux, and this process runs no other thread (a forked child
    would inherit the locks another thread holds): the workers start with the modules and FHIR
    validators already loaded here, instead of importing them again each (~1 s of CPU a process
    with ``spawn``). The parent's pooled connections are closed first, so no worker inherits a
    socket; each opens its own (:func:`_start_worker`). Elsewhere ``spawn``: a clean start."""
    import multiprocessing  # lazy: a serial import needs no processes

    if sys.platform != "linux" or threading.active_count() > 1:
        return multiprocessing.get_context("spawn")
    compile_validators(KEPT_TYPES)
    engine.dispose()
    return multiprocessing.get_context("fork")


def import_parallel(
    engine: Engine,
    source: Source,
    files: list[Path],
    *,
    jobs: int,
    batch_size: int = 1000,
    progress: Progress | None = None,
    unit_bytes: int = UNIT_BYTES,
) -> ImportReport:
    """The files' units over ``jobs`` processes; one report for all. The largest files go first
    (their units are cut while the workers already import the first ones: no pass over every
    file before the work starts); the last units are small, so the processes finish together."""
    from concurrent.futures import ProcessPoolExecutor, as_completed  # lazy

    report = ImportReport(files=len(files))
    start = time.perf_counter()
    url = engine.url.render_as_string(hide_password=False)
    largest_first = sorted(files, key=lambda p: -p.stat().st_size)
    with ProcessPoolExecutor(
        jobs, mp_context=_workers_context(engine), initializer=_start_worker, initargs=(url, batch_size)
    ) as pool:
        futures = {
            pool.submit(_import_unit, source, batch_size, u): u for u in units(largest_first, unit_bytes)
        }
        for done in as_completed(futures):
            counts, resources, dead = done.result()
            for rtype, row in counts.items():
                for outcome, n in row.items():
                    report.tally.add(rtype, outcome, n)
            report.resources += resources
            report.dead_letters += dead
            if progress:
                progress(futures[done][2])
    report.seconds = time.perf_counter() - start
    log.info(
        "ingest.import.done",
        files=report.files,
        resources=report.resources,
        kept=report.tally.total("kept"),
        rejected=report.tally.total("rejected"),
        seconds=round(report.seconds, 2),
        jobs=jobs,
    )
    return report


def import_paths(
    engine: Engine,
    source: Source,
    paths: Iterable[Path],
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    jobs: int = 1,
    unit_bytes: int = UNIT_BYTES,
) -> ImportReport:
    """Serial, or over ``jobs`` processes on PostgreSQL (SQLite has one writer: serial) — no
    more processes than the files make units: an import of one unit is not worth a process."""
    files = expand(paths)
    if jobs > 1 and engine.dialect.name != "sqlite":
        jobs = min(jobs, _most_units(files, unit_bytes))
        if jobs > 1:
            return import_parallel(
                engine,
                source,
                files,
                jobs=jobs,
                batch_size=batch_size,
                progress=progress,
                unit_bytes=unit_bytes,
            )
    return Importer(engine, source, batch_size).run(files, progress)
