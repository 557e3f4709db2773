"""Dead-letter admin route: ``POST /admin/dead-letters/{id}/replay`` (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from services.ingest.container import IngestDep
from services.ingest.deadletters.replay import MAX_ROW_ID, replay
from shared.web import require_admin_token

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin_token)])


@router.post("/admin/dead-letters/{dead_letter_id}/replay")
async def replay_dead_letter(
    dead_letter_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)], parts: IngestDep
) -> dict[str, Any]:
    outcome = await run_in_threadpool(replay, parts.engine, parts.settings, dead_letter_id, parts.replayers)
    return outcome.as_json()
