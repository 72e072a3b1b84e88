"""The page and the operator's routes: ``GET /``, ``GET /health``, ``POST /reload``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from ..auth import require_operator
from ..runtime import Service, ServiceError, check_params, get_service
from ..schemas import COMMON_ERRORS, HealthWithLimits, Reloaded, errors

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["service"])
OPERATOR_ROUTES = [("/reload", "post")]  # routes that change what is served: the operator token guards them (auth.py)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index_page(request: Request) -> HTMLResponse:
    check_params(request, set())
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get(
    "/health", summary="Index size, index_id, configurations, threshold, version",
    response_model=None,
    responses={200: {"model": HealthWithLimits, "description": "The index served and the limits"}, **errors(*COMMON_ERRORS)},
)
async def health(request: Request, svc: Service = Depends(get_service)) -> Any:
    check_params(request, set())
    return {**svc.engine.health(), "limits": {**svc.limits.to_json(), **svc.engine.limits_json(),
                                              **(svc.operator_auth.to_json() if svc.operator_auth else {})}}


@router.post(
    "/reload", summary="Reopen the index (after build-index or tune-threshold); SIGHUP does the same",
    response_model=None, dependencies=[Depends(require_operator)],
    responses={200: {"model": Reloaded, "description": "The index now served"}, **errors(401, 403, 503, *COMMON_ERRORS)},
)
async def reload(request: Request, svc: Service = Depends(get_service)) -> Any:
    check_params(request, set())
    try:
        return await svc.reload("POST /reload")
    except (ValueError, OSError) as exc:
        raise ServiceError(503, f"reload failed, still serving the previous index: {exc}") from None
