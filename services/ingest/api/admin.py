"""Admin endpoint of ingest: ``POST /admin/dead-letters/{id}/replay`` (admin token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from services.ingest.intake.replay import replay
from shared.web import RuntimeDep, require_admin_token


def router() -> APIRouter:
    r = APIRouter(tags=["admin"], dependencies=[Depends(require_admin_token)])

    @r.post("/admin/dead-letters/{dead_letter_id}/replay")
    async def replay_dead_letter(dead_letter_id: int, runtime: RuntimeDep) -> dict[str, Any]:
        outcome = await run_in_threadpool(replay, runtime.engine, runtime.settings, dead_letter_id)
        return outcome.as_json()

    return r
