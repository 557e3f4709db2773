"""Seeding many synthetic patients straight into the store, and running worker processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.recommender.suggestions.builders import content_hash
from shared.db.models import Resource, utcnow
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from tests.bench.evaluate import patient

BIN = Path(sys.executable).parent


def synthetic(n: int, seed: int = 20250317) -> list[list[dict[str, Any]]]:
    """``n`` patients of the engine benchmark's generator (20-60 resources each)."""
    rng = random.Random(seed)
    return [patient(i, rng) for i in range(n)]


def seed_store(engine: Engine, patients: list[list[dict[str, Any]]], source: str = "default") -> list[str]:
    """Store the resources and mark every patient dirty, as ingest would; returns patient keys."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    for resources in patients:
        pid = resources[0]["id"]
        key = f"{source}:{pid}"
        keys.append(key)
        for r in resources:
            rows.append(
                {
                    "source": source,
                    "resource_type": r["resourceType"],
                    "resource_id": r["id"],
                    "patient_key": key,
                    "content_hash": content_hash(r),
                    "deleted": False,
                    "raw": r,
                    "received_at": now,
                }
            )
    table = Resource.__table__  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        for i in range(0, len(rows), 2000):
            s.execute(sa.insert(table), rows[i : i + 2000])
        mark_dirty(s, keys)
    return keys


def worker_process(db_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    environ.update({"PINPOINT_DATABASE_URL": db_url, "PINPOINT_LOG_FORMAT": "json", **env})
    return subprocess.Popen(
        [str(BIN / "pinpoint"), "worker", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
